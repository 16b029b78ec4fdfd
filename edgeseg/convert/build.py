"""``edgeseg convert``: import, split, calibrate, run the target's toolchain, write the bundle."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..bundle import Bundle, Manifest, atomic_bundle_dir, check_out, refuse_inputs, work_dir, write_manifest
from ..defaults import DEFAULT_CALIB, DEFAULT_MODEL, default_bundle_dir
from ..errors import EdgesegError
from ..heads import get_head
from ..profiles import Profile, load_profile
from ..runtime.preprocess import InputSpec, fit
from ..runtime.sources import read_image
from .calibration import DEFAULT_IMAGES, CalibrationSet
from .toolchains import ConvertJob, ConvertResult, Toolchain, get_toolchain, load_toolchain, resolve_options

if TYPE_CHECKING:
    from .importer import ImportedModel


def convert(model: str | Path | None = None, *, target: str = "onnxruntime", precision: str | None = None,
            calib: str | Path | None = None, calib_images: int | None = None,
            imgsz: int | tuple[int, int] | str | None = None, out: str | Path | None = None, head: str | None = None,
            names: str | None = None,
            split: bool = True, trust_model: bool = False, fidelity: bool = True, platform: str | None = None,
            verify_data: str | Path | None = None, options: Mapping[str, Any] | Iterable[str] | None = None,
            keep_float: Iterable[str] | None = None, mean: Sequence[float] | None = None,
            std: Sequence[float] | None = None, resize: str | None = None,
            log: Callable[[str], None] = print, force: bool = False, max_drop: float | None = None,
            data: str | Path | None = None, preprocessor: str | Path | None = None) -> Bundle:
    """Convert ``model`` (default: the bundled reference model) into a bundle for ``target``.

    An existing ``out`` is refused, or with ``force`` replaced when it is an edgeseg bundle.

    ``options``: the target toolchain's ``OPTIONS`` to change, as ``KEY=VALUE`` strings or a mapping
    (``edgeseg convert --target X --help-options`` lists them); ``keep_float``: node names left in float.
    ``mean``/``std``: the normalisation the model expects, in 0..255 pixel units (ImageNet:
    123.675,116.28,103.53 and 58.395,57.12,57.375); ``resize``: letterbox (default) or stretch.
    Each overrides what the model declares (ONNX metadata; transformers' ``preprocessor_config.json``
    beside the model or given as ``preprocessor``: convert/normalisation.py).
    ``max_drop``: search for the cheapest INT8 model whose label-free estimated mask mAP50-95 drop
    is within it (convert/accuracy.py); ``data``: a labeled dataset to measure the real drop too.
    """
    profile = load_profile(target)
    precision = precision or profile.default_precision
    if precision not in profile.precisions:
        raise EdgesegError(f"target '{target}' does not offer {precision}; "
                           f"choose one of: {', '.join(profile.precisions)}")
    settings = resolve_options(load_toolchain(profile.toolchain), profile, options or ())
    input_spec(profile, (32, 32), mean, std, resize)  # a wrong --mean/--std/--resize fails before any work
    toolchain = get_toolchain(profile.toolchain)
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

    if out:  # before any work; the default folder's name depends on the model, checked once imported
        refuse_inputs(out, [model_path, calib_path if calib else None, verify_data], "--out")
        check_out(Path(out).absolute(), force)
    work = work_dir("convert")
    # what vendor code running in this process puts in the temp folder (ONNX Runtime's quantizer makes
    # pre.quant.* folders) goes inside ours: removed with it, and by the next conversion after a kill -9
    (work / "tmp").mkdir()
    saved_tempdir, tempfile.tempdir = tempfile.tempdir, str(work / "tmp")
    try:
        onnx, import_model = _host_importer()
        imported = import_model(model_path, head=head, names=names, imgsz=imgsz, trust_model=trust_model,
                                workdir=work, preprocessor=Path(preprocessor).absolute() if preprocessor else None)
        spec = dict(imported.head)
        outputs = imported.output_roles
        fp32 = imported.model
        family = get_head(spec["type"])
        do_split = split and family.splittable(spec) and bool(profile.quantization.get("split_outputs", True))
        if do_split:
            fp32, outputs, changes = family.split(fp32, spec, outputs)
            spec.update(changes)
        fp32_path = work / "fp32.onnx"
        onnx.save(fp32, str(fp32_path))
        model_input, input_from = _model_input(profile, imported, mean, std, resize)

        tgt = f"{target}-{platform}" if platform else target
        out_dir = (Path(out) if out else default_bundle_dir(model_path, tgt, precision,
                                                             do_split or not family.splittable(spec))).absolute()
        check_out(out_dir, force)
        parent = next(a for a in out_dir.parents if a.exists())  # before minutes of work, not after
        if not parent.is_dir():
            raise EdgesegError(f"{parent}: is a file, and the bundle {out_dir} needs a folder there; "
                               "move the file or choose another --out")
        log(f"converting {model_path} -> {out_dir} ({target}, {precision}"
            f"{', outputs split' if do_split else ''})")
        line = _input_line(model_input, input_from, family.kind == "semantic")
        if line:
            log(line)
        # toolchains that can only simulate while building (RKNN) need every image up front
        simulate = list(cset.holdout if cset is not None and fidelity else [])
        if verify_data:
            from ..data import load_dataset

            simulate += load_dataset(verify_data, split="val").images
        with atomic_bundle_dir(out_dir, overwrite=force) as tmp:
            def attempt(folder: Path, extra: dict, prof: Profile = profile, tc: Toolchain = toolchain,
                        prec: str = precision) -> tuple[ConvertResult, Manifest]:
                """One conversion into ``folder``, manifest written (a --max-drop search runs several):
                ``extra["set"]`` overrides the toolchain's options, ``extra["keep_float"]`` adds nodes."""
                folder.mkdir(parents=True, exist_ok=True)
                sets = extra.get("set") or {}
                base = settings if tc is toolchain else resolve_options(tc, prof)
                job = ConvertJob(imported, fp32_path, outputs, prof, prec, cset if prec == "int8" else None,
                                 folder, input=model_input,
                                 settings={**base, **{k: v for k, v in resolve_options(tc, prof, sets).items()
                                                      if k in sets}},
                                 keep_float=[*(keep_float or []), *(extra.get("keep_float") or [])],
                                 platform=platform, simulate_images=simulate, log=log)
                log(f"{prof.toolchain}: building the {prec} model"
                    + (f", calibrating on {len(cset.images)} images" if prec == "int8" and cset is not None else ""))
                res = tc.convert(job)
                inp = {"name": imported.input_name,
                       **model_input.as_(prof.input.get("layout"), prof.input.get("dtype")).to_dict()}
                inp.update(res.input)
                if input_from:
                    inp["normalisation_from"] = dict(input_from)
                quant = dict(res.quantization)
                if cset is not None and prec == "int8":
                    quant["calibration"] = cset.summary()
                manifest = Manifest(
                    target=prof.name, precision=prec, runtime=prof.runtime, model_files=res.model_files,
                    input=inp, head={**spec, **res.head}, names=imported.names, outputs=res.outputs,
                    source={"path": model_path.name, "sha256": imported.sha256, "format": imported.format,
                            "metadata": {k: v for k, v in imported.metadata.items()
                                         if k in ("version", "task", "imgsz", "stride", "weights")}},
                    profile=prof.as_dict(), quantization=quant, toolchain=res.toolchain,
                    fidelity={"created": datetime.now(timezone.utc).isoformat(timespec="seconds")},
                )
                write_manifest(folder, manifest)
                if res.log:
                    (folder / "toolchain.log").write_text(res.log)
                return res, manifest

            acc = None
            if (precision != "fp32" and cset is not None and cset.holdout
                    and (fidelity or max_drop is not None or data is not None)):
                from .accuracy import Accuracy

                acc = Accuracy(fp32_path, spec, outputs, imported, cset, work, toolchain, log, model_input,
                               target=profile.name)
                simulate += acc.simulated_views(work / "views")  # the estimate's views, for a simulator
            if max_drop is not None and acc is not None:
                res, manifest = acc.bounded(attempt, tmp, max_drop, data=data)
            else:
                res, manifest = attempt(tmp, {})
            spec.update(res.head)
            if fidelity and cset is not None and cset.holdout:
                log(f"measuring fidelity to FP32 on {len(cset.holdout)} held-back images")
                manifest.fidelity.update(_fidelity(tmp, res.reference_onnx or fp32_path, manifest, toolchain, cset,
                                                   model_input))
                problem = family.dud(manifest.fidelity)
                if problem:
                    # kept (a --no-split bundle is how one sees what splitting buys) but never silent:
                    # the manifest says so, and so do convert, run and eval
                    manifest.fidelity["unusable"] = problem
                    log(f"warning: {out_dir}: this bundle does not work: {problem}"
                        + ("; convert without --no-split" if not do_split and family.splittable(spec) else ""))
                write_manifest(tmp, manifest)
            if acc is not None:
                manifest.quantization.update(acc.report(tmp, attempt, data))
                write_manifest(tmp, manifest)
        bundle = Bundle.load(out_dir)
        f = bundle.manifest.fidelity
        for line in acc.lines() if acc is not None else []:
            log(line)
        if "cosine" in f:
            from ..fidelity_verdict import verdict

            log(f"fidelity on {f['images']} held-back images: {verdict(f, precision)} (cosine per role "
                + ", ".join(f"{k} {v}" for k, v in f["cosine"].items()) + ")")
        return bundle
    finally:
        tempfile.tempdir = saved_tempdir
        shutil.rmtree(work, ignore_errors=True)


