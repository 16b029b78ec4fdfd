"""Model-head families: one package per family, found through this registry.

A family is a :class:`~edgeseg.heads.base.Head` in ``edgeseg/heads/<family>/``: its ``__init__``
is the device half (decoder, what eval scores, fidelity roles, drawing) and imports no onnx;
``graph.py`` beside it is the host half (recognise an imported ONNX graph, describe its head,
split it for INT8) and is imported only by the converter. Adding a family is one package and one
line in ``_FAMILIES``.

This module imports nothing heavy: the bundle schema check reads :data:`HEAD_TYPES` from here.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .base import Head

# manifest head.type -> package; the order is the order of recognition (most specific first)
_FAMILIES = {"yolo26-seg": "yolo26_seg", "yolo-seg": "yolo_seg", "semantic": "semantic"}
HEAD_TYPES: tuple[str, ...] = tuple(_FAMILIES)


def get_head(name: str) -> Head:
    """The head family registered as ``name`` (a manifest's ``head.type``); ValueError if unknown."""
    if name not in _FAMILIES:
        raise ValueError(f"unknown head type {name!r}; known: {', '.join(HEAD_TYPES)}")
    return importlib.import_module(f"{__name__}.{_FAMILIES[name]}").HEAD


def all_heads() -> list[Head]:
    """Every registered family, in recognition order."""
    return [get_head(n) for n in HEAD_TYPES]
