"""``edgeseg bench MODEL --targets ...``: one model through every target and precision, side by side.

Host side. Each (target, precision) is converted once into a cache folder keyed on the model's
digest and every conversion option (never into a user's bundle), then timed and scored in its own
child process (``python -m edgeseg.benchmark ROW.json``): peak RSS is that bundle's alone, runtimes
loaded for one row do not stay loaded for the next, and a runtime that crashes costs one row. Rows
that fail carry their one-line error; the run goes on.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import __version__
from .errors import EdgesegError

SIMULATED = ("rknn", "imx500")  # the vendor's simulator ran at conversion; scored on the host, never timed
ROW_TIMEOUT_S = 1800
ROW_KEYS = ("target", "precision", "size_mb", "mask_map50_95", "miou", "drop", "fidelity", "preprocess_ms",
            "inference_ms", "decode_ms", "end_to_end_ms", "pipeline_fps", "pipeline_vs_inference_bound",
            "best_threads", "peak_rss_mb", "timed", "bundle", "reused", "error")


def cache_dir() -> Path:
    from .runtime.replay import cache_root

    return cache_root() / "bench"


def _fingerprint(path: str | Path | None) -> Any:
    """What identifies a calibration or dataset source without reading every byte: its absolute path
    and the name, size and mtime of each file under it (a changed image changes the key)."""
    if path is None:
        return None
    p = Path(path).absolute()
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file())[:100_000]
        return [str(p), [(str(f.relative_to(p)), f.stat().st_size, int(f.stat().st_mtime)) for f in files]]
    if p.is_file():
        return [str(p), p.stat().st_size, int(p.stat().st_mtime)]
    return str(path)  # a glob: its text


def bundle_key(model_sha: str, target: str, precision: str, options: dict[str, Any]) -> str:
    key = json.dumps([__version__, model_sha, target, precision, options], sort_keys=True, default=str)
    return hashlib.sha256(key.encode()).hexdigest()


def resolve_targets(spec: str, log: Callable[[str], None]) -> list[str]:
    """``all`` = every target whose converter and runtime are installed here, plus the simulated
    ones whose vendor environment already exists (building one takes minutes: name it to build it)."""
    from .profiles import available_profiles

    known = sorted(available_profiles())
    if spec.strip() != "all":
        names = [t.strip() for t in spec.split(",") if t.strip()]
        bad = [t for t in names if t not in known]
        if bad:
            raise EdgesegError(f"--targets {bad[0]}: no such target; choose from: {', '.join(known)} or all")
        return names
    from .doctor import report

    out = []
    for row in report()["targets"]:
        t = row["target"]
        if t in SIMULATED:
            if row.get("toolchain_ok"):
                out.append(t)
        elif row.get("toolchain_ok") and row.get("runtime_ok"):
            out.append(t)
        else:
            how = row.get("toolchain_install") or row.get("runtime_install")
            log(f"bench: {t} left out of all: not installed here ({how})")
    return sorted(out, key=lambda t: (t != "onnxruntime", t in SIMULATED))  # the baseline first, simulators last


def _env_ready(target: str) -> bool:
    from .convert.toolchains import load_toolchain
    from .profiles import load_profile

    tc = load_toolchain(load_profile(target).toolchain)
    env = getattr(sys.modules[type(tc).__module__], "ENV", None)
    return env is None or env.ready()


def run_matrix(model: Path, targets: list[str], precisions: list[str], data: Path, *, convert_options: dict[str, Any],
               conf: float = 0.25, iou: float = 0.7, max_det: int = 300, frames: int = 100,
               source: str | None = None, threads: list[int] | None = None, build_envs: bool = True,
               log: Callable[[str], None] = print, on_row: Callable[[list[dict]], None] | None = None) -> list[dict]:
    """Convert, time and score ``model`` for every target x precision; one dict per row (see ROW_KEYS).
    ``on_row(rows so far)`` after each row, e.g. to keep a JSON file current through a long run."""
    from .bundle import Bundle, sha256_file
    from .convert import convert
    from .profiles import load_profile

    model = Path(model).absolute()
    if not model.is_file():
        raise EdgesegError(f"{model}: no such model file; pass a .onnx, .pt or TorchScript file, or a bundle folder")
    sha = sha256_file(model)
    pairs = []
    if "onnxruntime" not in targets or "fp32" not in precisions:
        # "drop" is against the source as exported, run in FP32 by ONNX Runtime: added when not asked for
        pairs.append(("onnxruntime", "fp32"))
    for t in targets:
        prof = load_profile(t)
        offered = [p for p in precisions if p in prof.precisions]
        skipped = [p for p in precisions if p not in prof.precisions]
        if skipped:
            log(f"bench: {t} offers {', '.join(prof.precisions)}; {', '.join(skipped)} left out")
        pairs += [(t, p) for p in offered if (t, p) not in pairs]
    rows: list[dict] = []
    for i, (target, precision) in enumerate(pairs, 1):
        head = f"[{i}/{len(pairs)}] {target} {precision}"
        row: dict[str, Any] = {"target": target, "precision": precision, "timed": target not in SIMULATED}
        t0 = time.perf_counter()
        try:
            if target in SIMULATED and not build_envs and not _env_ready(target):
                raise EdgesegError("not run here: its vendor environment is not built yet (several minutes on "
                                   "first use); name the target in --targets to build it")
            opts = {k: v for k, v in convert_options.items() if k not in ("calib", "verify_data", "log")}
            opts["calib"] = _fingerprint(convert_options.get("calib"))
            verify = data if target in SIMULATED else None  # their simulators only run the frames given at build
            opts["verify_data"] = _fingerprint(verify)
            out = cache_dir() / f"{model.stem}_{target}_{precision}_{bundle_key(sha, target, precision, opts)[:16]}"
            try:
                bundle = Bundle.load(out)
                row["reused"] = True
                log(f"{head}: reusing {out}")
            except EdgesegError:
                log(f"{head}: converting -> {out}")
                kw = {k: v for k, v in convert_options.items() if k != "log"}
                bundle = convert(model, target=target, precision=precision, out=out, verify_data=verify,
                                 log=lambda m: None, **kw)
                row["reused"] = False
            row["bundle"] = str(bundle.path)
            row["size_mb"] = round(sum(bundle.file(f).stat().st_size for f in bundle.manifest.model_files) / 2**20, 2)
            row["fidelity"] = _fidelity(bundle.manifest.fidelity)
            row.update(_run_row(bundle.path, data, conf=conf, iou=iou, max_det=max_det, frames=frames,
                                source=source, threads=threads, timed=row["timed"]))
        except Exception as e:  # noqa: BLE001 - a failing target is a row, not the end of the run
            row["error"] = _one_line(e)
        rows.append(row)
        log(f"{head}: " + (f"error: {row['error']}" if row.get("error") else _brief(row))
            + f" ({time.perf_counter() - t0:.0f} s)")
        _drops(rows)
        if on_row:
            on_row(rows)
    return rows


def _one_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return (msg[0] if msg else type(e).__name__)[:300]


def _fidelity(f: dict) -> float | None:
    """The worst per-output cosine against the FP32 source on the held-back images (at conversion)."""
    cos = f.get("cosine") or {}
    vals = [v for v in cos.values() if isinstance(v, (int, float))]
    return round(min(vals), 4) if vals else None


def _drops(rows: list[dict]) -> None:
    """Drop vs FP32: against ONNX Runtime FP32 (the source model as exported) when it is in the
    table, else against the same target's FP32."""
    metric = "mask_map50_95" if any("mask_map50_95" in r for r in rows) else "miou"
    ref = {r["target"]: r.get(metric) for r in rows if r["precision"] == "fp32" and r.get(metric) is not None}
    base = ref.get("onnxruntime")
    for r in rows:
        b = base if base is not None else ref.get(r["target"])
        if r.get(metric) is not None and b is not None:
            r["drop"] = round(r[metric] - b, 4)