def _host_importer():
    """onnx and the importer, loaded once a request has passed the checks that need neither: onnx
    takes about a CPU second to import, so a refused --option, --out or --target answers at once."""
    try:
        import onnx

        from .importer import import_model
    except ImportError as e:
        from ..errors import ToolchainMissing
        from ..install import pip_extra

        raise ToolchainMissing(f"convert runs on the host and needs {e.name}: {pip_extra('host')}") from None
    return onnx, import_model


def _model_input(profile: Profile, imported: ImportedModel, mean: Sequence[float] | None, std: Sequence[float] | None,
                 resize: str | None) -> tuple[InputSpec, dict[str, str]]:
    """The FP32 model's input: what the model declares, each field overridden by its flag; and
    where each field that is not the profile's default came from."""
    declared, said = imported.normalisation["fields"], imported.normalisation["from"]
    flags = {"mean": mean, "std": std, "resize": resize}
    chosen = {k: flags.get(k) if flags.get(k) is not None else declared.get(k) for k in ("mean", "std", "resize")}
    sources = {k: (f"--{k}" if flags.get(k) is not None else said[k])
               for k in ("mean", "std", "resize", "color") if flags.get(k) is not None or k in declared}
    what = {k: v for k, v in sources.items() if not v.startswith("--")}
    where = " and ".join(sorted(set(what.values()))) or "the flags"
    return input_spec(profile, imported.input_hw, chosen["mean"], chosen["std"], chosen["resize"],
                      color=declared.get("color"), source=where if what else None), sources


