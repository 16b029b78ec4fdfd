"""Model import: any supported source becomes a canonical FP32 ONNX plus a head description.

Supported sources: ONNX (Ultralytics YOLOv8/YOLO11-seg exports, semantic-segmentation models
with [N,C,H,W] logits or [N,H,W] labels), Ultralytics ``.pt`` checkpoints (needs the optional
``ultralytics`` package, and ``trust_model`` because a checkpoint is a pickle that runs code on
load) and TorchScript archives (needs torch and ``trust_model`` too: a TorchScript program can read
and write files; exported to ONNX here). ONNX is data only and needs no trust.
"""

from __future__ import annotations

import ast
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from ..bundle import sha256_file, work_dir
from ..errors import EdgesegError, ToolchainMissing
from ..heads import HEAD_TYPES, all_heads, get_head
from ..heads.base import Head


@dataclass
class ImportedModel:
    model: onnx.ModelProto
    path: Path
    sha256: str
    format: str
    head: dict
    names: list[str]
    input_name: str
    input_hw: tuple[int, int]
    output_roles: list[dict] = field(default_factory=list)  # before splitting
    metadata: dict[str, str] = field(default_factory=dict)
    # the input normalisation the model declares (ONNX metadata, transformers' preprocessor config)
    normalisation: dict = field(default_factory=lambda: {"fields": {}, "from": {}})


def _dims(vi: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in vi.type.tensor_type.shape.dim]


def parse_names(text: str | None, where: str) -> list[str] | None:
    """Class names from Ultralytics metadata (``{0: 'a', ...}``), a comma list or a text file."""
    if text is None:
        return None
    text = text.strip()
    p = Path(text)
    if len(text) < 4096 and p.suffix in (".txt", ".names") and "," not in text:
        if not p.is_file():
            raise EdgesegError(f"{p}: no such names file; pass --names a,b,c or a text file with one name per line")
        return [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if text.startswith("{") or text.startswith("["):
        try:
            v = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise EdgesegError(f"{where}: class names {text[:60]!r} are not a dict or list literal; "
                               "pass --names a,b,c") from None
        if isinstance(v, dict):
            return [str(v[k]) for k in sorted(v)]
        return [str(x) for x in v]
    return [s.strip() for s in text.split(",") if s.strip()]


def _load_onnx(path: Path) -> onnx.ModelProto:
    if path.stat().st_size == 0:
        raise EdgesegError(f"{path}: file is empty; export the model again")
    from onnx.external_data_helper import ExternalDataInfo, load_external_data_for_model, uses_external_data

    try:
        m = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf raises several unrelated types for a corrupt file
        raise EdgesegError(f"{path}: not a readable ONNX model ({type(e).__name__}); "
                           "pass an .onnx, Ultralytics .pt or TorchScript file") from None
    # weights saved beside the graph (large exports): name the missing file, never read outside the folder
    folder = path.parent.resolve()
    for t in m.graph.initializer:
        if uses_external_data(t):
            loc = ExternalDataInfo(t).location
            f = (folder / loc).resolve()
            if not f.is_relative_to(folder):
                raise EdgesegError(f"{path}: tensor {t.name} points outside the model's folder ({loc}); "
                                   "refusing to read it; export the model again")
            if not f.is_file():
                raise EdgesegError(f"{path}: its weights are in {loc}, which is not next to it; "
                                   f"copy {loc} into {folder}")
    try:
        load_external_data_for_model(m, str(folder))
    except Exception as e:
        raise EdgesegError(f"{path}: its external weight data cannot be read ({type(e).__name__}: {e}); "
                           "export the model again") from None
    if not m.graph.node or not m.graph.input:
        raise EdgesegError(f"{path}: ONNX file has no graph (truncated or not a model); export the model again")
    # Vendor tools embed older ONNX readers that refuse a newer IR number even when the graph
    # needs nothing from it (pnnx's ONNX Runtime: IR <= 13; onnx >= 1.20 writes 14): declare the
    # lowest IR the opsets allow.
    need = onnx.helper.find_min_ir_version_for(list(m.opset_import), ignore_unknown=True)
    g = m.graph
    types = {t.data_type for t in g.initializer} | {v.type.tensor_type.elem_type
                                                    for v in (*g.input, *g.output, *g.value_info)}
    if not m.functions and max(types, default=0) <= onnx.TensorProto.BFLOAT16:  # float8/int4 need newer IRs
        m.ir_version = min(m.ir_version, max(need, 3))
    return m


def _fp16_to_fp32(m: onnx.ModelProto) -> bool:
    """Cast an FP16 export (Ultralytics ``half=True``: Cast in, FP16 graph, Cast out) back to FP32.

    The weights keep their FP16-rounded values; the graph computes in FP32 from then on, so the
    head splits, calibrates and quantizes like any other export and a bundle's precision label is
    what it computes in (the manifest's source records the FP16 weights). Returns whether it did.
    """
    from onnx import numpy_helper

    F16, F32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    g = m.graph
    if not any(t.data_type == F16 for t in g.initializer):
        return False
    try:
        inferred = onnx.shape_inference.infer_shapes(m)
    except Exception:  # noqa: BLE001 - shape inference raises assorted types on odd graphs
        inferred = m
    types = {v.name: v.type.tensor_type.elem_type for v in (*inferred.graph.value_info, *g.input, *g.output)}
    half = {n for n, t in types.items() if t == F16} | {t.name for t in g.initializer if t.data_type == F16}
    for t in g.initializer:
        if t.data_type == F16:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype("float32"), t.name))
    drop = []
    for n in g.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value" and a.t.data_type == F16:
                    a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype("float32"), a.t.name))
        elif n.op_type == "Cast":
            to = next(a for a in n.attribute if a.name == "to")
            src_float = n.input[0] in half or types.get(n.input[0]) == F32
            if to.i == F16:
                half.add(n.output[0])
                if src_float:
                    drop.append(n)  # float -> fp16 becomes float -> float: gone
                else:
                    to.i = F32  # an integer cast into the FP16 graph now lands in FP32
            elif to.i == F32 and n.input[0] in half:
                drop.append(n)  # fp16 -> float at an output: gone
    outputs = {o.name for o in g.output}
    for n in drop:
        src, dst = n.input[0], n.output[0]
        g.node.remove(n)
        if dst in outputs:  # the tensor before the Cast takes the output's name
            for k in g.node:
                k.input[:] = [dst if i == src else i for i in k.input]
                k.output[:] = [dst if o == src else o for o in k.output]
        else:
            for k in g.node:
                k.input[:] = [src if i == dst else i for i in k.input]
    for v in g.value_info:
        if v.type.tensor_type.elem_type == F16:
            v.type.tensor_type.elem_type = F32
    return True


