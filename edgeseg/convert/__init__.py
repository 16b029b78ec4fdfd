"""Host side: model import, output split, calibration set and one module per toolchain."""

from .build import convert

__all__ = ["convert"]
