"""A static-shape ONNX graph as a ``torch.fx.GraphModule`` that Sony's MCT can trace again.

Runs inside the IMX500 environment (torch, onnx); does not import edgeseg. MCT quantizes PyTorch
models by re-tracing them with ``torch.fx``; generic ONNX-to-torch converters emit modules whose
``forward`` branches on tensor ranks and values, which fails under symbolic tracing. edgeseg's
canonical ONNX has static shapes, so every shape, axis and constant is resolved here and the graph
is built from plain ``nn.Conv2d`` / ``torch.cat`` / ``torch.reshape`` calls with literal arguments.
``Sigmoid`` + ``Mul(x, sigmoid(x))`` becomes ``nn.SiLU``, the activation MCT's IMX500 platform
model knows. Only the operators of CNN segmentation heads are covered; any other raises with its
name, so an unsupported model fails before minutes of quantization.
"""

from __future__ import annotations

import operator

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper, shape_inference
from torch import fx, nn


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _pads(p: list[int], n: int) -> tuple[list[int], bool]:
    """ONNX begin/end pads -> symmetric torch padding, and whether they were symmetric."""
    if not p:
        return [0] * n, True
    return list(p[:n]), list(p[:n]) == list(p[n:])


def to_fx(model: onnx.ModelProto) -> fx.GraphModule:
    model = shape_inference.infer_shapes(model)
    g = model.graph
    consts: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    shapes: dict[str, list[int]] = {}
    for vi in [*g.value_info, *g.input, *g.output]:
        dims = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        if dims and all(d > 0 for d in dims):
            shapes[vi.name] = dims
    for n in g.node:
        if n.op_type == "Constant":
            consts[n.output[0]] = numpy_helper.to_array(_attrs(n)["value"])
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    root = nn.Module()
    graph = fx.Graph()
    env: dict[str, fx.Node] = {}
    counter = [0]

    def module(m: nn.Module) -> str:
        name = f"m{counter[0]}"
        counter[0] += 1
        root.add_module(name, m)
        return name

    def buffer(a: np.ndarray) -> fx.Node:
        name = f"c{counter[0]}"
        counter[0] += 1
        root.register_buffer(name, torch.from_numpy(np.array(a, dtype=np.float32)))
        return graph.get_attr(name)

    def value(name: str):
        if name in env:
            return env[name]
        a = consts[name]
        return float(a) if a.size == 1 else buffer(a)

    inputs = [i for i in g.input if i.name not in consts]
    for i in inputs:
        env[i.name] = graph.placeholder(i.name.replace(".", "_").replace("/", "_") or "x")

    silu_done: set[str] = set()
    for n in g.node:
        op, a, out = n.op_type, _attrs(n), n.output[0]
        if op == "Constant" or out in silu_done:
            continue
        if op == "Sigmoid":
            # x * sigmoid(x) -> SiLU when the sigmoid feeds exactly that one Mul
            users = consumers.get(out, [])
            if len(users) == 1 and users[0].op_type == "Mul" and set(users[0].input) == {n.input[0], out}:
                env[users[0].output[0]] = graph.call_module(module(nn.SiLU()), (env[n.input[0]],))
                silu_done.add(users[0].output[0])
                continue
            env[out] = graph.call_function(torch.sigmoid, (env[n.input[0]],))
        elif op in ("Conv", "ConvTranspose"):
            w = consts[n.input[1]]
            b = consts[n.input[2]] if len(n.input) > 2 and n.input[2] else None
            k = list(w.shape[2:])
            pads, sym = _pads(list(a.get("pads", [])), len(k))
            if not sym or a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
                raise ValueError(f"{n.name}: asymmetric or automatic padding is not supported")
            groups, strides, dil = int(a.get("group", 1)), list(a.get("strides", [1] * len(k))), \
                list(a.get("dilations", [1] * len(k)))
            if op == "Conv":
                m = nn.Conv2d(w.shape[1] * groups, w.shape[0], k, strides, pads, dil, groups, b is not None)
            else:
                m = nn.ConvTranspose2d(w.shape[0], w.shape[1] * groups, k, strides, pads,
                                       list(a.get("output_padding", [0] * len(k))), groups, b is not None, dil)
            with torch.no_grad():
                m.weight.copy_(torch.from_numpy(w))
                if b is not None:
                    m.bias.copy_(torch.from_numpy(b))
            env[out] = graph.call_module(module(m), (env[n.input[0]],))
        elif op == "MaxPool":
            k = list(a["kernel_shape"])
            pads, sym = _pads(list(a.get("pads", [])), len(k))
            if not sym:
                raise ValueError(f"{n.name}: asymmetric padding is not supported")
            m = nn.MaxPool2d(k, list(a.get("strides", k)), pads, ceil_mode=bool(a.get("ceil_mode", 0)))
            env[out] = graph.call_module(module(m), (env[n.input[0]],))
        elif op in ("Add", "Sub", "Mul", "Div"):
            fn = {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div}[op]
            env[out] = graph.call_function(fn, (value(n.input[0]), value(n.input[1])))
        elif op == "Concat":
            env[out] = graph.call_function(torch.cat, ([value(i) for i in n.input],), {"dim": int(a["axis"])})
        elif op == "Split":
            axis = int(a.get("axis", 0))
            sizes = list(consts[n.input[1]]) if len(n.input) > 1 and n.input[1] else a.get("split")
            if sizes is None:
                sizes = [shapes[o][axis] for o in n.output]
            parts = graph.call_function(torch.split, (env[n.input[0]], [int(s) for s in sizes]), {"dim": axis})
            for j, o in enumerate(n.output):
                env[o] = graph.call_function(operator.getitem, (parts, j))
        elif op in ("Reshape", "Flatten", "Squeeze", "Unsqueeze"):
            if out not in shapes:
                raise ValueError(f"{n.name}: {op} output shape is not static")
            shape = list(shapes[out])
            if shape[0] == 1 and shapes.get(n.input[0], [0])[0] == 1:
                shape[0] = -1  # the batch: MCT calibrates with batches of several images
            env[out] = graph.call_function(torch.reshape, (env[n.input[0]], tuple(shape)))
        elif op == "Transpose":
            env[out] = graph.call_function(torch.permute, (env[n.input[0]], tuple(int(p) for p in a["perm"])))
        elif op == "MatMul":
            env[out] = graph.call_function(torch.matmul, (value(n.input[0]), value(n.input[1])))
        elif op == "Softmax":
            env[out] = graph.call_function(torch.softmax, (env[n.input[0]],), {"dim": int(a.get("axis", -1))})
        elif op == "Resize":
            mode = a.get("mode", b"nearest")
            mode = mode.decode() if isinstance(mode, bytes) else mode
            ctm = a.get("coordinate_transformation_mode", b"half_pixel")
            ctm = ctm.decode() if isinstance(ctm, bytes) else ctm
            # the ONNX modes F.interpolate reproduces exactly (semantic decoders upsample bilinearly)
            kw = {"nearest": {"mode": "nearest"},
                  "linear": {"mode": "bilinear", "align_corners": ctm == "align_corners"}}.get(mode)
            if kw is None or out not in shapes or (mode == "linear" and ctm not in (
                    "half_pixel", "pytorch_half_pixel", "align_corners")) or len(shapes[out]) != 4:
                raise ValueError(f"{n.name}: only nearest or (bi)linear 2-D Resize with a static output size is "
                                 f"supported (found mode {mode}, {ctm})")
            env[out] = graph.call_function(F.interpolate, (env[n.input[0]],), {"size": tuple(shapes[out][2:]), **kw})
        elif op == "Slice":
            starts, ends = consts[n.input[1]], consts[n.input[2]]
            axes = consts[n.input[3]] if len(n.input) > 3 and n.input[3] else np.arange(len(starts))
            steps = consts[n.input[4]] if len(n.input) > 4 and n.input[4] else np.ones(len(starts), int)
            idx = [slice(None)] * len(shapes[n.input[0]])
            for s, e, ax, st in zip(starts, ends, axes, steps):
                dim = shapes[n.input[0]][int(ax)]
                idx[int(ax)] = slice(int(max(min(s, dim), -dim)), int(min(e, dim)), int(st))
            env[out] = graph.call_function(operator.getitem, (env[n.input[0]], tuple(idx)))
        elif op == "Relu":
            env[out] = graph.call_module(module(nn.ReLU()), (env[n.input[0]],))
        elif op == "Identity":
            env[out] = env[n.input[0]]
        else:
            raise ValueError(f"{n.name}: ONNX operator {op} is not supported by edgeseg's IMX500 path")
    graph.output(tuple(env[o.name] for o in g.output))
    gm = fx.GraphModule(root, graph)
    gm.eval()
    return gm