def _brief(r: dict) -> str:
    acc = f"mask mAP50-95 {r['mask_map50_95']}" if "mask_map50_95" in r else f"mIoU {r.get('miou')}"
    if not r.get("timed"):
        return f"{acc}, scored by the vendor simulator's recorded outputs (not timed)"
    return (f"{acc}, end to end {r['end_to_end_ms']} ms, pipeline {r['pipeline_fps']} FPS "
            f"({r['best_threads']} thread{'s' if r['best_threads'] != 1 else ''}), peak RSS {r['peak_rss_mb']} MB")


def _run_row(bundle: Path, data: Path, **kw: Any) -> dict:
    """Time and score one bundle in a child process; its figures, or its error as one line."""
    with tempfile.TemporaryDirectory(prefix="edgeseg-bench-") as tmp:
        spec, result = Path(tmp) / "row.json", Path(tmp) / "result.json"
        spec.write_text(json.dumps({"bundle": str(bundle), "data": str(data), "result": str(result), **kw}))
        try:
            p = subprocess.run([sys.executable, "-m", "edgeseg.benchmark", str(spec)], capture_output=True, text=True,
                               check=False, timeout=ROW_TIMEOUT_S, env=os.environ.copy())
        except subprocess.TimeoutExpired:
            raise EdgesegError(f"timed out after {ROW_TIMEOUT_S} s") from None
        if result.is_file():
            return json.loads(result.read_text())
        tail = [ln for ln in (p.stderr or "").strip().splitlines() if ln.strip()]
        why = tail[-1] if tail else f"exit status {p.returncode}"
        if p.returncode < 0:
            why = f"the runtime crashed (signal {-p.returncode})" + (f": {why}" if tail else "")
        raise EdgesegError(why)


