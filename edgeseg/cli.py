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

from .defaults import DEFAULT_TARGET
from .errors import EdgesegError, ToolchainMissing

app = typer.Typer(add_completion=False, context_settings={"help_option_names": ["-h", "--help"]},
                  help="Take a trained segmentation model to an edge device and run it on a live camera.")


def _print_version(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"edgeseg {__version__}")
        raise typer.Exit()


@app.callback()
def _global(version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                         help="Print the version and exit.")) -> None:
    """Take a trained segmentation model to an edge device and run it on a live camera."""


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


# files `convert` takes: given where a bundle folder is expected, the user skipped a step
MODEL_SUFFIXES = {".onnx", ".pt", ".pth", ".torchscript"}


def _load_model(bundle: Optional[Path], conf: float, iou: float, classes: Optional[list[str]] = None,
                threads: Optional[int] = None, runtime_options: Optional[list[str]] = None, max_det: int = 300):
    from . import load
    from .bundle import Bundle
    from .runtime.backends import parse_options

    if bundle is not None and bundle.is_file() and bundle.suffix.lower() in MODEL_SUFFIXES:
        raise EdgesegError(f"{bundle}: this is a model, not a bundle; convert it first with "
                           f"`edgeseg convert {bundle} --target {DEFAULT_TARGET}`, then pass the folder it prints")
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


def _floats(flag: str, text: Optional[str]) -> Optional[list[float]]:
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise EdgesegError(f"{flag} {text}: expected numbers separated by commas, "
                           f"e.g. {flag} 123.675,116.28,103.53") from None