def parse_imgsz(text: str | int | tuple[int, int] | None) -> tuple[int, int] | None:
    """``--imgsz``: ``N`` (square) or ``H,W`` (also ``HxW``) -> (height, width); EdgesegError if neither."""
    if text is None:
        return None
    if isinstance(text, int):
        return (text, text)
    if isinstance(text, tuple):
        return (int(text[0]), int(text[1]))
    parts = [p for p in str(text).lower().replace("x", ",").split(",") if p.strip()]
    try:
        hw = tuple(int(p) for p in parts)
    except ValueError:
        hw = ()
    if len(hw) == 1:
        hw = (hw[0], hw[0])
    if len(hw) != 2 or not all(32 <= v <= 8192 for v in hw):
        raise EdgesegError(f"--imgsz {text}: expected N or H,W (each 32..8192), e.g. --imgsz 320 or --imgsz 320,480")
    return hw  # type: ignore[return-value]


def _export_ultralytics_pt(path: Path, imgsz: tuple[int, int] | None, workdir: Path, trust_model: bool) -> Path:
    if not trust_model:
        raise EdgesegError(f"{path}: a .pt checkpoint is a pickle that can run code when loaded; pass --trust-model "
                           "if you trust where it came from, or export it to ONNX yourself")
    from .ultralytics_quiet import ULTRALYTICS_INSTALL, quiet_ultralytics

    # Ultralytics writes the export next to the checkpoint: work on a copy so the user's folder
    # stays untouched.
    import shutil

    copy = workdir / path.name
    shutil.copyfile(path, copy)
    try:
        with quiet_ultralytics(workdir) as YOLO:  # noqa: N806 - Ultralytics' class name
            model = YOLO(str(copy))
            size: int | list[int]
            if imgsz is None:
                args = getattr(model.model, "args", {}) or {}
                size = int(args.get("imgsz", 640)) if isinstance(args, dict) else 640
            else:
                size = list(imgsz)
            out = model.export(format="onnx", imgsz=size, opset=17, simplify=True, dynamic=False)
    except ImportError as e:
        raise ToolchainMissing(f"{path}: importing an Ultralytics .pt needs the ultralytics package (AGPL-3.0)"
                               + (f", which needs {e.name}" if e.name and not e.name.startswith("ultralytics") else "")
                               + f": {ULTRALYTICS_INSTALL}; or export to ONNX with `yolo export format=onnx` and "
                               "pass the .onnx") from None
    return Path(out)