def _row_main(spec_file: str) -> None:
    """Child process: timing first (so that peak RSS is the runtime's, not the evaluation's), then
    the accuracy at conf 0.001 as Ultralytics' val."""
    from . import load
    from .defaults import DEFAULT_SCENES
    from .eval import evaluate
    from .runtime.bench import bench_threads, thread_counts

    s = json.loads(Path(spec_file).read_text())
    out: dict[str, Any] = {"load_average": round(os.getloadavg()[0], 2)}  # figures on a busy host mean less
    try:
        if s["timed"]:
            r = bench_threads(lambda n: load(s["bundle"], conf=s["conf"], iou=s["iou"], max_det=s["max_det"],
                                             **({"threads": n} if n else {})),
                              s.get("source") or str(DEFAULT_SCENES), s.get("threads") or thread_counts(),
                              frames=s["frames"])
            out.update({k: r[k]["median"] for k in ("preprocess_ms", "inference_ms", "decode_ms", "end_to_end_ms")})
            out.update({k: r[k] for k in ("pipeline_fps", "pipeline_vs_inference_bound", "best_threads", "threads",
                                          "overhead_vs_inference", "decode_cpu_ms",
                                          "peak_rss_mb", "backend", "decode_ms_max", "instances_max")})
            out["inference_ms_p90"] = r["inference_ms"]["p90"]
        best = out.get("best_threads")
        with load(s["bundle"], conf=0.001, iou=s["iou"], max_det=s["max_det"],
                  **({"threads": best} if best else {})) as model:
            if not s["timed"]:
                out["backend"] = model.backend.name
            m = evaluate(model, s["data"], progress=False)
        out.update({k: m[k] for k in ("mask_map50_95", "mask_map50", "box_map50_95", "miou") if k in m})
    except Exception as e:  # noqa: BLE001 - reported as the row's error
        out["error"] = _one_line(e)
    Path(s["result"]).write_text(json.dumps(out))


# ---- output ---------------------------------------------------------------------------------------

COLUMNS = [("target", "target", "{}"), ("precision", "prec", "{}"), ("size_mb", "MB", "{:.1f}"),
           ("accuracy", "mAP50-95", "{:.4f}"), ("drop", "drop", "{:+.4f}"), ("fidelity", "fidelity", "{:.3f}"),
           ("preprocess_ms", "pre ms", "{:.2f}"), ("inference_ms", "infer ms", "{:.2f}"),
           ("decode_ms", "decode ms", "{:.2f}"), ("end_to_end_ms", "e2e ms", "{:.2f}"),
           ("pipeline_fps", "FPS", "{:.1f}"), ("best_threads", "thr", "{}"), ("peak_rss_mb", "RSS MB", "{:.0f}"),
           ("backend", "ran on", "{}")]


def _cell(r: dict, key: str, fmt: str) -> str:
    if key == "accuracy":
        v = r.get("mask_map50_95", r.get("miou"))
    else:
        v = r.get(key)
    if v is None:
        timing = key.endswith("_ms") or key in ("pipeline_fps", "peak_rss_mb", "best_threads")
        return "sim" if timing and not r.get("timed") and not r.get("error") else "-"
    if key == "backend" and r.get("backend") == r.get("target"):
        return "-"  # the target's own runtime; named only when another ran (a CPU fallback, a replay)
    return fmt.format(v)


def table(rows: list[dict], markdown: bool = False) -> str:
    """One line per bundle; errors under the row they belong to."""
    metric = "mIoU" if rows and all("miou" in r for r in rows if "error" not in r) and any("miou" in r for r in rows) \
        else "mAP50-95"
    heads = [h if k != "accuracy" else metric for k, h, _ in COLUMNS]
    cells = [[_cell(r, k, f) for k, _, f in COLUMNS] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(heads) + " |", "|" + " --- |" * len(heads)]
        for r, c in zip(rows, cells):
            lines.append("| " + " | ".join(c) + " |")
            if r.get("error"):
                lines.append(f"| | | error: {r['error']} |" + " |" * (len(heads) - 3))
        return "\n".join(lines)
    w = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(heads)]
    lines = ["  ".join(h.rjust(n) if i > 1 else h.ljust(n) for i, (h, n) in enumerate(zip(heads, w)))]
    for r, c in zip(rows, cells):
        lines.append("  ".join(v.rjust(n) if i > 1 else v.ljust(n) for i, (v, n) in enumerate(zip(c, w))))
        if r.get("error"):
            lines.append(f"    error: {r['error']}")
    if any(not r.get("timed") for r in rows):
        lines.append("sim: scored with the outputs the vendor's simulator recorded at conversion; not timed here")
    return "\n".join(lines)


