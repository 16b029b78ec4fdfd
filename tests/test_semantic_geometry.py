"""Low-resolution semantic logits (SegFormer's 1/4, YOLO26-sem's 1/8) land on the frame with exact
sub-pixel geometry: the decoder's label map equals a float reference computed independently with
torch on the same logits. The frame is not square and its letterbox padding is not a multiple of
the logit stride, the case where cropping the logits to whole cells shifted the map."""

import numpy as np
import pytest

from edgeseg.runtime.decode import SemanticDecoder
from edgeseg.runtime.preprocess import InputSpec, fit

torch = pytest.importorskip("torch", reason="the float reference is torch's interpolate: pip install torch")
F = torch.nn.functional

IN_HW = (256, 320)  # model input (height, width)
STRIDE = 4  # SegFormer's logits are 1/4 of the input
FRAME_HW = (333, 517)


def _logits(classes: int, seed: int = 0) -> np.ndarray:
    """Smooth random logits as a segmentation model makes them: coarse structure, upsampled, plus noise."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, classes, IN_HW[0] // 32, IN_HW[1] // 32, generator=g) * 4
    fine = F.interpolate(coarse, (IN_HW[0] // STRIDE, IN_HW[1] // STRIDE), mode="bicubic", align_corners=False)
    return (fine + 0.3 * torch.randn(fine.shape, generator=g)).numpy().astype(np.float32)


def _decode(logits: np.ndarray, resize: str, **head) -> tuple[np.ndarray, object]:
    frame = np.zeros((*FRAME_HW, 3), np.uint8)
    _, lb = fit(frame, InputSpec(*IN_HW, resize=resize))
    dec = SemanticDecoder({"type": "semantic", "output": "logits", **head},
                          [{"name": "logits", "role": "logits"}], [str(i) for i in range(logits.shape[1])], IN_HW)
    return dec({"logits": logits}, lb).label_map, lb


def _grid_reference(logits: np.ndarray, lb) -> torch.Tensor:
    """Each frame pixel's centre mapped into the model input, sampled there by grid_sample
    (align_corners=False: the convention of the interpolate that upsamples such logits)."""
    u = (torch.arange(lb.src_w, dtype=torch.float64) + 0.5) * lb.scale_x + lb.pad_x
    v = (torch.arange(lb.src_h, dtype=torch.float64) + 0.5) * lb.scale_y + lb.pad_y
    gy, gx = torch.meshgrid(2 * v / IN_HW[0] - 1, 2 * u / IN_HW[1] - 1, indexing="ij")
    grid = torch.stack([gx, gy], -1)[None].float()
    return F.grid_sample(torch.from_numpy(logits), grid, mode="bilinear", padding_mode="border",
                         align_corners=False)[0]


@pytest.mark.parametrize("classes", [6, 150])  # 150: ADE20K models, past OpenCV's 128-channel resize
def test_letterboxed_logits_match_a_float_reference(classes):
    logits = _logits(classes)
    got, lb = _decode(logits, "letterbox")
    assert (lb.pad_y % STRIDE, lb.pad_x) != (0, 0) and lb.pad_y % STRIDE, lb  # padding is not whole cells
    ref = _grid_reference(logits, lb).argmax(0).numpy()
    assert got.shape == FRAME_HW
    assert (got == ref).mean() >= 0.9999, (got == ref).mean()
    # Ultralytics' semantic predictor upsamples to the input first, crops the (whole-pixel) letterbox,
    # then resizes to the frame: the same geometry, two bilinear passes instead of one
    up = F.interpolate(torch.from_numpy(logits), IN_HW, mode="bilinear", align_corners=False)
    crop = up[..., lb.pad_y:lb.pad_y + lb.new_h, lb.pad_x:lb.pad_x + lb.new_w]
    two_pass = F.interpolate(crop, FRAME_HW, mode="bilinear", align_corners=False)[0].argmax(0).numpy()
    assert (got == two_pass).mean() >= 0.99, (got == two_pass).mean()


def test_stretched_logits_match_interpolate_to_the_frame():
    """With --resize stretch the mapping is transformers' post-processing: interpolate straight to the frame."""
    logits = _logits(5, seed=1)
    got, _ = _decode(logits, "stretch")
    ref = F.interpolate(torch.from_numpy(logits), FRAME_HW, mode="bilinear", align_corners=False)[0].argmax(0)
    assert (got == ref.numpy()).mean() >= 0.9999


def test_one_channel_threshold_and_small_bands(monkeypatch):
    """One channel: foreground where the upsampled logit passes the threshold; the class borders are
    interpolated in chunks (bounded memory) that join seamlessly."""
    import edgeseg.runtime.decode as decode

    logits = _logits(1, seed=2)
    monkeypatch.setattr(decode, "SEMANTIC_BAND_BYTES", 16 * 500)  # 500 pixels per chunk
    got, lb = _decode(logits, "letterbox", threshold=0.5)
    ref = (_grid_reference(logits, lb)[0] > 0.5).numpy()
    assert 0.05 < ref.mean() < 0.95 and (got == ref).mean() >= 0.9999


@pytest.mark.parametrize("stride", [1, STRIDE])
def test_class_maps_follow_torch_nearest(stride):
    """Class ids (exports with the argmax inside: Ultralytics' ONNX) are picked as Ultralytics' semantic
    predictor does: interpolate(mode="nearest") to the input size, crop the letterbox, again to the frame."""
    ids = torch.from_numpy(_logits(7, seed=3)).argmax(1, keepdim=True).float()  # [1, 1, H/4, W/4]
    if stride == 1:
        ids = F.interpolate(ids, IN_HW, mode="nearest")
    frame = np.zeros((*FRAME_HW, 3), np.uint8)
    _, lb = fit(frame, InputSpec(*IN_HW))
    dec = SemanticDecoder({"type": "semantic", "output": "labels"}, [{"name": "ids", "role": "labels"}],
                          [str(i) for i in range(7)], IN_HW)
    got = dec({"ids": ids[:, 0].numpy().astype(np.uint8)}, lb).label_map
    up = F.interpolate(ids, IN_HW, mode="nearest")[..., lb.pad_y:lb.pad_y + lb.new_h, lb.pad_x:lb.pad_x + lb.new_w]
    ref = F.interpolate(up, FRAME_HW, mode="nearest")[0, 0].numpy()
    assert (got == ref).mean() == 1.0
