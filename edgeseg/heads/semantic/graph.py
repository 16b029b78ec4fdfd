"""Host half of semantic heads: one output, [N,C,H,W] logits or [N,H,W] labels."""

from __future__ import annotations

from pathlib import Path

import onnx

from ...errors import EdgesegError


def recognise(model: onnx.ModelProto, outputs: list[tuple[str, list]], meta: dict[str, str]) -> bool:
    return len(outputs) == 1 and len(outputs[0][1]) in (3, 4)


def describe(src: Path, model: onnx.ModelProto, outputs: list[tuple[str, list]], meta: dict[str, str],
             names: list[str] | None) -> tuple[dict, list[dict], list[str]]:
    if len(outputs) != 1:
        raise EdgesegError(f"{src}: --head semantic needs one output, found {len(outputs)}")
    (out, odims), = outputs
    kind = "labels" if len(odims) == 3 else "logits"
    nc = int(odims[1]) if kind == "logits" and isinstance(odims[1], int) else None
    names_list = names or ([f"class{i}" for i in range(max(nc or 0, 2))] if nc != 1 else ["background", "foreground"])
    if nc and nc > 1 and len(names_list) != nc:
        raise EdgesegError(f"{src}: {len(names_list)} class names given but the model outputs {nc} classes; "
                           "fix --names")
    spec: dict = {"type": "semantic", "output": kind, "num_classes": nc or len(names_list)}
    if nc == 1:
        # one channel: foreground where the logit is > 0, or the probability > 0.5 when the
        # model ends in its own sigmoid
        last = next((n for n in model.graph.node if out in n.output), None)
        spec["threshold"] = 0.5 if last is not None and last.op_type == "Sigmoid" else 0.0
    return spec, [{"name": out, "role": kind, "shape": odims}], names_list