def _export_torchscript(path: Path, imgsz: tuple[int, int] | None, workdir: Path, trust_model: bool) -> Path:
    if not trust_model:
        # a TorchScript program can read and write any file (torch.from_file(..., shared=True)),
        # and loading it runs __setstate__ methods: gated exactly as pickles are
        raise EdgesegError(f"{path}: a TorchScript model is a program that runs when loaded and traced; pass "
                           "--trust-model if you trust where it came from, or export it to ONNX (data only) yourself")
    try:
        import torch
    except ImportError:
        from .ultralytics_quiet import TORCH_INSTALL

        raise ToolchainMissing(f"{path}: importing TorchScript needs torch: {TORCH_INSTALL}, "
                               "or export the model to ONNX and pass the .onnx") from None
    extra = {"config.txt": ""}  # Ultralytics TorchScript exports carry their metadata in this extra file
    module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    import json

    try:
        cfg = json.loads(extra.get("config.txt") or b"{}")
    except (ValueError, TypeError):
        cfg = {}
    cfg_size = cfg.get("imgsz") if isinstance(cfg, dict) else None
    if isinstance(cfg_size, list) and cfg_size:
        cfg_size = cfg_size[0]
    size = imgsz or ((int(cfg_size),) * 2 if isinstance(cfg_size, (int, float)) else None)
    if not size:
        raise EdgesegError(f"{path}: TorchScript has no input size in its metadata; pass --imgsz N or H,W")
    dst = workdir / (path.stem + ".onnx")
    x = torch.zeros(1, 3, *size)
    with torch.no_grad():
        y = module(x)
    n_out = len(y) if isinstance(y, (tuple, list)) else 1
    names = ["output0", "output1"][:n_out] if n_out <= 2 else [f"output{i}" for i in range(n_out)]
    torch.onnx.export(module, x, str(dst), input_names=["images"], output_names=names, opset_version=17,
                      dynamo=False)
    m = onnx.load(str(dst))
    for k in ("names", "task", "imgsz"):
        if isinstance(cfg, dict) and k in cfg:
            e = m.metadata_props.add()
            e.key, e.value = k, str(cfg[k])
    onnx.save(m, str(dst))
    return dst


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("constants.pkl") or n.endswith("/code/__torch__.py") or "/code/" in n
                   for n in z.namelist())