def json_rows(rows: list[dict]) -> dict:
    """``{"rows": [...]}``, times as medians; keys the issue fixed first, details after."""
    metric = "miou" if any("miou" in r for r in rows) and not any("mask_map50_95" in r for r in rows) \
        else "mask_map50_95"
    fixed = ("target", "precision", "size_mb", metric, "drop", "inference_ms", "decode_ms", "end_to_end_ms",
             "pipeline_fps", "peak_rss_mb", "error")
    return {"rows": [{k: r.get(k) for k in fixed} | {k: r[k] for k in ROW_KEYS if k in r and k not in fixed}
                     | {k: v for k, v in r.items() if k not in ROW_KEYS} for r in rows],
            "edgeseg_version": __version__, "host": {"machine": platform.machine(), "cpus": os.cpu_count(),
                                                     "load_average": round(os.getloadavg()[0], 2)}}


def plot(rows: list[dict], path: Path, title: str = "") -> bool:
    """Accuracy against end-to-end latency, one point per timed bundle, drawn with OpenCV (no
    plotting library on the host). False when no row has both figures."""
    import cv2
    import numpy as np

    pts = [r for r in rows if r.get("end_to_end_ms") is not None and r.get("mask_map50_95", r.get("miou")) is not None]
    if not pts:
        return False
    W, H, L, R, T, B = 960, 600, 90, 40, 60, 70
    img = np.full((H, W, 3), 255, np.uint8)
    xs = [r["end_to_end_ms"] for r in pts]
    ys = [r.get("mask_map50_95", r.get("miou")) for r in pts]
    # one slow runtime would squash the rest against the axis: log scale when latencies span >10x
    logx = max(xs) / max(min(xs), 1e-3) > 10
    if logx:
        xs = [math.log10(max(v, 1e-3)) for v in xs]
        x0, x1 = min(xs) - 0.1, max(xs) + 0.25
    else:
        x0, x1 = 0.0, max(xs) * 1.15
    y_lo, y_hi = min(ys), max(ys)
    pad = max(0.01, (y_hi - y_lo) * 0.15)
    y0, y1 = max(0.0, y_lo - pad), min(1.0, y_hi + pad) if y_hi + pad <= 1 else y_hi + pad

    def px(x: float, y: float) -> tuple[int, int]:
        return (int(L + (x - x0) / (x1 - x0) * (W - L - R)), int(H - B - (y - y0) / (y1 - y0) * (H - T - B)))

    font, grey = cv2.FONT_HERSHEY_SIMPLEX, (200, 200, 200)
    for k in range(6):
        xv, yv = x0 + (x1 - x0) * k / 5, y0 + (y1 - y0) * k / 5
        cv2.line(img, px(xv, y0), px(xv, y1), grey, 1)
        cv2.line(img, px(x0, yv), px(x1, yv), grey, 1)
        cv2.putText(img, f"{10 ** xv:.3g}" if logx else f"{xv:.0f}", (px(xv, y0)[0] - 10, H - B + 22), font, 0.5,
                    (0, 0, 0), 1, cv2.LINE_AA)
        cv2.putText(img, f"{yv:.3f}", (8, px(x0, yv)[1] + 5), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.rectangle(img, px(x0, y1), px(x1, y0), (0, 0, 0), 1)
    metric = "mask mAP50-95" if "mask_map50_95" in pts[0] else "mIoU"
    cv2.putText(img, "end-to-end ms per frame (one frame at a time)" + (", log scale" if logx else ""),
                (L + 180, H - 20), font, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, metric, (8, T - 20), font, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, title, (L + 120, 30), font, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    colours = [(180, 119, 31), (14, 127, 255), (44, 160, 44), (40, 39, 214), (189, 103, 148), (75, 86, 140),
               (194, 119, 227), (127, 127, 127)]
    targets = sorted({r["target"] for r in pts})
    marks = {"int8": cv2.MARKER_SQUARE, "fp16": cv2.MARKER_TRIANGLE_UP, "fp32": cv2.MARKER_DIAMOND}
    for r, x, y in zip(pts, xs, ys):
        c = colours[targets.index(r["target"]) % len(colours)]
        p = px(x, y)
        cv2.drawMarker(img, p, c, marks.get(r["precision"], cv2.MARKER_CROSS), 14, 2, cv2.LINE_AA)
        cv2.putText(img, f"{r['target']} {r['precision']}", (p[0] + 9, p[1] - 6), font, 0.45, c, 1, cv2.LINE_AA)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise EdgesegError(f"{path}: the plot could not be encoded as PNG")
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(buf.tobytes())
    os.replace(tmp, path)
    return True


if __name__ == "__main__":
    _row_main(sys.argv[1])
