"""Host half of YOLO26-seg: recognise its exports (default and end-to-end), describe, split."""

from __future__ import annotations

from pathlib import Path

import onnx

from ...errors import EdgesegError
from ..yolo_seg.graph import check_pair, class_names, is_yolo_seg_pair
from ..yolo_seg.graph import split as split_yolo

TOPK_DEFAULT = 300  # Ultralytics' max_det, the k of an end-to-end export


def _end2end(meta: dict[str, str], ddims: list, nm: int) -> bool:
    return str(meta.get("end2end", "")).lower() == "true" or (isinstance(ddims[2], int) and ddims[2] == 6 + nm)


def recognise(model: onnx.ModelProto, outputs: list[tuple[str, list]], meta: dict[str, str]) -> bool:
    if not is_yolo_seg_pair(outputs):
        return False
    if str(meta.get("head", "")).startswith("Segment26"):
        return True
    from ...convert.split import reg_max_of

    try:
        return reg_max_of(model, outputs[0][0], int(outputs[1][1][1])) == 1
    except (EdgesegError, TypeError, ValueError):
        return False


def describe(src: Path, model: onnx.ModelProto, outputs: list[tuple[str, list]], meta: dict[str, str],
             names: list[str] | None) -> tuple[dict, list[dict], list[str]]:
    from ...convert.split import find_head_convs

    det, ddims, pro, pdims, nm = check_pair(src, outputs, "yolo26-seg")
    try:
        convs = find_head_convs(model, det, nm)
    except EdgesegError as e:
        convs = None
        why = str(e)
    prod = {o: n for n in model.graph.node for o in n.output}
    inits = {t.name: t for t in model.graph.initializer}

    def channels(role: str) -> int:
        return int(inits[prod[convs[role][0]].input[1]].dims[0])  # type: ignore[index]

    reg_max = channels("box") // 4 if convs else 1
    if _end2end(meta, ddims, nm):
        if convs is None:
            raise EdgesegError(f"{src}: output {det}{ddims} is an end-to-end export whose head edgeseg cannot find "
                               f"({why}); export the one-to-many head instead: "
                               "`yolo export model=MODEL.pt format=onnx simplify=True`")
        nc = channels("cls")
        spec = {"type": "yolo26-seg", "layout": "end2end", "variant": "one2one", "num_classes": nc,
                "num_masks": nm, "reg_max": reg_max,
                "topk": int(ddims[1]) if isinstance(ddims[1], int) else TOPK_DEFAULT}
    else:
        nc = int(ddims[1]) - 4 - nm
        if nc < 1:
            raise EdgesegError(f"{src}: output {det}{ddims} is too small for 4 box values and {nm} mask coefficients")
        spec = {"type": "yolo26-seg", "layout": "concat", "variant": "one2many", "num_classes": nc,
                "num_masks": nm, "reg_max": reg_max}
    roles = [{"name": det, "role": "det", "shape": ddims}, {"name": pro, "role": "protos", "shape": pdims}]
    return spec, roles, class_names(src, names, nc)


def split(model: onnx.ModelProto, spec: dict, roles: list[dict]) -> tuple[onnx.ModelProto, list[dict], dict]:
    # an end-to-end export is cut above its top-k: the one-to-one convolutions become the outputs
    return split_yolo(model, spec, roles)
