"""The contract every head family implements.

Device-side methods (decoder, eval kind, fidelity, drawing) must not import onnx or torch; the
graph-side methods import the family's ``graph`` module lazily, so a board never loads it.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np


class Head:
    """One model-head family. Subclasses set ``name``, ``kind`` and implement the hooks."""

    name: str = ""
    kind: str = "instances"  # "instances" (boxes + masks, COCO mAP) or "semantic" (label map, mIoU)
    # a more specific family that a user's --head NAME also accepts (yolo26-seg for --head yolo-seg)
    refines: str | None = None

    # ---- host side: graph handling (imports onnx) -------------------------------------------
    def _graph(self):
        return importlib.import_module(f"{type(self).__module__}.graph")

    def recognise(self, model: Any, outputs: list[tuple[str, list]], meta: dict[str, str]) -> bool:
        """Whether an imported ONNX graph (its outputs and metadata) has this head."""
        return self._graph().recognise(model, outputs, meta)

    def describe(self, src: Any, model: Any, outputs: list[tuple[str, list]], meta: dict[str, str],
                 names: list[str] | None) -> tuple[dict, list[dict], list[str]]:
        """The manifest's head spec, the output roles before splitting and the class names.

        Raises EdgesegError (one line naming the fix) when the graph cannot be used."""
        return self._graph().describe(src, model, outputs, meta, names)

    def splittable(self, spec: dict) -> bool:
        """Whether :meth:`split` gives each output role its own tensor (and INT8 scale)."""
        return False

    def split(self, model: Any, spec: dict, roles: list[dict]) -> tuple[Any, list[dict], dict]:
        """The graph cut for INT8, its output descriptions, and the head spec's updates."""
        raise NotImplementedError

    # ---- device side -------------------------------------------------------------------------
    def decoder(self, spec: dict, outputs: list[dict], names: list[str], input_hw: tuple[int, int]):
        """A callable ``(outs, letterbox, conf=, iou=, classes=, max_det=) -> FrameResult``."""
        raise NotImplementedError

    def concat_classes(self, spec: dict) -> int | None:
        """Number of class rows inside a concatenated ``det`` output, for per-role fidelity."""
        return None

    def dud(self, report: dict) -> str | None:
        """Why a fidelity report shows a converted model that does not work, or None."""
        cos = report.get("cosine", {})
        bad = [k for k, v in cos.items() if v < 0.2]
        return f"output role(s) {', '.join(bad)} lost their signal (cosine {min(cos[k] for k in bad)})" if bad else None

    def draw(self, frame: np.ndarray, result: Any, **kw: Any) -> np.ndarray:
        """The frame with the result drawn; every family draws through runtime/draw.py."""
        from ..runtime.draw import draw

        return draw(frame, result, **kw)