@app.command()
@friendly
def convert(
    model: Optional[Path] = typer.Argument(
        None, help="Model file (.onnx, Ultralytics .pt, TorchScript); default: the bundled reference model."),
    target: str = typer.Option(DEFAULT_TARGET, "--target", "-t", help="Target profile name (see `edgeseg doctor`)."),
    int8: bool = typer.Option(False, "--int8", help="INT8, calibrated (the target's default)."),
    fp16: bool = typer.Option(False, "--fp16", help="FP16 weights, no calibration (about half the FP32 size)."),
    fp32: bool = typer.Option(False, "--fp32", help="FP32, as trained: the reference for --against and fidelity."),
    precision: Optional[str] = typer.Option(
        None, "--precision", help="Any precision the target offers, e.g. int8w (MNN weight-only)."),
    calib: Optional[str] = typer.Option(
        None, "--calib", help="Folder/glob of images, a video of the deployment scenes, or an Ultralytics dataset "
                              ".yaml."),
    calib_images: Optional[int] = typer.Option(
        None, "--calib-images", min=1, help="How many calibration images to sample."),
    imgsz: Optional[str] = typer.Option(None, "--imgsz", callback=_imgsz_value,
                                        help="Input size N or H,W, for models with a dynamic input."),
    out: Optional[Path] = typer.Option(
        None, "--out", "-o", help="Bundle folder (default bundles/<model>_<target>_<precision>)."),
    head: Optional[str] = typer.Option(None, "--head", help="yolo-seg, yolo26-seg or semantic (default: detected)."),
    names: Optional[str] = typer.Option(None, "--names", help="Class names: a,b,c or a .txt file."),
    no_split: bool = typer.Option(
        False, "--no-split", help="Keep Ultralytics' concatenated output (for comparison: INT8 then detects nothing)."),
    trust_model: bool = typer.Option(
        False, "--trust-model", help="Allow loading a pickled .pt checkpoint or a TorchScript model (both run code "
                                     "from the file; ONNX never does)."),
    keep_float: Optional[list[str]] = typer.Option(None, "--keep-float", help="Node names to leave in float (INT8)."),
    platform: Optional[str] = typer.Option(
        None, "--platform", help="SoC for targets with several (rknn: rk3588, rk3576, ...)."),
    verify_data: Optional[Path] = typer.Option(
        None, "--verify-data", help="Dataset .yaml to simulate at build time (rknn, imx500), for `edgeseg eval`."),
    option: Optional[list[str]] = typer.Option(
        None, "--option", help="KEY=VALUE for the target's toolchain, e.g. imx500: mixed_precision=true; "
                               "repeatable (--help-options lists them)."),
    mean: Optional[str] = typer.Option(
        None, "--mean", help="Per-channel mean the model subtracts, in 0..255 pixel units (RGB order), "
                             "e.g. ImageNet 123.675,116.28,103.53; recorded in the bundle."),
    std: Optional[str] = typer.Option(
        None, "--std", help="Per-channel std the model divides by, in 0..255 pixel units, "
                            "e.g. ImageNet 58.395,57.12,57.375."),
    resize: Optional[str] = typer.Option(
        None, "--resize", help="letterbox (keep the aspect ratio, pad; default) or stretch (to the input size)."),
    preprocessor: Optional[Path] = typer.Option(
        None, "--preprocessor", help="transformers' preprocessor_config.json of the model (mean, std, resize); "
                                     "default: the one beside the model file. --mean/--std/--resize override it."),
    help_options: bool = typer.Option(
        False, "--help-options", help="List the --option keys of --target, with types and defaults, and exit."),
    force: bool = typer.Option(
        False, "--force", help="Replace an existing --out bundle (only an edgeseg bundle; atomically)."),
    max_drop: Optional[float] = typer.Option(
        None, "--max-drop", min=0.0, max=1.0, help="INT8: search for the cheapest model within this mask mAP50-95 "
                                                   "(mIoU) of FP32, estimated without labels, e.g. 0.005."),
    data: Optional[Path] = typer.Option(
        None, "--data", help="Labeled dataset .yaml: the report puts the measured drop beside the label-free "
                             "estimate."),
) -> None:
    """Convert a trained model into a deployment bundle for one target."""
    if help_options:
        from .convert.toolchains import describe_toolchain_options, load_toolchain
        from .profiles import load_profile

        prof = load_profile(target)
        for line in describe_toolchain_options(load_toolchain(prof.toolchain), prof):
            typer.echo(line)
        return
    try:
        from .convert import convert as do_convert
    except ImportError as e:
        from .install import pip_extra

        raise ToolchainMissing(f"convert runs on the host and needs {e.name}: {pip_extra('host')}") from None

    chosen = ([p for p, on in (("int8", int8), ("fp16", fp16), ("fp32", fp32)) if on]
              + ([precision] if precision else []))
    if len(chosen) > 1:
        raise EdgesegError("pass only one of --int8, --fp16, --fp32, --precision")
    b = do_convert(model, target=target, precision=chosen[0] if chosen else None, calib=calib,
                   calib_images=calib_images, imgsz=imgsz, out=out, head=head, names=names, split=not no_split,
                   trust_model=trust_model, platform=platform, verify_data=verify_data,
                   options=option or [], keep_float=keep_float, mean=_floats("--mean", mean),
                   std=_floats("--std", std), resize=resize,
                   max_drop=max_drop, data=data, log=lambda m: typer.echo(m, err=True), force=force,
                   preprocessor=preprocessor)
    typer.echo(str(b.path))


