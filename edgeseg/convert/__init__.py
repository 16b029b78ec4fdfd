"""Host side: model import, output split, calibration set and one module per toolchain.

Imported lazily: ``edgeseg doctor`` on a device looks at the toolchain registry without onnx.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "convert":
        from .build import convert

        return convert
    raise AttributeError(name)


__all__ = ["convert"]