def _input_line(spec: InputSpec, sources: dict[str, str], semantic: bool) -> str | None:
    """What the convert output says about the input normalisation: where it came from, or, for a
    semantic model that declares none, that ImageNet-trained models need --mean/--std."""
    px = 1 / spec.scale
    desc = (f"mean {','.join(f'{v * px:g}' for v in spec.mean)} std {','.join(f'{v * px:g}' for v in spec.std)}"
            f" (0..255 pixel units, {spec.color.upper()}), {spec.resize}")
    if sources:
        by: dict[str, list[str]] = {}
        for k, v in sources.items():
            by.setdefault(v, []).append(k)
        return f"input normalisation: {desc}; " + "; ".join(f"{'/'.join(ks)} from {v}" for v, ks in by.items())
    if semantic:
        return (f"input normalisation: {desc}: the model declares none; a torchvision or transformers model "
                "trained on ImageNet statistics needs --mean 123.675,116.28,103.53 --std 58.395,57.12,57.375 "
                "(or its preprocessor_config.json beside it)")
    return None


def input_spec(profile: Profile, hw: tuple[int, int], mean: Sequence[float] | None = None,
               std: Sequence[float] | None = None, resize: str | None = None, color: str | None = None,
               source: str | None = None) -> InputSpec:
    """What the FP32 model takes: its size, the profile's ``[input]`` (color, scale, mean, std in
    scaled units, resize, pad_value), then ``mean``/``std`` in 0..255 pixel units, ``resize`` and
    ``color``. ``source`` names where the values came from when not from the flags (for errors)."""
    p = profile.input
    kw: dict[str, Any] = {k: p[k] for k in ("color", "scale", "resize", "pad_value") if k in p}
    kw.update({k: tuple(float(v) for v in p[k]) for k in ("mean", "std") if k in p})
    scale = float(kw.get("scale", 1 / 255))
    for flag, values in (("mean", mean), ("std", std)):
        if values is not None:
            vals = [float(v) for v in values]
            if len(vals) == 1:
                vals *= 3
            if len(vals) != 3 or (flag == "std" and any(v <= 0 for v in vals)) or any(not 0 <= v <= 255 for v in vals):
                above = ", above 0" if flag == "std" else ""
                said = f"{source}: {flag}" if source else f"--{flag}"
                raise EdgesegError(f"{said} {','.join(f'{v:g}' for v in values)}: expected 1 or 3 values in "
                                   f"0..255 pixel units{above}, e.g. --mean 123.675,116.28,103.53 "
                                   "--std 58.395,57.12,57.375 (ImageNet)")
            kw[flag] = tuple(v * scale for v in vals)
    if resize is not None:
        kw["resize"] = resize
    if color is not None:
        kw["color"] = color
    try:
        return InputSpec(hw[0], hw[1], "nchw", "float32", **kw)
    except (TypeError, ValueError) as e:
        raise EdgesegError(f"target '{profile.name}': {e}; fix --resize or the profile's [input]") from None


