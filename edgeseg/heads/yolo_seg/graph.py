"""Host half of the YOLO-seg family: recognise an Ultralytics export, describe it, split it."""

from __future__ import annotations

from pathlib import Path

import onnx

from ...errors import EdgesegError


def is_yolo_seg_pair(outputs: list[tuple[str, list]]) -> bool:
    """Two outputs: detections [1, C, A] (or [1, max_det, 6+nm] end-to-end) and prototypes [1, nm, H, W]."""
    return len(outputs) == 2 and len(outputs[0][1]) == 3 and len(outputs[1][1]) == 4


def recognise(model: onnx.ModelProto, outputs: list[tuple[str, list]], meta: dict[str, str]) -> bool:
    return is_yolo_seg_pair(outputs)


def _nms_inside(meta: dict[str, str], ddims: list, nm: int) -> bool:
    return ("'nms': True" in str(meta.get("args", "")) or str(meta.get("end2end", "")).lower() == "true"
            or (isinstance(ddims[2], int) and ddims[2] == 6 + nm))


def check_pair(src: Path, outputs: list[tuple[str, list]], family: str) -> tuple[str, list, str, list, int]:
    if len(outputs) != 2:
        raise EdgesegError(f"{src}: --head {family} needs two outputs (detections, prototypes), found {len(outputs)}")
    (det, ddims), (pro, pdims) = outputs
    if len(ddims) != 3 or len(pdims) != 4 or not isinstance(pdims[1], int) or not isinstance(ddims[1], int):
        raise EdgesegError(f"{src}: outputs {det}{ddims}, {pro}{pdims} are not [1,4+nc+nm,A] and [1,nm,H,W]; "
                           "pass --head semantic or export with Ultralytics")
    return det, ddims, pro, pdims, int(pdims[1])


def class_names(src: Path, names: list[str] | None, nc: int) -> list[str]:
    names_list = names or [f"class{i}" for i in range(nc)]
    if len(names_list) != nc:
        raise EdgesegError(f"{src}: {len(names_list)} class names given but the model has {nc} classes; fix --names")
    return names_list


def describe(src: Path, model: onnx.ModelProto, outputs: list[tuple[str, list]], meta: dict[str, str],
             names: list[str] | None) -> tuple[dict, list[dict], list[str]]:
    from ...convert.split import reg_max_of

    det, ddims, pro, pdims, nm = check_pair(src, outputs, "yolo-seg")
    if _nms_inside(meta, ddims, nm):
        # [1, max_det, x1 y1 x2 y2 score class + nm]: NMS inside the graph, nothing left to decode the
        # way the model was trained (YOLO26's top-k is another matter: its family handles it)
        raise EdgesegError(f"{src}: output {det}{ddims} is an export with NMS inside the model; edgeseg needs "
                           "the raw head (it splits it before INT8 and runs NMS itself): export again with "
                           "`yolo export model=MODEL.pt format=onnx simplify=True` (no nms argument)")
    nc = int(ddims[1]) - 4 - nm
    if nc < 1:
        raise EdgesegError(f"{src}: output {det}{ddims} is too small for 4 box values and {nm} mask coefficients")
    try:
        reg_max = reg_max_of(model, det, nm)
    except EdgesegError:
        reg_max = 16  # a graph edgeseg cannot walk still decodes in the concat layout, where DFL is inside
    spec = {"type": "yolo-seg", "layout": "concat", "variant": "one2many", "num_classes": nc, "num_masks": nm,
            "reg_max": reg_max}
    if meta.get("head"):
        spec["ultralytics_head"] = str(meta["head"])[:64]  # the exporting head class: YOLOE needs its own advice
    roles = [{"name": det, "role": "det", "shape": ddims}, {"name": pro, "role": "protos", "shape": pdims}]
    return spec, roles, class_names(src, names, nc)


def split(model: onnx.ModelProto, spec: dict, roles: list[dict]) -> tuple[onnx.ModelProto, list[dict], dict]:
    from ...convert.split import split_yolo_seg

    det = next(o["name"] for o in roles if o["role"] == "det")
    pro = next(o["name"] for o in roles if o["role"] == "protos")
    try:
        m, outputs = split_yolo_seg(model, det, pro, int(spec["num_masks"]))
    except EdgesegError:
        if str(spec.get("ultralytics_head", "")).startswith("YOLOE"):
            # prompt-free YOLOE filters proposals inside the graph (LRPC): no per-scale class convs
            raise EdgesegError(
                "cannot split outputs: a prompt-free YOLOE head filters its proposals inside the graph; export it "
                "with fixed prompts instead (model.set_classes(names, model.get_text_pe(names)); "
                "model.export(format='onnx', simplify=True)) or convert with --no-split --fp32/--fp16") from None
        raise
    box = next(o for o in outputs if o["role"] == "box_dfl")
    return m, outputs, {"layout": "split", "reg_max": box["shape"][1] // 4,
                        "strides": sorted({o["stride"] for o in outputs if o["role"] != "protos"})}
