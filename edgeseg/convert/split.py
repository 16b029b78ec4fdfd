"""Rewrite a YOLO-seg graph so that each output role gets its own tensor (and INT8 scale).

Ultralytics' ``output0`` concatenates boxes in pixels, class scores and mask coefficients; one
INT8 scale cannot hold all three and the class scores round to zero (../DESIGN.md). We cut the
graph at the raw per-scale head convolutions instead, the way Rockchip's model zoo does:

    box_p{s}  [1, 4*reg_max, H, W]  DFL logits      (softmax + expectation + decode in numpy)
    cls_p{s}  [1, nc, H, W]         class logits    (sigmoid in numpy, thresholded in logit space)
    coef_p{s} [1, nm, H, W]         mask coefficients
    protos    [1, nm, mh, mw]       mask prototypes

Everything after those convolutions (DFL, anchors, sigmoid, concat) is removed from the graph and
done by :mod:`edgeseg.runtime.decode`, which also decodes the unsplit ``output0`` layout.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import onnx
from onnx import helper

from ..errors import EdgesegError

ROLE_PREFIX = ("box", "cls", "coef")


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in graph.node for o in n.output}


def _conv_through_reshape(name: str, prod: dict[str, onnx.NodeProto]) -> str | None:
    """The Conv output feeding ``name`` through at most one Reshape/Flatten, else None."""
    node = prod.get(name)
    if node is not None and node.op_type in ("Reshape", "Flatten"):
        name = node.input[0]
        node = prod.get(name)
    return name if node is not None and node.op_type == "Conv" else None


def _shape(vi: onnx.ValueInfoProto) -> list[int]:
    return [d.dim_value for d in vi.type.tensor_type.shape.dim]


def _prune(graph: onnx.GraphProto) -> None:
    """Drop nodes and initializers no graph output depends on."""
    prod = _producers(graph)
    need, todo = set(), deque(o.name for o in graph.output)
    keep_nodes: set[int] = set()
    while todo:
        name = todo.popleft()
        if name in need:
            continue
        need.add(name)
        node = prod.get(name)
        if node is not None and id(node) not in keep_nodes:
            keep_nodes.add(id(node))
            todo.extend(i for i in node.input if i)
    nodes = [n for n in graph.node if id(n) in keep_nodes]
    del graph.node[:]
    graph.node.extend(nodes)
    inits = [i for i in graph.initializer if i.name in need]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    vis = [v for v in graph.value_info if v.name in need]
    del graph.value_info[:]
    graph.value_info.extend(vis)


def _constants_to_initializers(graph: onnx.GraphProto) -> None:
    """Turn Constant nodes into initializers. onnx2tf takes a Split whose sizes come from a
    Constant node (YOLO26's export leaves them so) as dynamic and emits SPLIT_V, which has no
    full-integer TFLite kernel (ERROR_NEEDS_FLEX_OPS); as initializers they are static."""
    keep = []
    for n in graph.node:
        value = next((a for a in n.attribute if a.name == "value"), None) if n.op_type == "Constant" else None
        if value is None:
            keep.append(n)
            continue
        t = onnx.TensorProto()
        t.CopyFrom(value.t)
        t.name = n.output[0]
        graph.initializer.append(t)
    del graph.node[:]
    graph.node.extend(keep)


def _rename(graph: onnx.GraphProto, old: str, new: str) -> None:
    for n in graph.node:
        for k, i in enumerate(n.input):
            if i == old:
                n.input[k] = new
        for k, o in enumerate(n.output):
            if o == old:
                n.output[k] = new


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    out: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for i in n.input:
            out.setdefault(i, []).append(n)
    return out


def find_head_convs(model: onnx.ModelProto, det_output: str, num_masks: int | None) -> dict[str, list[str]]:
    """The per-scale head convolutions above ``det_output``, by role: ``box``, ``cls``, ``coef``.

    Walks up from the output to every Concat joining Reshape(Conv) branches (one per role,
    strides in anchor order) without walking above them. Roles come from the graph, not the
    channel order of ``output0``, so the same walk serves the raw head (boxes, scores and
    coefficients concatenated) and an end-to-end export whose top-k sits below them: the class
    branch is the one that feeds a Sigmoid, the coefficients have ``num_masks`` channels, the box
    regression (4 x reg_max channels) is the third.
    """
    g = model.graph
    prod, cons = _producers(g), _consumers(g)
    found: list[tuple[str, list[str]]] = []
    seen, todo = set(), deque([det_output])
    while todo:
        name = todo.popleft()
        if name in seen:
            continue
        seen.add(name)
        node = prod.get(name)
        if node is None:
            continue
        if node.op_type == "Concat" and len(node.input) >= 2:
            convs = [_conv_through_reshape(i, prod) for i in node.input]
            if all(convs):
                found.append((name, convs))  # type: ignore[arg-type]
                continue
        todo.extend(i for i in node.input if i)
    if len(found) != 3 or len({len(c) for _, c in found}) != 1:
        raise EdgesegError(
            f"cannot split outputs: no per-scale head convolutions (box, class, coefficient branches) found above "
            f"'{det_output}'; export with `yolo export format=onnx simplify=True` or pass --no-split")
    inits = {t.name: t for t in g.initializer}

    def channels(conv_out: str) -> int:
        w = inits.get(prod[conv_out].input[1])
        return int(w.dims[0]) if w is not None else -1

    roles: dict[str, list[str]] = {}
    rest = []
    for name, convs in found:
        if any(c.op_type == "Sigmoid" for c in cons.get(name, [])) and "cls" not in roles:
            roles["cls"] = convs
        else:
            rest.append(convs)
    if "cls" not in roles or len(rest) != 2:
        raise EdgesegError(f"cannot split outputs: no class branch (Concat -> Sigmoid) above '{det_output}'; "
                           "export with `yolo export format=onnx simplify=True` or pass --no-split")
    a, b = rest
    if num_masks is not None and channels(a[0]) == num_masks and channels(b[0]) != num_masks:
        roles["coef"], roles["box"] = a, b
    elif num_masks is not None and channels(b[0]) == num_masks and channels(a[0]) != num_masks:
        roles["coef"], roles["box"] = b, a
    else:
        raise EdgesegError(f"cannot tell the box branch from the mask coefficients above '{det_output}' "
                           f"({channels(a[0])} and {channels(b[0])} channels, {num_masks} masks); pass --no-split")
    if channels(roles["box"][0]) % 4:
        raise EdgesegError(f"cannot split outputs: the box branch above '{det_output}' has "
                           f"{channels(roles['box'][0])} channels, not 4 x reg_max; pass --no-split")
    return roles


def reg_max_of(model: onnx.ModelProto, det_output: str, num_masks: int) -> int:
    """DFL bins of a YOLO head (16 for YOLOv8/11, 1 for YOLO26): its box convolutions' channels / 4."""
    convs = find_head_convs(model, det_output, num_masks)["box"]
    w = next(t for t in model.graph.initializer if t.name == _producers(model.graph)[convs[0]].input[1])
    return int(w.dims[0]) // 4


def split_yolo_seg(model: onnx.ModelProto, det_output: str, proto_output: str,
                   num_masks: int | None = None) -> tuple[onnx.ModelProto, list[dict]]:
    """Return a copy of ``model`` cut at its per-scale head convs, and the output descriptions.

    Each description is ``{"name", "role", "scale", "stride", "shape"}`` with role one of
    ``box_dfl`` (4 x reg_max box regression channels; reg_max 1 is YOLO26's plain ltrb distances),
    ``cls_logits``, ``coef`` or ``protos``, in the order the decoder expects. Everything below the
    convolutions goes, including the top-k of an end-to-end export.
    """
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    if num_masks is None:
        pro = next((o for o in g.output if o.name == proto_output), None)
        num_masks = _shape(pro)[1] if pro is not None else None
    found = find_head_convs(m, det_output, num_masks)
    branches = [found["box"], found["cls"], found["coef"]]

    inferred = onnx.shape_inference.infer_shapes(m)
    shapes = {v.name: _shape(v) for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    in_h = _shape(g.input[0])[2]

    outputs: list[dict] = []
    new_outs: list[onnx.ValueInfoProto] = []
    n_scales = len(branches[0])  # type: ignore[index]
    for s in range(n_scales):
        for prefix, role, convs in zip(ROLE_PREFIX, ("box_dfl", "cls_logits", "coef"), branches):
            old = convs[s]  # type: ignore[index]
            shape = shapes[old]
            stride = in_h // shape[2]
            new = f"{prefix}_p{s + 3}" if stride == 2 ** (s + 3) else f"{prefix}_s{stride}"
            _rename(g, old, new)
            outputs.append({"name": new, "role": role, "scale": s, "stride": stride, "shape": shape})
            new_outs.append(helper.make_tensor_value_info(new, onnx.TensorProto.FLOAT, shape))
    proto_shape = shapes.get(proto_output) or next(_shape(o) for o in g.output if o.name == proto_output)
    _rename(g, proto_output, "protos")
    outputs.append({"name": "protos", "role": "protos", "scale": None, "stride": in_h // proto_shape[2],
                    "shape": proto_shape})
    new_outs.append(helper.make_tensor_value_info("protos", onnx.TensorProto.FLOAT, proto_shape))
    del g.output[:]
    g.output.extend(new_outs)
    _prune(g)
    _constants_to_initializers(g)
    onnx.checker.check_model(m)
    return m, outputs


def merge_scales(model: onnx.ModelProto, outputs: list[dict]) -> tuple[onnx.ModelProto, list[dict], list[dict]]:
    """Join each role's per-scale outputs into one ``[1, C, anchors]`` tensor: four outputs in all.

    For runtimes with few output slots (the IMX500 sends at most 8 tensors with each frame). The
    roles stay separate, so each keeps its own quantization scale; only the scales of one role
    share one. Returns the model, its output descriptions and the anchor grids the decoder needs.
    """
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    by_role: dict[str, list[dict]] = {}
    for o in outputs:
        by_role.setdefault(o["role"], []).append(o)
    grids = [{"h": o["shape"][2], "w": o["shape"][3], "stride": o["stride"]}
             for o in sorted(by_role["cls_logits"], key=lambda o: o["scale"])]
    new_desc, new_outs = [], []
    for prefix, role in zip(ROLE_PREFIX, ("box_dfl", "cls_logits", "coef")):
        parts = sorted(by_role[role], key=lambda o: o["scale"])
        flat = []
        for o in parts:
            c, h, w = o["shape"][1:]
            shape_name = f"{o['name']}_flat_shape"
            g.initializer.append(onnx.numpy_helper.from_array(np.array([1, c, h * w], np.int64), shape_name))
            g.node.append(helper.make_node("Reshape", [o["name"], shape_name], [f"{o['name']}_flat"]))
            flat.append(f"{o['name']}_flat")
        c, anchors = parts[0]["shape"][1], sum(o["shape"][2] * o["shape"][3] for o in parts)
        g.node.append(helper.make_node("Concat", flat, [prefix], axis=2))
        new_desc.append({"name": prefix, "role": role, "scale": "all", "shape": [1, c, anchors]})
        new_outs.append(helper.make_tensor_value_info(prefix, onnx.TensorProto.FLOAT, [1, c, anchors]))
    pro = by_role["protos"][0]
    new_desc.append(dict(pro))
    new_outs.append(next(o for o in g.output if o.name == pro["name"]))
    del g.output[:]
    g.output.extend(new_outs)
    onnx.checker.check_model(m)
    return m, new_desc, grids
