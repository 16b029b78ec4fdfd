"""Random weights that see a picture: shared by the scripts that build random Ultralytics models.

A random init's activations vanish layer by layer, and its biases put every anchor or pixel in one
class. Zeroing the convolutions' biases and scaling each convolution, in execution order, to unit
output deviation on real pictures (LSUV-style) lets the picture decide what the model outputs.
"""
import torch


def unit_deviation(model: torch.nn.Module, x: torch.Tensor) -> None:
    """Rescale ``model``'s convolutions in place on one forward pass of ``x`` (float, N x 3 x H x W)."""
    def unit(mod, inp, out):
        s = float(out.std())
        if s > 0:
            mod.weight.data /= s
            return out / s

    hooks = []
    for mod in model.modules():
        if isinstance(mod, torch.nn.Conv2d):
            if mod.bias is not None:
                mod.bias.data.zero_()
            hooks.append(mod.register_forward_hook(unit))
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
