"""``edgeseg convert``: import, split, calibrate, run the target's toolchain, write the bundle."""

from __future__ import annotations

import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import onnx

from .. import __version__
from ..bundle import Bundle, Manifest, atomic_bundle_dir, write_manifest
from ..defaults import DEFAULT_CALIB, DEFAULT_MODEL, default_bundle_dir
from ..errors import EdgesegError
from ..profiles import load_profile
from ..runtime.sources import read_image
from .calibration import DEFAULT_IMAGES, CalibrationSet
from .importer import import_model
from .split import split_yolo_seg
from .toolchains import ConvertJob, get_toolchain


def convert(model: str | Path | None = None, *, target: str = "onnxruntime", precision: str | None = None,
            calib: str | Path | None = None, calib_images: int | None = None, imgsz: int | None = None,
            out: str | Path | None = None, head: str | None = None, names: str | None = None,
            split: bool = True, trust_model: bool = False, fidelity: bool = True, platform: str | None = None,
            verify_data: str | Path | None = None, options: dict[str, Any] | None = None, log=print,
            max_drop: float | None = None, data: str | Path | None = None) -> Bundle:
    """Convert ``model`` (default: the bundled reference model) into a bundle for ``target``.

    ``max_drop``: search for the cheapest INT8 model whose label-free estimated mask mAP50-95 drop
    is within it (convert/accuracy.py); ``data``: a labeled dataset to measure the real drop too."""
    profile = load_profile(target)
    precision = precision or profile.default_precision
    if precision not in profile.precisions:
        raise EdgesegError(f"target '{target}' does not offer {precision}; choose one of: {', '.join(profile.precisions)}")
    toolchain = get_toolchain(profile.toolchain)
    sets = (options or {}).get("set") or {}
    if sets:
        settable = sorted(k for k in profile.quantization if toolchain.settable)
        bad = [k for k in sets if k not in settable]
        if bad:
            raise EdgesegError(f"--option {bad[0]}: not an option of target '{target}'; "
                               + (f"options: {', '.join(settable)}" if settable else "it takes none"))
    # Absolute from here on: toolchains run in their own working folders and child processes, where
    # a path relative to the user's shell no longer points anywhere.
    model_path = Path(model).absolute() if model else DEFAULT_MODEL
    verify_data = Path(verify_data).absolute() if verify_data else None

    if max_drop is not None and precision != "int8":
        raise EdgesegError(f"--max-drop bounds what INT8 loses; it does not apply to {precision} (drop --max-drop)")
    if data is not None:  # a bad dataset fails now, not after minutes of conversion
        from ..data import load_dataset

        data = Path(data).absolute()
        load_dataset(data, split="val")
    # Read the images before minutes of toolchain work, so a bad set fails at once.
    n = calib_images or int(profile.quantization.get("calibration_images", DEFAULT_IMAGES))
    calib_path = Path(calib).absolute() if calib else DEFAULT_CALIB
    if precision == "int8" or calib:
        cset: CalibrationSet | None = CalibrationSet.from_path(calib_path, n)
        cset.check_readable()
    else:
        cset = CalibrationSet.from_path(DEFAULT_CALIB, n) if fidelity and DEFAULT_CALIB.is_dir() else None

    work = Path(tempfile.mkdtemp(prefix="edgeseg-convert-"))
    try:
        imported = import_model(model_path, head=head, names=names, imgsz=imgsz, trust_model=trust_model,
                                workdir=work)
        spec = dict(imported.head)
        outputs = imported.output_roles
        fp32 = imported.model
        do_split = split and spec["type"] == "yolo-seg" and bool(profile.quantization.get("split_outputs", True))
        if do_split:
            det, pro = outputs[0]["name"], outputs[1]["name"]
            fp32, outputs = split_yolo_seg(fp32, det, pro)
            spec["layout"] = "split"
            spec["strides"] = sorted({o["stride"] for o in outputs if o["role"] != "protos"})
        fp32_path = work / "fp32.onnx"
        onnx.save(fp32, str(fp32_path))

        tgt = f"{target}-{platform}" if platform else target
        out_dir = (Path(out) if out else default_bundle_dir(model_path, tgt, precision,
                                                             do_split or spec["type"] != "yolo-seg")).absolute()
        parent = next(a for a in out_dir.parents if a.exists())  # before minutes of work, not after
        if not parent.is_dir():
            raise EdgesegError(f"{parent}: is a file, and the bundle {out_dir} needs a folder there; "
                               "move the file or choose another --out")
        log(f"converting {model_path} -> {out_dir} ({target}, {precision}"
            f"{', outputs split' if do_split else ''})")
        opts = dict(options or {})
        opts.update(log=log, platform=platform)
        sets = opts.pop("set", None) or {}
        # toolchains that can only simulate while building (RKNN) need every image up front
        opts["simulate_images"] = list(cset.holdout if cset is not None and fidelity else [])
        if verify_data:
            from ..data import load_dataset

            opts["simulate_images"] += load_dataset(verify_data, split="val").images
        with atomic_bundle_dir(out_dir) as tmp:
            def attempt(folder: Path, extra: dict, prof=profile, tc=toolchain, prec=precision) -> tuple:
                """One conversion into ``folder``, manifest written (the search runs several)."""
                folder.mkdir(parents=True, exist_ok=True)
                job = ConvertJob(imported, fp32_path, outputs, prof, prec, cset if prec == "int8" else None,
                                 folder, {**opts, **extra, "set": {**sets, **(extra.get("set") or {})}})
                res = tc.convert(job)
                spec_ = {**spec, **res.head}
                h, w = imported.input_hw
                inp = {"name": imported.input_name, "height": h, "width": w, "layout": "nchw", "dtype": "float32",
                       "color": "rgb", "scale": 1 / 255, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0],
                       "letterbox": {"pad_value": 114, "center": True}}
                inp.update(res.input)
                quant = dict(res.quantization)
                if cset is not None and prec == "int8":
                    quant["calibration"] = cset.summary()
                manifest = Manifest(
                    target=prof.name, precision=prec, runtime=prof.runtime, model_files=res.model_files,
                    input=inp, head=spec_, names=imported.names, outputs=res.outputs,
                    source={"path": model_path.name, "sha256": imported.sha256, "format": imported.format,
                            "metadata": {k: v for k, v in imported.metadata.items() if k in ("version", "task", "imgsz", "stride")}},
                    profile=prof.as_dict(), quantization=quant, toolchain=res.toolchain,
                    fidelity={"created": datetime.now(timezone.utc).isoformat(timespec="seconds")},
                )
                write_manifest(folder, manifest)
                if res.log:
                    (folder / "toolchain.log").write_text(res.log)
                return res, manifest

            acc = None
            if (precision != "fp32" and cset is not None and cset.holdout and spec["type"] in ("yolo-seg", "semantic")
                    and (fidelity or max_drop is not None or data is not None)):
                from .accuracy import Accuracy

                acc = Accuracy(fp32_path, spec, outputs, imported, cset, work, toolchain, log)
            if max_drop is not None and acc is not None:
                res, manifest = acc.bounded(attempt, tmp, max_drop)
            else:
                res, manifest = attempt(tmp, {})
            if fidelity and cset is not None and cset.holdout:
                manifest.fidelity.update(_fidelity(tmp, res.reference_onnx or fp32_path, manifest, toolchain, cset))
                write_manifest(tmp, manifest)
            if acc is not None:
                manifest.quantization.update(acc.report(tmp, attempt, data))
                write_manifest(tmp, manifest)
        bundle = Bundle.load(out_dir)
        f = bundle.manifest.fidelity
        for line in acc.lines() if acc is not None else []:
            log(line)
        if "cosine" in f:
            log(f"fidelity on {f['images']} held-back images: cosine per role {f['cosine']}"
                + (f", pixel agreement {f['pixel_agreement']}" if "pixel_agreement" in f else "")
                + (f", detections kept {f.get('detections_kept')}, mask IoU {f.get('mean_mask_iou')}" if "matched" in f else ""))
        return bundle
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _fidelity(bundle_dir: Path, fp32_path: Path, manifest: Manifest, toolchain, cset: CalibrationSet) -> dict:
    import onnxruntime as ort

    from ..fidelity import compare
    from ..runtime.decode import make_decoder
    from ..runtime.preprocess import preprocess

    sess = ort.InferenceSession(str(fp32_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    iname = sess.get_inputs()[0].name
    hw = manifest.input_hw
    if toolchain.load_check and manifest.precision == "int8":  # before the fidelity run, so that it too gets a checked load
        from ..runtime.loadcheck import write_probe
        from ..runtime.preprocess import letterbox

        frame, _ = letterbox(read_image(cset.holdout[0]), hw)
        xf, _ = preprocess(frame, hw)
        write_probe(bundle_dir, frame, dict(zip(names, sess.run(None, {iname: xf}))), manifest)
    run_test = toolchain.host_runner(bundle_dir)
    if run_test is None:
        return {"note": "the converted model cannot run on this host; fidelity not measured"}
    # float reference outputs pass through; integer outputs are dequantized with the manifest's parameters
    dec = make_decoder(manifest.head, manifest.outputs, manifest.names, hw)
    layout, dtype = manifest.input.get("layout", "nchw"), manifest.input.get("dtype", "float32")

    def run_ref(x):
        xf, _ = x
        return dict(zip(names, sess.run(None, {iname: xf})))

    def prep(frame):
        xf, lb = preprocess(frame, hw)
        xt, _ = preprocess(frame, hw, layout, dtype)
        return (xf, xt), lb

    rep = compare((read_image(p) for p in cset.holdout), run_ref, lambda x: run_test(x[1]), prep, dec,
                  manifest.outputs, manifest.head.get("num_classes") if manifest.head.get("layout") == "concat" else None)
    rep["reference"] = "FP32 ONNX (outputs split as in this bundle) on ONNX Runtime"
    rep["edgeseg_version"] = __version__
    return rep