@app.command()
@friendly
def run(
    bundle: Optional[Path] = typer.Argument(
        None, help="Bundle folder; default: the reference ONNX Runtime INT8 bundle."),
    camera: Optional[str] = typer.Option(None, "--camera", help="Camera index (0, 1, ...) or 'pi' for picamera2."),
    source: Optional[str] = typer.Option(
        None, "--source", "-s", help="Video file, image folder or glob, or rtsp:// / http:// URL."),
    show: bool = typer.Option(False, "--show", help="Show a window with the results."),
    save: Optional[Path] = typer.Option(
        None, "--save", help="Annotated video (.mp4/.avi), a folder of images, or an image file for a one-image "
                             "source."),
    json_out: Optional[Path] = typer.Option(
        None, "--json", help="JSON lines, one per frame, masks as COCO RLE; - for stdout."),
    serve: Optional[str] = typer.Option(
        None, "--serve", help="Stream the annotated frames to a browser (MJPEG over HTTP): PORT (this machine only) or "
                              "HOST:PORT, e.g. 0.0.0.0:8080 for the network (then with a token, printed in the URL)."),
    serve_token: Optional[str] = typer.Option(
        None, "--serve-token", envvar="EDGESEG_SERVE_TOKEN", show_envvar=False, help="The token --serve viewers must "
                                                                                     "present (default beyond "
                                                                                     "loopback: a new one each run; "
                                                                                     "env EDGESEG_SERVE_TOKEN)."),
    realtime: Optional[bool] = typer.Option(
        None, "--realtime/--no-realtime", help="Deliver a video file at its frame rate, as a camera would (default "
                                               "with --serve)."),
    conf: float = typer.Option(0.25, "--conf", min=0.0, max=1.0, help="Confidence threshold."),
    iou: float = typer.Option(0.7, "--iou", min=0.0, max=1.0, help="NMS IoU threshold."),
    max_det: int = _max_det_flag(),
    classes: Optional[list[str]] = typer.Option(
        None, "--classes", help="Keep only these classes: ids or names, comma-separated or repeated (--classes "
                                "circle,star)."),
    max_frames: Optional[int] = typer.Option(None, "--max-frames", min=1, help="Stop after this many frames."),
    width: Optional[int] = typer.Option(None, "--width", help="Camera capture width."),
    height: Optional[int] = typer.Option(None, "--height", help="Camera capture height."),
    fps: Optional[float] = typer.Option(None, "--fps", help="Camera frame rate."),
    fourcc: Optional[str] = typer.Option(
        None, "--fourcc", help="USB camera pixel format, e.g. MJPG (HD at full frame rate over USB 2) or YUYV."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="Runtime threads (default: the runtime's)."),
    overlay_fps: bool = typer.Option(False, "--overlay-fps", help="Write the FPS figure on saved frames too "
                                     "(it is always on --show and --serve)."),
    runtime_option: Optional[list[str]] = _runtime_option_flag(),
    # tracking and publishing (edgeseg/runtime/track.py, events.py, mqtt.py)
    track: bool = typer.Option(
        False, "--track", help="Give each object a track_id kept across frames (ByteTrack); events and counts in the "
                               "record."),
    line: Optional[str] = typer.Option(
        None, "--line", help="Count crossings of this line: x1,y1,x2,y2 (pixels, or 0..1 of the frame); implies "
                             "--track."),
    zone: Optional[str] = typer.Option(
        None, "--zone", help="Count entries into this polygon: x,y,x,y,x,y,...; implies --track."),
    mqtt: Optional[str] = typer.Option(
        None, "--mqtt", help="Publish records and events: mqtt[s]://[user:pass@]host[:port]/topic (or "
                             "EDGESEG_MQTT_USERNAME/PASSWORD)."),
    mqtt_events_only: bool = typer.Option(
        False, "--mqtt-events-only", help="Publish only events and counts, not each frame's record; implies --track."),
    mqtt_ha: bool = typer.Option(
        False, "--mqtt-ha", help="Announce a sensor per class count to Home Assistant (MQTT discovery); implies "
                                 "--track."),
) -> None:
    """Stream frames through a bundle: camera, video, images or RTSP; show, save, serve to a browser or write JSON."""
    from .runtime.pipeline import run_pipeline
    from .runtime.sinks import JsonlSink, WindowSink, make_save_sink

    if (camera is None) == (source is None):
        raise EdgesegError("pass exactly one of --camera N (or --camera pi) and --source PATH_OR_URL")
    if realtime is None:
        realtime = bool(serve)
    if serve:
        from .runtime.mjpeg import parse_address

        parse_address(serve)  # a typo is reported before the model loads
    if line or zone or mqtt:
        from .runtime.track import check_run_options

        check_run_options(line, zone, mqtt)
    json_target: Path | TextIO | None = json_out
    if json_out is not None and str(json_out) == "-":
        # JSON lines on stdout for another program; everything else, including what native
        # libraries print to stdout (MNN does), goes to stderr so it cannot interleave
        sys.stdout.flush()
        json_target = os.fdopen(os.dup(1), "w", encoding="utf-8")
        os.dup2(2, 1)
    model = _load_model(bundle, conf, iou, classes, threads, runtime_option, max_det=max_det)
    spec = camera if camera is not None else source
    if camera is not None and camera != "pi" and not (camera.isascii() and camera.isdigit()):
        raise EdgesegError(f"--camera {camera}: expected a camera index (0, 1, ...) or 'pi'")

    def event(msg: str) -> None:
        typer.echo(f"\n{msg}", err=True)  # on its own line, past the live status line

    # the same function opens the frames of Model.stream: a camera that runs the network itself
    # (IMX500) for a camera spec, camera 0 is the Pi's camera when there is one, ...
    src = model.open_source(spec, width, height, fps, fourcc=fourcc, on_event=event)
    if realtime and not src.live and 0 < getattr(src, "fps", 0) <= 1000:  # a video file
        from .runtime.sources import Paced

        src = Paced(src, src.fps)
    _refuse_run_inputs(model, src, spec if camera is None else None, save,
                       json_target if json_target is json_out else None)
    sinks: list = []
    live_views: list = []  # the sinks that show the FPS figure on the picture
    tracking = None
    try:
        if track or line or zone or mqtt:
            from .runtime.track import run_extras

            tracking, extra = run_extras(model, src, track=track, line=line, zone=zone, mqtt=mqtt,
                                         events_only=mqtt_events_only, ha=mqtt_ha, on_event=event)
            sinks += extra
        if save:
            files = getattr(src, "files", None)
            sinks.append(make_save_sink(save, getattr(src, "fps", 30.0), len(files) if files is not None else None,
                                        on_event=event))
        if json_out:
            sinks.append(JsonlSink(json_target, src.name, on_event=event))
        if show:
            sinks.append(WindowSink())
            live_views.append(sinks[-1])
        if serve:
            from .runtime.mjpeg import MjpegSink

            # a run that ends by itself keeps the page up, showing "run ended", until Ctrl-C
            sinks.append(MjpegSink(serve, token=serve_token, linger=max_frames is None and not src.live))
            live_views.append(sinks[-1])
            typer.echo(f"streaming annotated frames at {sinks[-1].url} (/stream for the MJPEG itself)", err=True)
    except BaseException:
        for s in sinks:
            s.close()
        src.close()
        raise

    tty = sys.stderr.isatty()
    last = [0.0]
    files = getattr(src, "files", None)
    # nothing else reports what was found: one line per image, as Ultralytics prints them
    per_image = not sinks and files is not None

    def status(st, fr, res) -> None:
        import time as _t

        if per_image:
            typer.echo(f"image {fr.index + 1}/{len(files)} {Path(fr.name).name} {res.width}x{res.height}: "
                       f"{found(res)}, {sum(st.stage_ms[k][-1] for k in st.stage_ms):.1f} ms")
            return
        now = _t.monotonic()
        if tty and now - last[0] > 0.5:
            last[0] = now
            sys.stderr.write(f"\rframe {st.frames}  {st.fps:5.1f} FPS  pre {st.median('preprocess', 30):.1f} ms  "
                             f"inf {st.median('inference', 30):.1f} ms  dec {st.median('decode', 30):.1f} ms  "
                             f"dropped {st.dropped}  " + (f"objects {len(res.instances)}   " if res.label_map is None
                                                          else f"classes {len(res.classes_present())}   "))
            sys.stderr.flush()

    st = run_pipeline(model, src, sinks, annotate=bool(save or show or serve), max_frames=max_frames, on_frame=status,
                      fps_overlay=sinks if overlay_fps else live_views, tracking=tracking)
    if tty and not per_image:
        sys.stderr.write("\n")
    s = st.summary()
    typer.echo(f"{s['frames']} frames in {s['elapsed_s']} s: {s['fps']} FPS (pipelined), dropped {s['dropped']}; "
               f"median preprocess {s['preprocess_ms']} ms, inference {s['inference_ms']} ms, "
               f"decode {s['decode_ms']} ms"
               + (f"; {tracking.summary()}" if tracking else "") + (f"; saved {save}" if save else "")
               + (f"; wrote {'JSON lines to stdout' if json_target is not json_out else json_out}"
                  if json_out else ""))
    if st.error == "interrupted":
        raise typer.Exit(130)
    lingering = next((s for s in sinks if getattr(s, "linger", False)), None)
    if lingering is not None:
        typer.echo(f"run ended; the page stays up at {lingering.url} until Ctrl-C", err=True)
        lingering.wait_until_interrupted()