def import_model(path: str | Path, *, head: str | None = None, names: str | None = None,
                 imgsz: int | tuple[int, int] | str | None = None,
                 trust_model: bool = False, workdir: Path | None = None,
                 preprocessor: str | Path | None = None) -> ImportedModel:
    """Load ``path`` as a canonical FP32 ONNX and describe its head. Raises EdgesegError on bad input.

    ``preprocessor``: transformers' preprocessor_config.json for the model (see normalisation.py)."""
    src = Path(path)
    if not src.exists():
        raise EdgesegError(f"{src}: no such file; pass the path of an .onnx, .pt or TorchScript model")
    if src.is_dir():
        raise EdgesegError(f"{src}: is a folder; pass a model file (.onnx, .pt, .torchscript)")
    if src.stat().st_size == 0:
        raise EdgesegError(f"{src}: file is empty; export the model again")
    imgsz = parse_imgsz(imgsz)
    digest = sha256_file(src)
    workdir = workdir or work_dir("import")  # pid-named: removed by a later run if this one is killed
    fmt = "onnx"
    onnx_path = src
    if src.suffix.lower() in (".torchscript", ".ts") or (src.suffix.lower() in (".pt", ".pth")
                                                         and _is_torchscript(src)):
        fmt, onnx_path = "torchscript", _export_torchscript(src, imgsz, workdir, trust_model)
    elif src.suffix.lower() in (".pt", ".pth"):
        fmt, onnx_path = "ultralytics-pt", _export_ultralytics_pt(src, imgsz, workdir, trust_model)
    m = _load_onnx(onnx_path)
    meta = {p.key: p.value for p in m.metadata_props}
    if _fp16_to_fp32(m):
        meta["weights"] = "fp16"  # exported with half=True: computed in FP32 from here on

    inputs = [i for i in m.graph.input if i.name not in {t.name for t in m.graph.initializer}]
    if len(inputs) != 1:
        raise EdgesegError(f"{src}: model has {len(inputs)} inputs; edgeseg needs one image input [1,3,H,W]")
    inp = inputs[0]
    dims = _dims(inp)
    if len(dims) != 4 or dims[1] != 3:
        raise EdgesegError(f"{src}: input '{inp.name}' has shape {dims}; edgeseg needs [1,3,H,W] (RGB, NCHW)")
    if not all(isinstance(d, int) and d > 0 for d in dims[2:]) or not (dims[0] == 1 or not isinstance(dims[0], int)):
        if imgsz is None:
            raise EdgesegError(f"{src}: input '{inp.name}' has dynamic shape {dims}; pass --imgsz N (or H,W) "
                               "or export with a fixed size (yolo export ... dynamic=False)")
    if imgsz is not None or not isinstance(dims[0], int) or dims[0] != 1:
        h, w = imgsz if imgsz is not None else (int(dims[2]), int(dims[3]))  # type: ignore[arg-type]
        if imgsz is not None and all(isinstance(d, int) and d > 0 for d in dims[2:]) and (dims[2], dims[3]) != (h, w):
            raise EdgesegError(f"{src}: input is fixed at {dims[2]}x{dims[3]} but --imgsz is {h},{w}; "
                               f"drop --imgsz or re-export the model at imgsz=({h},{w})")
        for d, v in zip(inp.type.tensor_type.shape.dim, (1, 3, h, w)):
            d.Clear()
            d.dim_value = v
        # A dynamic export declares symbolic output dims that inference would keep: drop them, and
        # propagate the Shape->Gather->Reshape arithmetic so the head's sizes come out as numbers.
        for o in m.graph.output:
            o.type.tensor_type.ClearField("shape")
        del m.graph.value_info[:]
        m = onnx.shape_inference.infer_shapes(m, data_prop=True)
        dims = [1, 3, h, w]
    input_hw = (int(dims[2]), int(dims[3]))

    outs = [(o.name, _dims(o)) for o in m.graph.output]
    family = _recognise(src, m, outs, meta, head)
    spec, roles, names_list = family.describe(src, m, outs, meta, parse_names(names, str(src))
                                              or parse_names(meta.get("names"), str(src)))
    from .normalisation import model_normalisation

    norm = model_normalisation(src, meta, preprocessor)
    return ImportedModel(m, src, digest, fmt, spec, names_list, inp.name, input_hw, roles, meta, norm)


def _recognise(src: Path, m: onnx.ModelProto, outs: list[tuple[str, list]], meta: dict[str, str],
               head: str | None) -> Head:
    """The head family: the one named by --head (or a more specific one it covers), else the first that
    recognises the graph."""
    if head is not None and head not in HEAD_TYPES:
        raise EdgesegError(f"{src}: --head {head} is not a head edgeseg knows; choose one of {', '.join(HEAD_TYPES)}")
    for family in all_heads():
        if head is not None and head not in (family.name, family.refines):
            continue
        if family.recognise(m, outs, meta):
            return family
    if head is not None:
        return get_head(head)  # let its describe() say what does not fit
    shapes = ", ".join(f"{n}{s}" for n, s in outs)
    raise EdgesegError(f"{src}: unknown head (outputs {shapes}); pass --head " + " or --head ".join(HEAD_TYPES))