def _fidelity(bundle_dir: Path, fp32_path: Path, manifest: Manifest, toolchain, cset: CalibrationSet,
              model_input: InputSpec) -> dict:
    import onnxruntime as ort

    from ..fidelity import compare
    from ..runtime.decode import make_decoder
    from ..runtime.preprocess import preprocess

    sess = ort.InferenceSession(str(fp32_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    iname = sess.get_inputs()[0].name
    hw = manifest.input_hw
    target_input = InputSpec.from_dict(manifest.input)
    # before the fidelity run, so that it too gets a checked load
    if toolchain.load_check and manifest.precision == "int8":
        from ..runtime.loadcheck import write_probe

        frame, _ = fit(read_image(cset.holdout[0]), model_input)
        xf, _ = preprocess(frame, model_input)
        write_probe(bundle_dir, frame, dict(zip(names, sess.run(None, {iname: xf}))), manifest)
    run_test = toolchain.host_runner(bundle_dir)
    if run_test is None:
        return {"note": "the converted model cannot run on this host; fidelity not measured"}
    # float reference outputs pass through; integer outputs are dequantized with the manifest's parameters
    dec = make_decoder(manifest.head, manifest.outputs, manifest.names, hw)

    def run_ref(x):
        xf, _ = x
        return dict(zip(names, sess.run(None, {iname: xf})))

    def prep(frame):
        xf, lb = preprocess(frame, model_input)
        xt, _ = preprocess(frame, target_input)
        return (xf, xt), lb

    rep = compare((read_image(p) for p in cset.holdout), run_ref, lambda x: run_test(x[1]), prep, dec,
                  manifest.outputs, get_head(manifest.head["type"]).concat_classes(manifest.head))
    rep["reference"] = "FP32 ONNX (outputs split as in this bundle) on ONNX Runtime"
    rep["edgeseg_version"] = __version__
    return rep