def _refuse_run_inputs(model, src, source: Optional[str], *outputs: Optional[Path]) -> None:
    """--save/--json onto the source image or video (or the bundle) would truncate it: refuse."""
    from .bundle import MANIFEST, refuse_inputs

    b = model.bundle
    inputs = [source, *(getattr(src, "files", None) or []), b.path / MANIFEST, *(b.path / f for f in b.manifest.files)]
    for out, flag in zip(outputs, ("--save", "--json")):
        if out is not None:
            try:
                refuse_inputs(out, inputs, flag)
            except BaseException:
                src.close()
                raise


def found(res) -> str:
    """What one frame holds, in words: "2 circle, 1 star" (semantic: each class's share of it)."""
    from collections import Counter

    if res.label_map is not None:
        total = res.label_map.size
        parts = [f"{res.names[k] if k < len(res.names) else k} {100 * (res.label_map == k).sum() / total:.0f}%"
                 for k in res.classes_present()]
        return ", ".join(parts) or "no classes"
    counts = Counter(i.class_name for i in res.instances)
    return ", ".join(f"{n} {name}" for name, n in counts.most_common()) or "no objects"


@app.command("eval")
@friendly
def eval_cmd(
    bundle: Optional[Path] = typer.Argument(None, help="Bundle folder; default: the reference INT8 bundle."),
    data: Optional[Path] = typer.Option(
        None, "--data", help="Ultralytics dataset .yaml (default: the bundled shapes set)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the metrics as a flat JSON object."),
    against: Optional[Path] = typer.Option(None, "--against", help="FP32 bundle to measure fidelity against."),
    report: Optional[Path] = typer.Option(
        None, "--report", help="Folder for a visual report (side-by-side, per-class AP)."),
    conf: float = typer.Option(
        0.001, "--conf", min=0.0, max=1.0, help="Confidence threshold (0.001 as Ultralytics' val)."),
    iou: float = typer.Option(0.7, "--iou", min=0.0, max=1.0, help="NMS IoU threshold."),
    max_det: int = _max_det_flag(),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Only the first N images."),
    runtime_option: Optional[list[str]] = _runtime_option_flag(),
) -> None:
    """Accuracy on a labeled dataset (mask/box mAP, or mIoU) and fidelity to the FP32 source."""
    from .defaults import DEFAULT_DATA
    from .eval import evaluate

    if json_out:
        from .bundle import refuse_inputs

        refuse_inputs(json_out, [data or DEFAULT_DATA, *(Path(b) / "edgeseg.json" for b in (bundle, against) if b)],
                      "--json")
    model = _load_model(bundle, conf, iou, runtime_options=runtime_option, max_det=max_det)
    ref = _load_model(against, conf, iou, max_det=max_det) if against else None
    r = evaluate(model, data or DEFAULT_DATA, against=ref, report=report, limit=limit, progress=True)
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
        from .fidelity_verdict import verdict

        figures = (f"pixel agreement {f['pixel_agreement']}" if "pixel_agreement" in f
                   else f"detections kept {f.get('detections_kept')}, mean mask IoU {f.get('mean_mask_iou')}")
        typer.echo(f"fidelity vs {f['reference']}: {verdict(f, model.manifest.precision)} ({figures})")


