"""The input normalisation a model declares: ONNX metadata, or transformers' preprocessor config.

Read at import, applied by ``convert`` under the command line's ``--mean``/``--std``/``--resize``
(flags win field by field) and recorded in the manifest's ``input`` with where each came from.
Everything is expressed as the flags are: mean and std in 0..255 pixel units, RGB order.

ONNX ``metadata_props`` keys read (first the edgeseg keys, then ONNX's standard image keys):

* ``edgeseg.input.mean``, ``edgeseg.input.std``: three numbers, comma-separated, 0..255 pixel units
  (ImageNet: ``123.675,116.28,103.53`` and ``58.395,57.12,57.375``);
* ``edgeseg.input.color``: ``rgb`` or ``bgr``; ``edgeseg.input.resize``: ``letterbox`` or ``stretch``;
* ``Image.NominalPixelRange`` (onnx/docs/MetadataProps.md): ``NominalRange_0_255`` (raw pixels),
  ``Normalized_0_1`` (pixels / 255), ``Normalized_1_1`` (pixels / 127.5 - 1);
* ``Image.BitmapPixelFormat``: ``Rgb8`` or ``Bgr8``.

transformers' ``preprocessor_config.json`` (beside the model file, or given with
``--preprocessor``): ``do_rescale``/``rescale_factor``, ``do_normalize``/``image_mean``/``image_std``,
and ``do_resize`` with ``size: {height, width}`` (a resize to a fixed size ignores the aspect
ratio: ``stretch``). A ``shortest_edge`` size keeps the aspect ratio: letterbox stays.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import EdgesegError

PREPROCESSOR_FILE = "preprocessor_config.json"
META_PREFIX = "edgeseg.input."
_PIXEL_RANGE = {"NominalRange_0_255": ((0.0,) * 3, (1.0,) * 3), "Normalized_0_1": ((0.0,) * 3, (255.0,) * 3),
                "Normalized_1_1": ((127.5,) * 3, (127.5,) * 3)}
_PIXEL_FORMAT = {"Rgb8": "rgb", "Bgr8": "bgr"}
MAX_CONFIG_BYTES = 1 << 20  # a preprocessor config is a few hundred bytes


def _three(v: Any, where: str, key: str) -> tuple[float, float, float]:
    vals = v.split(",") if isinstance(v, str) else (v if isinstance(v, (list, tuple)) else [v])
    try:
        out = [float(x) for x in vals]
    except (TypeError, ValueError):
        out = []
    if len(out) == 1:
        out *= 3
    if len(out) != 3:
        raise EdgesegError(f"{where}: {key} is {v!r}, not 1 or 3 numbers; fix the model's metadata, "
                           "or override it with --mean/--std")
    return out[0], out[1], out[2]


def from_metadata(meta: dict[str, str], where: str) -> dict[str, Any]:
    """Normalisation fields (``mean``, ``std``, ``color``, ``resize``) an ONNX model's metadata declares."""
    got: dict[str, Any] = {}
    rng = meta.get("Image.NominalPixelRange")
    if rng in _PIXEL_RANGE:
        got["mean"], got["std"] = _PIXEL_RANGE[rng]
    if meta.get("Image.BitmapPixelFormat") in _PIXEL_FORMAT:
        got["color"] = _PIXEL_FORMAT[meta["Image.BitmapPixelFormat"]]
    for key in ("mean", "std"):
        if META_PREFIX + key in meta:
            got[key] = _three(meta[META_PREFIX + key], where, META_PREFIX + key)
    for key, allowed in (("color", ("rgb", "bgr")), ("resize", ("letterbox", "stretch"))):
        v = meta.get(META_PREFIX + key)
        if v is not None:
            if v.strip().lower() not in allowed:
                raise EdgesegError(f"{where}: metadata {META_PREFIX}{key} is {v!r}; expected {' or '.join(allowed)}")
            got[key] = v.strip().lower()
    return got


def from_preprocessor_config(path: Path) -> dict[str, Any]:
    """Normalisation fields of a transformers image processor's ``preprocessor_config.json``."""
    if not path.is_file():
        raise EdgesegError(f"{path}: no such preprocessor config; pass the preprocessor_config.json saved with "
                           "the model (image_processor.save_pretrained)")
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ValueError("larger than 1 MB")
        cfg = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(cfg, dict):
            raise ValueError("not a JSON object")
    except (ValueError, UnicodeDecodeError) as e:
        raise EdgesegError(f"{path}: not a transformers preprocessor config ({e}); pass the model's own with "
                           "--preprocessor FILE (a config beside the model is then not read)") from None
    where = str(path)
    scale = float(cfg.get("rescale_factor", 1 / 255)) if cfg.get("do_rescale", True) else 1.0
    if not scale > 0:
        raise EdgesegError(f"{path}: rescale_factor {cfg.get('rescale_factor')!r} is not above 0; fix the config")
    got: dict[str, Any] = {}
    if cfg.get("do_normalize", True) and "image_mean" in cfg and "image_std" in cfg:
        # transformers computes (pixel * rescale_factor - image_mean) / image_std
        got["mean"] = tuple(v / scale for v in _three(cfg["image_mean"], where, "image_mean"))
        got["std"] = tuple(v / scale for v in _three(cfg["image_std"], where, "image_std"))
    else:
        got["mean"], got["std"] = (0.0,) * 3, (1 / scale,) * 3
    size = cfg.get("size")
    if cfg.get("do_resize", True) and isinstance(size, dict) and "height" in size and "width" in size:
        got["resize"] = "stretch"
        got["size"] = (int(size["height"]), int(size["width"]))
    return got


def model_normalisation(src: Path, meta: dict[str, str], preprocessor: str | Path | None) -> dict[str, Any]:
    """What the model declares, each field with where it came from: ``{"fields": {...}, "from": {field: source}}``.

    A config given with ``--preprocessor`` wins over the ONNX metadata, which wins over a
    ``preprocessor_config.json`` that merely sits beside the model file."""
    layers: list[tuple[str, dict[str, Any]]] = []
    beside = src.parent / PREPROCESSOR_FILE
    if preprocessor is None and beside.is_file():
        layers.append((f"{PREPROCESSOR_FILE} beside the model", from_preprocessor_config(beside)))
    layers.append(("the ONNX metadata", from_metadata(meta, str(src))))
    if preprocessor is not None:
        layers.append((f"--preprocessor {Path(preprocessor).name}", from_preprocessor_config(Path(preprocessor))))
    fields: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name, got in layers:
        for k, v in got.items():
            fields[k], sources[k] = v, name
    return {"fields": fields, "from": sources}
