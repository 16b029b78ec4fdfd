"""edgeseg: take a trained segmentation model to an edge device and run it on a live camera."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "load"]


def load(bundle: str, **backend_options: object):
    """Load a bundle for inference: ``edgeseg.load("bundle")(frame)`` returns a FrameResult."""
    from .runtime.model import Model

    return Model.load(bundle, **backend_options)