@app.command()
@friendly
def bench(
    bundle: Optional[Path] = typer.Argument(None, help="Bundle folder to time; or a model file (.onnx, .pt) to convert "
                                            "for every --targets x --precisions and compare; default: the reference "
                                            "INT8 bundle (with --targets: the reference model)."),
    source: Optional[str] = typer.Option(
        None, "--source", "-s", help="Images or video to time on (default: bundled scenes)."),
    frames: int = typer.Option(100, "--frames", min=1, help="Timed frames after warm-up."),
    json_out: Optional[Path] = typer.Option(
        None, "--json", help="Write the figures as JSON (a model: {\"rows\": [...]})."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="Inference threads (default: try 1, 2 and "
                                          "up to 4, report the best)."),
    runtime_option: Optional[list[str]] = _runtime_option_flag(),
    targets: Optional[str] = typer.Option(None, "--targets", help="With a model: comma-separated targets, or all "
                                          "(every target installed here; rknn/imx500 scored by their simulators)."),
    precisions: str = typer.Option("int8,fp16,fp32", "--precisions", help="With a model: precisions to convert "
                                   "(each target keeps those it offers)."),
    data: Optional[Path] = typer.Option(None, "--data", help="With a model: dataset .yaml to score on "
                                        "(default: the bundled shapes set)."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="With a model: PNG of accuracy against latency."),
    calib: Optional[str] = typer.Option(
        None, "--calib", help="As convert: calibration images, video or dataset .yaml."),
    calib_images: Optional[int] = typer.Option(None, "--calib-images", min=1, help="As convert."),
    imgsz: Optional[int] = typer.Option(None, "--imgsz", min=32, help="As convert."),
    option: Optional[list[str]] = typer.Option(None, "--option", help="As convert: KEY=VALUE for the targets' "
                                               "[quantization] (a target without KEY fails its rows)."),
    platform: Optional[str] = typer.Option(None, "--platform", help="As convert (rknn: rk3588, ...)."),
    trust_model: bool = typer.Option(False, "--trust-model", help="As convert: allow a pickled .pt checkpoint."),
    conf: float = typer.Option(0.25, "--conf", min=0.0, max=1.0, help="Confidence threshold while timing "
                               "(accuracy is scored at 0.001 as Ultralytics' val)."),
    iou: float = typer.Option(0.7, "--iou", min=0.0, max=1.0, help="NMS IoU threshold."),
    max_det: int = typer.Option(300, "--max-det", min=1, help="Most instances per frame."),
    track: bool = typer.Option(False, "--track", help="Track as run --track does: the tracker's ms per frame "
                               "(inside end_to_end_ms and the FPS), and with 20 synthetic moving objects."),
) -> None:
    """Per-stage latency (median, p90), pipelined FPS and peak memory of a bundle; given a model
    and --targets: every target and precision converted, scored and timed in one table."""
    if targets is not None or (bundle is not None and bundle.is_file()):
        if track:
            raise EdgesegError("--track times one bundle: edgeseg bench BUNDLE --track (without --targets)")
        return _bench_matrix(bundle, targets or "all", precisions, data, source, frames, json_out, threads, plot,
                             calib, calib_images, imgsz, option, platform, trust_model, conf, iou, max_det)
    from . import load
    from .bundle import Bundle
    from .defaults import DEFAULT_SCENES
    from .runtime.backends import parse_options
    from .runtime.bench import bench_threads, thread_counts

    b = Bundle.load(bundle or _default_bundle())
    opts = parse_options(b, runtime_option or [])
    threads = opts.pop("threads", threads)  # -r threads=N is --threads N

    def open_model(n: Optional[int]):  # closed by bench_threads after each thread count
        return load(b, conf=conf, iou=iou, max_det=max_det, **opts, **({"threads": n} if n else {}))

    r = bench_threads(open_model,
                      source or str(DEFAULT_SCENES), [threads] if threads else thread_counts(), frames=frames,
                      track=track)
    if json_out:
        json_out.write_text(json.dumps(r, indent=2))
    typer.echo(f"{r['target']} {r['precision']} on {r['backend']}, {r['frame_size'][0]}x{r['frame_size'][1]} frames")
    for k in ("preprocess_ms", "inference_ms", "decode_ms", "end_to_end_ms"):
        typer.echo(f"{k:15s} median {r[k]['median']:8.2f}  p90 {r[k]['p90']:8.2f}")
    typer.echo(f"pipeline_fps    {r['pipeline_fps']:.1f} ({r['pipeline_vs_inference_bound']:.2f}x of 1000/inference_ms)"
               f" with {r['best_threads'] or 'default'} inference threads")
    if len(r["threads"]) > 1:
        typer.echo("threads         " + "  ".join(f"{n}: {v['pipeline_fps']:.1f} FPS "
                                                  f"({v['pipeline_vs_inference_bound']:.2f}x)"
                                                  for n, v in r["threads"].items()))
    typer.echo(f"peak_rss_mb     {r['peak_rss_mb']:.0f}   instances max {r['instances_max']}")
    if track:
        s = r["track_synthetic"]
        typer.echo(f"track_ms        median {r['track_ms']['median']:8.2f}  p90 {r['track_ms']['p90']:8.2f}  "
                   f"(in end_to_end_ms); {s['instances']} synthetic moving objects with masks: median "
                   f"{s['median_ms']:.2f} ms (CPU {s['cpu_median_ms']:.2f}), p90 {s['p90_ms']:.2f}")


