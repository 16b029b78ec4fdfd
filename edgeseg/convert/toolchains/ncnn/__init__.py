"""NCNN toolchain: pnnx converts the split FP32 ONNX (FP32 or FP16 weights); INT8 is computed by
edgeseg itself (:mod:`.int8`) and verified in the real ncnn runtime."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

from ....errors import EdgesegError
from ....install import pip_extra
from ....options import Option
from .. import Availability, ConvertJob, ConvertResult, Toolchain, probe
from .mixed import drop_from_table

PARAM, BIN = "model.ncnn.param", "model.ncnn.bin"
_TABLES: dict[str, dict] = {}  # activation scales of the last models calibrated in this process
INSTALL = pip_extra("ncnn-host") + '  (install torch first: pip install torch --index-url https://download.pytorch.org/whl/cpu)'


def _pnnx() -> str:
    exe = shutil.which("pnnx") or str(Path(sys.executable).with_name("pnnx"))
    if not Path(exe).exists():
        raise EdgesegError(f"pnnx not found next to {sys.executable} or on PATH; {INSTALL}")
    return exe


def _check_layers(model: Path, param: Path) -> None:
    """pnnx writes layers that the ncnn runtime may not be built with (ArgMax is off in every
    ncnn wheel): refuse them here rather than fail later with "could not compute blob"."""
    import ncnn

    lines = param.read_text().splitlines()[2:]
    kinds = sorted({ln.split()[0] for ln in lines if ln.strip()})
    missing = [k for k in kinds if ncnn.create_layer(k) is None]
    if missing:
        hint = " (a semantic model: export its logits, edgeseg takes the argmax itself)" if "ArgMax" in missing else ""
        raise EdgesegError(f"{model}: the ncnn runtime has no {', '.join(missing)} layer, which pnnx wrote for this "
                           f"model; export the model without it{hint}, or choose another --target")


class NcnnToolchain(Toolchain):
    name = "ncnn"
    OPTIONS = {
        "activation_method": Option(str, "auto: kl and max both built, the closer to FP32 kept", "auto",
                                    ("auto", "kl", "max")),
        "int8_tools": Option(str, "auto: ncnn2table + ncnn2int8 when both are on PATH, else edgeseg's own", "auto",
                             ("auto", "ncnn", "edgeseg")),
    }

    @classmethod
    def availability(cls) -> Availability:
        av = probe(INSTALL, ncnn="ncnn", pnnx="pnnx")
        if av.installed and not (shutil.which("pnnx") or Path(sys.executable).with_name("pnnx").exists()):
            return Availability(False, install=INSTALL, detail="the pnnx executable is missing")
        return av

    @classmethod
    def optional_tools(cls, target: str) -> dict[str, str]:
        found = [shutil.which(t) for t in ("ncnn2table", "ncnn2int8")]
        return {"ncnn2table + ncnn2int8": " ".join(found) if all(found) else  # type: ignore[arg-type]
                "not on PATH: edgeseg computes the int8 table and writes the int8 model itself"}

    def convert(self, job: ConvertJob) -> ConvertResult:
        work, log = job.scratch("ncnn"), job.log_path("pnnx")
        try:
            src = work / "model.onnx"
            shutil.copyfile(job.fp32_path, src)
            h, w = job.imported.input_hw
            fp16 = "1" if job.precision == "fp16" else "0"
            with open(log, "w") as out:
                r = subprocess.run([_pnnx(), str(src), f"inputshape=[1,3,{h},{w}]", f"fp16={fp16}"], cwd=work,
                                   stdout=out, stderr=subprocess.STDOUT, timeout=1800)
            if r.returncode != 0 or not (work / "model.ncnn.param").is_file():
                raise EdgesegError(f"{log}: pnnx failed (exit {r.returncode}); see this log, which is kept")
            text = log.read_text(errors="replace")
            log.unlink()
            param, binf = work / "model.ncnn.param", work / "model.ncnn.bin"
            _check_layers(job.imported.path, param)
            q: dict = {"precision": job.precision}
            if job.precision == "int8":
                use = job.settings["int8_tools"]
                tools = [shutil.which("ncnn2table"), shutil.which("ncnn2int8")]
                if use == "ncnn" and not all(tools):
                    raise EdgesegError("--option int8_tools=ncnn: ncnn2table and ncnn2int8 are not on PATH; build "
                                       "them from ncnn's tools/quantize, or use int8_tools=edgeseg")
                if use == "ncnn" or (use == "auto" and all(tools)):
                    q.update(self._int8_ncnn_tools(job, param, binf, work, tools))  # type: ignore[arg-type]
                else:
                    q.update(self._int8(job, param, binf, work))
                param, binf = work / "int8.param", work / "int8.bin"
            elif job.precision == "fp16":
                q.update(scheme="FP16 weights (pnnx fp16=1)")
            shutil.copyfile(param, job.workdir / PARAM)
            shutil.copyfile(binf, job.workdir / BIN)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        # pnnx names the graph's outputs out0..outN in ONNX output order, and the input in0
        outputs = [dict(o, quant=None, blob=f"out{i}") for i, o in enumerate(job.outputs)]
        return ConvertResult([PARAM, BIN], outputs, q, self.availability().versions, input={"blob": "in0"}, log=text)

    def _int8_ncnn_tools(self, job: ConvertJob, param: Path, binf: Path, work: Path, tools: list[str]) -> dict:
        """ncnn's own ncnn2table + ncnn2int8, fed the model inputs edgeseg's preprocessing makes (its
        .npy mode: ncnn2table's own image reading would normalise a second time, in another place)."""
        h, w = job.input.hw
        inputs = job.calib.save_arrays(work / "calib", job.input, batch=False)  # [3,h,w]: its shape=[w,h,3]
        method = job.settings["activation_method"]
        if method in ("auto", "max"):  # ncnn2table's methods are kl, aciq and eq: its default for ours
            method = "kl"
        table = work / "model.table"
        skip = _keep_float_layers(job, param, binf)
        log = job.log_path("ncnn2int8")
        steps = [[tools[0], str(param), str(binf), str(inputs), str(table), f"shape=[{w},{h},3]",
                  "type=1", f"thread={os.cpu_count() or 1}", f"method={method}"],
                 [tools[1], str(param), str(binf), str(work / "int8.param"), str(work / "int8.bin"), str(table)]]
        with open(log, "w") as out:
            for argv in steps:
                r = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, cwd=work, timeout=3600)
                if r.returncode != 0:
                    raise EdgesegError(f"{log}: {Path(argv[0]).name} failed (exit {r.returncode}); see this log, "
                                       "which is kept")
                if argv is steps[0] and skip:
                    drop_from_table(table, skip)
        log.unlink()
        return {"scheme": "ncnn int8 convolutions (ncnn2table + ncnn2int8)", "activation_method": method,
                "tools": [str(t) for t in tools], "kept_float": sorted(skip)}

    def _int8(self, job: ConvertJob, param: Path, binf: Path, work: Path) -> dict:
        import ncnn
        import numpy as np

        from .int8 import QUANTIZED, activation_scales, quantize, read_param

        layers, _ = read_param(param)
        blobs = sorted({l.inputs[0] for l in layers if l.type in QUANTIZED})
        net = _float_net(param, binf, keep_blobs=True)
        method = job.settings["activation_method"]

        def passes():
            for x in job.calib.arrays(job.input, progress=False):
                ex = net.create_extractor()
                ex.input("in0", ncnn.Mat(np.ascontiguousarray(x[0])))
                d = {}
                for b in blobs:
                    ret, m = ex.extract(b)
                    if ret != 0:
                        raise EdgesegError(f"{param}: ncnn could not compute blob {b} during calibration")
                    d[b] = np.array(m)
                yield d

        skip = _keep_float_layers(job, param, binf)
        methods = ("kl", "max") if method == "auto" else (method,)
        # the tables depend on the FP32 model and the images only: a --max-drop search, converting the
        # same model again with other layers kept float, reuses them instead of calibrating again
        key = hashlib.sha256(param.read_bytes() + binf.read_bytes() + repr(
            ([str(p) for p in job.calib.images], job.input, methods)).encode()).hexdigest()
        tables = _TABLES.pop(key, None) or activation_scales(passes, methods=methods)
        _TABLES[key] = tables
        while len(_TABLES) > 2:
            _TABLES.pop(next(iter(_TABLES)))
        made = {m: quantize(param, binf, t, work / f"{m}.param", work / f"{m}.bin", skip=skip)
                for m, t in tables.items()}
        agreement = {m: self._agreement(job, net, work / f"{m}.param", work / f"{m}.bin") for m in made} \
            if len(made) > 1 else {}
        # KL's clipping suits most blobs, but on the reference YOLOv8n-seg it clipped the class branch
        # (class cosine 0.73, mask mAP 0.571 against FP32 0.742; max ranges: 0.733): with "auto" both
        # tables are built and the one whose int8 model follows FP32 more closely is kept
        chosen = max(agreement, key=agreement.get) if agreement else method
        (work / f"{chosen}.param").replace(work / "int8.param")
        (work / f"{chosen}.bin").replace(work / "int8.bin")
        net.clear()
        return {"scheme": "ncnn int8 convolutions (edgeseg's table + writer, ncnn formats)",
                "activation_method": chosen + (" (auto: its int8 outputs follow FP32 best on 8 held-back images; "
                                               f"worst per-output mean cosine by method: {agreement})"
                                               if agreement else ""),
                "weights": "int8 per output channel, 127/max|w|",
                "quantized_layers": len(made[chosen]), "kept_float": sorted(skip)}

    @staticmethod
    def _agreement(job: ConvertJob, fp32_net, param: Path, binf: Path, images: int = 8) -> float:
        """The smallest mean cosine over the model outputs between this int8 model and FP32, in ncnn."""
        import itertools

        import ncnn
        import numpy as np

        from ....fidelity import cosine

        net = _float_net(param, binf)
        outs = [f"out{i}" for i in range(len(job.outputs))]
        # class logits compared as probabilities, as the fidelity check does: the background's large
        # negative logits keep a logit cosine near 1 while the scores near the threshold move
        probs = {f"out{i}" for i, o in enumerate(job.outputs) if o["role"] == "cls_logits"}
        cos: dict[str, list[float]] = {o: [] for o in outs}
        # the held-back images when there are any: the pick is then not scored on what it was calibrated on
        which = "holdout" if job.calib.holdout else "images"
        for x in itertools.islice(job.calib.arrays(job.input, which=which, progress=False), images):
            got = []
            for n in (fp32_net, net):
                ex = n.create_extractor()
                ex.input("in0", ncnn.Mat(np.ascontiguousarray(x[0])))
                got.append({o: np.array(ex.extract(o)[1], dtype=np.float64).ravel() for o in outs})
                del ex  # its blobs belong to the net's allocator: gone before the net is cleared
            for o in outs:
                a, b = (1 / (1 + np.exp(-np.clip(v, -80, 80))) if o in probs else v for v in (got[0][o], got[1][o]))
                cos[o].append(cosine(a, b))
        net.clear()
        return round(min(float(np.mean(v)) for v in cos.values()), 4)


def _keep_float_layers(job: ConvertJob, param: Path, binf: Path) -> set[str]:
    """``--keep-float`` names as ncnn layers: ncnn layer names as given, ONNX Conv node names through
    their weights (pnnx renames layers; :mod:`.mixed`). Other names (an activation: float in ncnn
    anyway) select nothing."""
    from .int8 import read_param
    from .mixed import onnx_to_ncnn

    names = set(job.keep_float)
    if not names:
        return set()
    own = {l.name for l in read_param(param)[0]}
    return (names & own) | set(onnx_to_ncnn(job.fp32_path, param, binf, names - own).values())


def _float_net(param: Path, binf: Path, keep_blobs: bool = False):
    """An ncnn net computing in float32 (no fp16 storage or arithmetic): the reference the int8
    tables are measured on."""
    import ncnn

    net = ncnn.Net()
    net.opt.use_fp16_packed = net.opt.use_fp16_storage = net.opt.use_fp16_arithmetic = False
    net.opt.lightmode = not keep_blobs  # calibration extracts intermediate blobs
    net.load_param(str(param))
    net.load_model(str(binf))
    return net


TOOLCHAIN = NcnnToolchain()
