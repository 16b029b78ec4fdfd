"""The ``edgeseg`` command: thin wrappers that parse, call the library and print."""

from __future__ import annotations

import contextlib
import difflib
import errno
import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Optional, TextIO

import typer

from .errors import EdgesegError, ToolchainMissing

app = typer.Typer(add_completion=False,
                  help="Take a trained segmentation model to an edge device and run it on a live camera.")

from .defaults import DEFAULT_TARGET


def _fail(msg: str, code: int = 2) -> None:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(code)


# runtimes a command opened (an NPU context, a network in the camera), released when the command
# ends, however it ends
_closing = contextlib.ExitStack()


def friendly(fn: Callable) -> Callable:
    """Turn edgeseg's own errors into one line on stderr and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*a, **kw):
        with _closing:
            return _friendly_call(fn, *a, **kw)

    return wrapper


def _friendly_call(fn: Callable, *a, **kw):
    try:
        return fn(*a, **kw)
    except EdgesegError as e:
        _fail(str(e))
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            # a write through a file object carries no file name: name what the user asked to write
            where = e.filename or next((str(kw[k]) for k in ("out", "save", "json_out", "report") if kw.get(k)),
                                       "the output folder")
            _fail(f"{where}: no space left ({e.strerror}); free space and run again "
                  "(nothing was left half-written)")
        fixes = {errno.EISDIR: "pass a file path", errno.EACCES: "choose a path you may write",
                 errno.EPERM: "choose a path you may write", errno.ENOTDIR: "a part of the path is a file",
                 errno.EEXIST: "a folder is needed there; move the file or choose another path",
                 errno.EROFS: "choose a path on a writable file system"}
        if e.filename and e.errno in fixes:
            _fail(f"{e.filename}: {e.strerror}; {fixes[e.errno]}")
        raise


def _default_bundle() -> Path:
    from .defaults import DEFAULT_MODEL, default_bundle_dir

    p = default_bundle_dir(DEFAULT_MODEL, DEFAULT_TARGET, "int8")
    if not p.is_dir():
        raise EdgesegError(f"no BUNDLE given and the default bundle {p} does not exist; "
                           f"create it with `edgeseg convert --target {DEFAULT_TARGET}` or pass a bundle folder")
    return p


def _load_model(bundle: Optional[Path], conf: float, iou: float, classes: Optional[list[str]] = None,
                threads: Optional[int] = None, runtime_options: Optional[list[str]] = None, max_det: int = 300):
    from . import load
    from .bundle import Bundle
    from .runtime.backends import parse_options

    # the bundle is read first: which KEY=VALUE pairs are valid, and their types, depend on its runtime
    b = Bundle.load(bundle or _default_bundle())
    opts = parse_options(b, runtime_options or [])
    if threads is not None:
        opts["threads"] = threads
    model = load(b, conf=conf, iou=iou, classes=classes, max_det=max_det, **opts)
    _closing.callback(model.close)
    if b.manifest.fidelity.get("unusable"):
        typer.echo(f"warning: {b.path}: marked unusable at conversion: {b.manifest.fidelity['unusable']}", err=True)
    return model


def _imgsz_value(value: Optional[str]) -> Optional[str]:
    if value is not None:
        from .convert.importer import parse_imgsz

        try:
            parse_imgsz(value)
        except EdgesegError as e:
            raise typer.BadParameter(str(e).removeprefix(f"--imgsz {value}: ")) from None
    return value


def _max_det_flag():
    return typer.Option(300, "--max-det", min=1, max=10000,
                        help="At most this many instances per frame (Ultralytics' default 300).")


def _runtime_option_flag():
    return typer.Option(None, "--runtime-option", "-r",
                        help="KEY=VALUE for the bundle's runtime, repeatable: openvino device=GPU, "
                             "rknn core_mask=all, ncnn fp16=true (a wrong key lists the keys).")


@app.command()
@friendly
def convert(
    model: Optional[Path] = typer.Argument(None, help="Model file (.onnx, Ultralytics .pt, TorchScript); default: the bundled reference model."),
    target: str = typer.Option(DEFAULT_TARGET, "--target", "-t", help="Target profile name (see `edgeseg doctor`)."),
    int8: bool = typer.Option(False, "--int8", help="INT8, calibrated (the target's default)."),
    fp16: bool = typer.Option(False, "--fp16"),
    fp32: bool = typer.Option(False, "--fp32"),
    precision: Optional[str] = typer.Option(None, "--precision", help="Any precision the target offers, e.g. int8w (MNN weight-only)."),
    calib: Optional[str] = typer.Option(None, "--calib", help="Folder/glob of images, a video of the deployment scenes, or an Ultralytics dataset .yaml."),
    calib_images: Optional[int] = typer.Option(None, "--calib-images", min=1, help="How many calibration images to sample."),
    imgsz: Optional[str] = typer.Option(None, "--imgsz", callback=_imgsz_value,
                                        help="Input size N or H,W, for models with a dynamic input."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Bundle folder (default bundles/<model>_<target>_<precision>)."),
    head: Optional[str] = typer.Option(None, "--head", help="yolo-seg, yolo26-seg or semantic (default: detected)."),
    names: Optional[str] = typer.Option(None, "--names", help="Class names: a,b,c or a .txt file."),
    no_split: bool = typer.Option(False, "--no-split", help="Keep Ultralytics' concatenated output (for comparison: INT8 then detects nothing)."),
    trust_model: bool = typer.Option(False, "--trust-model", help="Allow loading a pickled .pt checkpoint (runs code from the file)."),
    keep_float: Optional[list[str]] = typer.Option(None, "--keep-float", help="Node names to leave in float (INT8)."),
    platform: Optional[str] = typer.Option(None, "--platform", help="SoC for targets with several (rknn: rk3588, rk3576, ...)."),
    verify_data: Optional[Path] = typer.Option(None, "--verify-data", help="Dataset .yaml to simulate at build time (rknn, imx500), for `edgeseg eval`."),
    option: Optional[list[str]] = typer.Option(None, "--option", help="KEY=VALUE overriding the target profile's [quantization], e.g. imx500: mixed_precision=true; repeatable."),
) -> None:
    """Convert a trained model into a deployment bundle for one target."""
    try:
        from .convert import convert as do_convert
    except ImportError as e:
        from .install import pip_extra

        raise ToolchainMissing(f"convert runs on the host and needs {e.name}: {pip_extra('host')}") from None

    sets = {}
    for kv in option or []:
        k, eq, v = kv.partition("=")
        if not eq or not k:
            raise EdgesegError(f"--option {kv}: expected KEY=VALUE, e.g. --option mixed_precision=true")
        sets[k.strip()] = v.strip()
    chosen = [p for p, on in (("int8", int8), ("fp16", fp16), ("fp32", fp32)) if on] + ([precision] if precision else [])
    if len(chosen) > 1:
        raise EdgesegError("pass only one of --int8, --fp16, --fp32, --precision")
    b = do_convert(model, target=target, precision=chosen[0] if chosen else None, calib=calib,
                   calib_images=calib_images, imgsz=imgsz, out=out, head=head, names=names, split=not no_split,
                   trust_model=trust_model, platform=platform, verify_data=verify_data,
                   options={"keep_float": keep_float or [], "set": sets},
                   log=lambda m: typer.echo(m, err=True))
    typer.echo(str(b.path))


@app.command()
@friendly
def run(
    bundle: Optional[Path] = typer.Argument(None, help="Bundle folder; default: the reference ONNX Runtime INT8 bundle."),
    camera: Optional[str] = typer.Option(None, "--camera", help="Camera index (0, 1, ...) or 'pi' for picamera2."),
    source: Optional[str] = typer.Option(None, "--source", "-s", help="Video file, image folder or glob, or rtsp:// / http:// URL."),
    show: bool = typer.Option(False, "--show", help="Show a window with the results."),
    save: Optional[Path] = typer.Option(None, "--save", help="Annotated video (.mp4/.avi), a folder of images, or an image file for a one-image source."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="JSON lines, one per frame, masks as COCO RLE; - for stdout."),
    serve: Optional[str] = typer.Option(None, "--serve", help="Stream the annotated frames to a browser (MJPEG over HTTP): PORT or HOST:PORT, e.g. 8080."),
    conf: float = typer.Option(0.25, "--conf", min=0.0, max=1.0, help="Confidence threshold."),
    iou: float = typer.Option(0.7, "--iou", min=0.0, max=1.0, help="NMS IoU threshold."),
    max_det: int = _max_det_flag(),
    classes: Optional[list[str]] = typer.Option(None, "--classes", help="Keep only these classes: ids or names, comma-separated or repeated (--classes circle,star)."),
    max_frames: Optional[int] = typer.Option(None, "--max-frames", min=1, help="Stop after this many frames."),
    width: Optional[int] = typer.Option(None, "--width", help="Camera capture width."),
    height: Optional[int] = typer.Option(None, "--height", help="Camera capture height."),
    fps: Optional[float] = typer.Option(None, "--fps", help="Camera frame rate."),
    fourcc: Optional[str] = typer.Option(None, "--fourcc", help="USB camera pixel format, e.g. MJPG (HD at full frame rate over USB 2) or YUYV."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="Runtime threads (default: the runtime's)."),
    runtime_option: Optional[list[str]] = _runtime_option_flag(),
) -> None:
    """Stream frames through a bundle: camera, video, images or RTSP; show, save, serve to a browser or write JSON."""
    from .runtime.pipeline import run_pipeline
    from .runtime.sinks import JsonlSink, WindowSink, make_save_sink
    from .runtime.sources import open_source

    if (camera is None) == (source is None):
        raise EdgesegError("pass exactly one of --camera N (or --camera pi) and --source PATH_OR_URL")
    if serve:
        from .runtime.mjpeg import parse_address

        parse_address(serve)  # a typo is reported before the model loads
    json_target: Path | TextIO | None = json_out
    if json_out is not None and str(json_out) == "-":
        # JSON lines on stdout for another program; everything else, including what native
        # libraries print to stdout (MNN does), goes to stderr so it cannot interleave
        sys.stdout.flush()
        json_target = os.fdopen(os.dup(1), "w", encoding="utf-8")
        os.dup2(2, 1)
    model = _load_model(bundle, conf, iou, classes, threads, runtime_option, max_det=max_det)
    spec = camera if camera is not None else source
    if camera is not None and camera != "pi" and not camera.isdigit():
        raise EdgesegError(f"--camera {camera}: expected a camera index (0, 1, ...) or 'pi'")

    def event(msg: str) -> None:
        typer.echo(f"\n{msg}", err=True)  # on its own line, past the live status line

    sensor_camera = getattr(model.backend, "camera", None)  # a camera that runs the network itself (IMX500)
    if sensor_camera is not None and camera is not None:
        src = sensor_camera(model.bundle, width, height, fps,
                            aspect=model.manifest.profile.get("runtime_options", {}).get("aspect", "preserve"),
                            on_event=event)
    else:
        src = open_source(spec, width, height, fps, **({"prefer_pi": True} if camera == "0" else {}),
                          **({"fourcc": fourcc} if fourcc and camera is not None else {}),
                          **({"on_event": event} if camera is not None or "://" in str(spec) else {}))
    sinks = []
    try:
        if save:
            files = getattr(src, "files", None)
            sinks.append(make_save_sink(save, getattr(src, "fps", 30.0), len(files) if files is not None else None,
                                        on_event=event))
        if json_out:
            sinks.append(JsonlSink(json_target, src.name, on_event=event))
        if show:
            sinks.append(WindowSink())
        if serve:
            from .runtime.mjpeg import MjpegSink

            sinks.append(MjpegSink(serve))
            typer.echo(f"streaming annotated frames at {sinks[-1].url} (/stream for the MJPEG itself)", err=True)
    except BaseException:
        for s in sinks:
            s.close()
        src.close()
        raise

    tty = sys.stderr.isatty()
    last = [0.0]

    def status(st, fr, res) -> None:
        import time as _t

        now = _t.monotonic()
        if tty and now - last[0] > 0.5:
            last[0] = now
            sys.stderr.write(f"\rframe {st.frames}  {st.fps:5.1f} FPS  pre {st.median('preprocess', 30):.1f} ms  "
                             f"inf {st.median('inference', 30):.1f} ms  dec {st.median('decode', 30):.1f} ms  "
                             f"dropped {st.dropped}  " + (f"objects {len(res.instances)}   " if res.label_map is None
                                                          else f"classes {len(res.classes_present())}   "))
            sys.stderr.flush()

    st = run_pipeline(model, src, sinks, annotate=bool(save or show or serve), max_frames=max_frames, on_frame=status)
    if tty:
        sys.stderr.write("\n")
    s = st.summary()
    typer.echo(f"{s['frames']} frames in {s['elapsed_s']} s: {s['fps']} FPS (pipelined), dropped {s['dropped']}; "
               f"median preprocess {s['preprocess_ms']} ms, inference {s['inference_ms']} ms, decode {s['decode_ms']} ms"
               + (f"; saved {save}" if save else "") + (f"; wrote {'JSON lines to stdout' if json_target is not json_out else json_out}" if json_out else ""))
    if st.error == "interrupted":
        raise typer.Exit(130)


@app.command("eval")
@friendly
def eval_cmd(
    bundle: Optional[Path] = typer.Argument(None, help="Bundle folder; default: the reference INT8 bundle."),
    data: Optional[Path] = typer.Option(None, "--data", help="Ultralytics dataset .yaml (default: the bundled shapes set)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the metrics as a flat JSON object."),
    against: Optional[Path] = typer.Option(None, "--against", help="FP32 bundle to measure fidelity against."),
    report: Optional[Path] = typer.Option(None, "--report", help="Folder for a visual report (side-by-side, per-class AP)."),
    conf: float = typer.Option(0.001, "--conf", min=0.0, max=1.0, help="Confidence threshold (0.001 as Ultralytics' val)."),
    iou: float = typer.Option(0.7, "--iou", min=0.0, max=1.0),
    max_det: int = _max_det_flag(),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Only the first N images."),
    runtime_option: Optional[list[str]] = _runtime_option_flag(),
) -> None:
    """Accuracy on a labeled dataset (mask/box mAP, or mIoU) and fidelity to the FP32 source."""
    from .defaults import DEFAULT_DATA
    from .eval import evaluate

    model = _load_model(bundle, conf, iou, runtime_options=runtime_option, max_det=max_det)
    ref = _load_model(against, conf, iou, max_det=max_det) if against else None
    r = evaluate(model, data or DEFAULT_DATA, against=ref, report=report, limit=limit, progress=sys.stderr.isatty())
    flat = {k: v for k, v in r.items() if not isinstance(v, dict)}
    if "fidelity" in r:
        flat.update({f"fidelity_{k}": v for k, v in r["fidelity"].items()})
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(flat, indent=2))
    keys = ["mask_map50_95", "mask_map50", "box_map50_95", "box_map50", "mask_map50_95_full_res", "miou"]
    typer.echo("  ".join(f"{k} {r[k]}" for k in keys if k in r) + f"  ({r['images']} images)")
    if "fidelity" in r:
        f = r["fidelity"]
        typer.echo(f"fidelity vs {f['reference']}: " + (f"pixel agreement {f['pixel_agreement']}" if "pixel_agreement" in f
                   else f"detections kept {f['detections_kept']}, mean mask IoU {f['mean_mask_iou']}"))


@app.command()
@friendly
def bench(
    bundle: Optional[Path] = typer.Argument(None, help="Bundle folder; default: the reference INT8 bundle."),
    source: Optional[str] = typer.Option(None, "--source", "-s", help="Images or video to time on (default: bundled scenes)."),
    frames: int = typer.Option(100, "--frames", min=1, help="Timed frames after warm-up."),
    json_out: Optional[Path] = typer.Option(None, "--json"),
    threads: Optional[int] = typer.Option(None, "--threads", min=1),
    runtime_option: Optional[list[str]] = _runtime_option_flag(),
) -> None:
    """Per-stage latency (median, p90) one frame at a time, pipelined FPS and peak memory."""
    from .defaults import DEFAULT_SCENES
    from .runtime.bench import bench as do_bench

    model = _load_model(bundle, 0.25, 0.7, None, threads, runtime_option)
    r = do_bench(model, source or str(DEFAULT_SCENES), frames=frames)
    if json_out:
        json_out.write_text(json.dumps(r, indent=2))
    typer.echo(f"{r['target']} {r['precision']} on {r['backend']}, {r['frame_size'][0]}x{r['frame_size'][1]} frames")
    for k in ("preprocess_ms", "inference_ms", "decode_ms", "end_to_end_ms"):
        typer.echo(f"{k:15s} median {r[k]['median']:8.2f}  p90 {r[k]['p90']:8.2f}")
    typer.echo(f"pipeline_fps    {r['pipeline_fps']:.1f} ({r['pipeline_vs_inference_bound']:.2f}x of 1000/inference_ms)")
    typer.echo(f"peak_rss_mb     {r['peak_rss_mb']:.0f}   instances max {r['instances_max']}")


@app.command()
@friendly
def doctor(json_out: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """What each target needs, what is installed, and the command that installs the rest."""
    from .doctor import report

    r = report()
    if json_out:
        typer.echo(json.dumps(r, indent=2))
        return
    typer.echo(f"python {r['python']} on {r['machine']}")
    typer.echo("core: " + ", ".join(f"{k} {v}" for k, v in r["core"].items() if v))
    typer.echo("host: " + ", ".join(f"{k} {v or 'missing'}" for k, v in r["host"].items()))
    for t in r["targets"]:
        tc = "ok " + " ".join(f"{k} {v}" for k, v in t.get("toolchain_versions", {}).items()) if t["toolchain_ok"] else f"MISSING: {t['toolchain_install']}"
        rt = f"ok {t.get('runtime_version') or ''}" if t["runtime_ok"] else f"MISSING: {t['runtime_install']}"
        typer.echo(f"{t['target']:12s} convert: {tc}\n{'':12s} run:     {rt}")
        for tool, state in t.get("optional_tools", {}).items():
            typer.echo(f"{'':12s} optional {tool}: {state}")


# click's exception base, reached through the one click class typer exports (newer typer
# releases vendor click, so `import click` would name a different class or nothing at all)
_ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def _usage_message(e: Exception) -> str:
    # click offers any option within difflib's loose 0.6 ratio, so "--bogus" got "--iou" as a
    # hint; a hint that points at an unrelated flag is worse than none
    near = getattr(e, "possibilities", None)
    name = getattr(e, "option_name", None)
    if near is None or not name:
        return e.format_message()
    near = difflib.get_close_matches(name, near, n=3, cutoff=0.8)
    return f"no such option: {name}" + (f" (did you mean {' or '.join(near)}?)" if near else "")


def main(argv: Optional[list[str]] = None) -> None:
    """Entry point. Usage errors (bad flag, value out of range) become the same one line as
    edgeseg's own errors, instead of a framed box that a log or a script has to parse."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        code = app(args=argv or ["--help"], prog_name="edgeseg", standalone_mode=False)
    except _ClickException as e:
        ctx = getattr(e, "ctx", None)
        commands = {c.name or c.callback.__name__ for c in app.registered_commands}
        # an option missing its value carries no context: the command is the first argument
        where = ctx.command_path if ctx else "edgeseg" + (f" {argv[0]}" if argv and argv[0] in commands else "")
        msg = " ".join(_usage_message(e).split()).rstrip(".")
        typer.echo(f"error: {msg[:1].lower() + msg[1:]}; see '{where} --help'", err=True)
        sys.exit(e.exit_code)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