def _bench_matrix(model, targets, precisions, data, source, frames, json_out, threads, plot, calib, calib_images,
                  imgsz, option, platform, trust_model, conf, iou, max_det) -> None:
    from . import benchmark
    from .defaults import DEFAULT_DATA, DEFAULT_MODEL

    model = model or DEFAULT_MODEL
    if model.is_dir():
        raise EdgesegError(f"{model}: --targets takes a model file to convert, not a bundle folder; "
                           "drop --targets to time this bundle")
    if not model.is_file():
        raise EdgesegError(f"{model}: no such model file; pass a .onnx, .pt or TorchScript file")
    data = data or DEFAULT_DATA
    if not data.is_file():
        raise EdgesegError(f"{data}: no such dataset file; pass an Ultralytics dataset .yaml with --data")
    precs = [p.strip() for p in precisions.split(",") if p.strip()]
    if not precs:
        raise EdgesegError(f"--precisions {precisions!r}: name at least one, e.g. int8,fp16,fp32")
    for out in (json_out, plot):  # before minutes of conversions, not after
        if out is not None and out.is_dir():
            raise EdgesegError(f"{out}: is a folder; pass a file path")
    def log(m: str) -> None:
        typer.echo(m, err=True)

    names = benchmark.resolve_targets(targets, log)
    if calib is not None and not Path(calib).exists() and not any(c in calib for c in "*?["):
        raise EdgesegError(f"--calib {calib}: no such file or folder; pass images, a video or a dataset .yaml")
    conv = {"calib": calib, "calib_images": calib_images, "imgsz": imgsz, "platform": platform,
            "trust_model": trust_model, "options": list(option or [])}

    def write_json(rows: list[dict]) -> None:  # after every row: a long run stopped early keeps its rows
        if json_out:
            json_out.parent.mkdir(parents=True, exist_ok=True)
            tmp = json_out.with_name(json_out.name + ".part")
            tmp.write_text(json.dumps(benchmark.json_rows(rows), indent=2))
            os.replace(tmp, json_out)

    rows = benchmark.run_matrix(model, names, precs, data, convert_options=conv, conf=conf, iou=iou, max_det=max_det,
                                frames=frames, source=source, threads=[threads] if threads else None,
                                build_envs=targets != "all", log=log, on_row=write_json)
    typer.echo(benchmark.table(rows))
    if plot and benchmark.plot(rows, plot, f"{model.name}, {data.stem}"):
        typer.echo(f"plot: {plot}", err=True)


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
        tc = ("ok " + " ".join(f"{k} {v}" for k, v in t.get("toolchain_versions", {}).items())
              if t["toolchain_ok"] else f"MISSING: {t['toolchain_install']}")
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


def command():
    """The click command behind ``app``, its on/off flags shown without a value placeholder (typer
    labels them ``<bool>`` as if they took one)."""
    from typer.main import get_command

    def fix(cmd) -> None:
        for p in cmd.params:
            if getattr(p, "is_flag", False):
                p.metavar = ""
        get_help = cmd.get_help_option

        def get_help_option(ctx):
            opt = get_help(ctx)
            if opt is not None:
                opt.metavar = ""
            return opt

        cmd.get_help_option = get_help_option
        for sub in getattr(cmd, "commands", {}).values():
            fix(sub)

    cmd = get_command(app)
    fix(cmd)
    return cmd


def main(argv: Optional[list[str]] = None) -> None:
    """Entry point. Usage errors (bad flag, value out of range) become the same one line as
    edgeseg's own errors, instead of a framed box that a log or a script has to parse."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        code = command().main(args=argv or ["--help"], prog_name="edgeseg", standalone_mode=False)
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
