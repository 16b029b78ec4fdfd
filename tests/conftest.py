from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "edgeseg" / "assets"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
VAL_IMAGES = ASSETS / "shapes" / "val" / "images"
DATA_YAML = ASSETS / "shapes" / "shapes.yaml"
MODEL = ASSETS / "shapes-yolo11n-seg.onnx"
# the reference YOLOv8n-seg: no attention block, the architecture the Edge TPU maps whole
MODEL_V8 = FIXTURES / "shapes-yolov8n-seg.onnx"
# the reference YOLO26n-seg, default export: one-to-many head, no DFL (reg_max 1)
MODEL_Y26 = FIXTURES / "shapes-yolo26n-seg.onnx"

# -- skips in CI ------------------------------------------------------------------------------------
# `make test` installs every toolchain and runtime the suite uses, so in CI (.ci/run sets
# EDGESEG_STRICT_SKIPS; CI=1 does the same) a skip means a test silently did not run: it fails,
# unless it is listed here with the reason it cannot run on any CI machine.
ALLOWED_SKIPS = [
    # (test id prefix, words of the skip message, why no CI machine can run it)
    ("tests/test_target_ncnn.py::", "not on PATH: no package provides them",
     "ncnn2table/ncnn2int8 are ncnn's C++ tools: no pip wheel or Debian package ships them (README, NCNN)"),
    ("tests/test_security.py::test_save_into_a_read_only_folder_is_an_error", "root writes into a read-only folder",
     "folder permissions do not bind root, as which CI runs; test_save_into_a_folder_that_cannot_be_written_is_an_error"
     " covers the same refusal as root"),
]


def _strict_skips() -> bool:
    v = os.environ.get("EDGESEG_STRICT_SKIPS") or os.environ.get("CI") or ""
    return v.lower() not in ("", "0", "false", "no")


def _skip_allowed(nodeid: str, longrepr) -> bool:
    said = str(longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else longrepr)
    return any(nodeid.startswith(prefix) and words in said for prefix, words, _ in ALLOWED_SKIPS)


def _fail_unexpected_skip(report) -> None:
    if (_strict_skips() and report.skipped and not hasattr(report, "wasxfail")
            and not _skip_allowed(report.nodeid, report.longrepr)):
        said = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = (f"skipped in CI, where every toolchain is installed ({said}); "
                           "install what it names in the Makefile, or add it to ALLOWED_SKIPS in tests/conftest.py "
                           "with the reason no CI machine can run it")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_unexpected_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield  # a module-level importorskip skips the whole file at collection
    _fail_unexpected_skip(outcome.get_result())



def cli(*args: str, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run the real command line in a subprocess, as a user would."""
    env = dict(os.environ, PYTHONIOENCODING="utf-8")
    return subprocess.run([sys.executable, "-m", "edgeseg", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=timeout)


def convert_without(modules: set[str], target: str, out: Path) -> subprocess.CompletedProcess:
    """``edgeseg convert --target TARGET`` in a process where importing ``modules`` fails, as on a
    machine without that toolchain."""
    code = ("import sys, importlib.abc\n"
            "class B(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, n, p, t=None):\n"
            f"        if n.split('.')[0] in {sorted(modules)!r}: raise ImportError(n)\n"
            "sys.meta_path.insert(0, B())\n"
            f"sys.argv = ['edgeseg', 'convert', '--target', {target!r}, '--out', sys.argv[1]]\n"
            "from edgeseg.cli import main; main()\n")
    return subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True)


def _convert(tmp_path_factory, name: str, model: Path = MODEL, **kw):
    from edgeseg.convert import convert

    out = tmp_path_factory.mktemp("bundles") / name
    return convert(model, target="onnxruntime", out=out, log=lambda m: None, **kw)


@pytest.fixture(scope="session")
def fp32_bundle(tmp_path_factory):
    return _convert(tmp_path_factory, "fp32", precision="fp32")


@pytest.fixture(scope="session")
def int8_bundle(tmp_path_factory):
    return _convert(tmp_path_factory, "int8", precision="int8")


@pytest.fixture(scope="session")
def int8_nosplit_bundle(tmp_path_factory):
    return _convert(tmp_path_factory, "int8_nosplit", precision="int8", split=False)


@pytest.fixture(scope="session")
def y26_fp32_bundle(tmp_path_factory):
    return _convert(tmp_path_factory, "y26_fp32", precision="fp32", model=MODEL_Y26)


@pytest.fixture(scope="session")
def y26_int8_bundle(tmp_path_factory):
    return _convert(tmp_path_factory, "y26_int8", precision="int8", model=MODEL_Y26)


@pytest.fixture(scope="session")
def fp32_model(fp32_bundle):
    from edgeseg.runtime.model import Model

    return Model.load(fp32_bundle.path)


def _signal_group(p: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(p.pid, sig)
    except ProcessLookupError:
        pass


def _no_core_dump() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # an aborted emulated process leaves no core file behind


@pytest.fixture(scope="session")
def aarch64(tmp_path_factory):
    """``aarch64("-m", "edgeseg", ...)`` runs Python on an emulated Raspberry Pi 5 (Debian Bookworm's
    arm64 Python 3.11 under qemu-user as a Cortex-A76, with the aarch64 wheels of the device
    install; scripts/aarch64-env.sh builds it and ``make test`` runs that). ARM runtimes take other
    kernels than x86 (int8 dot products, fp16 arithmetic), so a bundle can decode differently on
    a board; emulation checks the arithmetic and the code path, not the speed."""
    from edgeseg.runtime.replay import cache_root

    python = cache_root() / "aarch64" / "python"
    if not (shutil.which("qemu-aarch64") and python.is_file()):
        pytest.skip("no emulated aarch64 board: run scripts/aarch64-env.sh (make test does)")
    # a board has none of this machine's cached toolchain environments
    cache = tmp_path_factory.mktemp("aarch64-cache")

    def run(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
        env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), "PYTHONIOENCODING": "utf-8",
               "PYTHONPATH": str(ROOT), "EDGESEG_CACHE": str(cache), "PYTHONFAULTHANDLER": "1"}
        for attempt in (1, 2):
            # a session of its own: a forked child left behind holds the pipes, so the whole
            # group is signalled, never just the process started here
            p = subprocess.Popen([str(python), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 env=env, preexec_fn=_no_core_dump, start_new_session=True)
            try:
                out, err = p.communicate(timeout=timeout)
                return subprocess.CompletedProcess(p.args, p.returncode, out, err)
            except subprocess.TimeoutExpired:
                # under qemu-user a child forked by a multi-threaded guest (ctypes' find_library
                # running ldconfig; OpenVINO's telemetry sender, now refused) was found stuck a few
                # times in some twenty CI runs, holding the pipes. SIGABRT makes faulthandler print
                # where each thread of the guest stood, so the log says which fork it was
                _signal_group(p, signal.SIGABRT)
                try:
                    out, err = p.communicate(timeout=30)
                except subprocess.TimeoutExpired:
                    _signal_group(p, signal.SIGKILL)
                    out, err = p.communicate(timeout=30)
                if attempt == 2:
                    raise AssertionError(f"{args} hung twice under emulation:\n{err[-4000:]}") from None
                warnings.warn(f"{args} hung under emulation after {timeout} s; run again. Its threads:\n{err[-4000:]}",
                              stacklevel=2)
        raise AssertionError("unreachable")

    return run


def agreement(a: Path, b: Path) -> dict:
    """How far two ``--json`` files of the same frames agree: instances matched one to one (same
    class, mask IoU >= 0.5, greedy by IoU), their mean mask IoU, largest box and score differences."""
    from pycocotools import mask as rle

    fa, fb = ([json.loads(line) for line in p.read_text().splitlines()] for p in (a, b))
    assert [f["source"] for f in fa] == [f["source"] for f in fb], "the runs saw different frames"
    n_a = n_b = 0
    ious, box_err, score_err = [], [0.0], [0.0]
    for ra, rb in zip(fa, fb):
        ia, ib = ra["instances"], rb["instances"]
        n_a, n_b = n_a + len(ia), n_b + len(ib)
        if not ia or not ib:
            continue
        iou = rle.iou([i["mask"] for i in ia], [i["mask"] for i in ib], [0] * len(ib))
        iou *= np.array([[x["class_id"] == y["class_id"] for y in ib] for x in ia])
        while iou.size and iou.max() >= 0.5:
            i, j = np.unravel_index(iou.argmax(), iou.shape)
            ious.append(float(iou[i, j]))
            box_err.append(float(np.abs(np.subtract(ia[i]["box"], ib[j]["box"])).max()))
            score_err.append(abs(float(ia[i]["score"]) - float(ib[j]["score"])))
            iou[i, :], iou[:, j] = 0, 0
    return {"a": n_a, "b": n_b, "matched": len(ious), "mean_iou": float(np.mean(ious)) if ious else 0.0,
            "max_box_px": max(box_err), "max_score_diff": max(score_err)}


def agreement_on_aarch64(aarch64, bundle: Path, tmp_path: Path, *options: str, frames: int = 10) -> dict:
    """``edgeseg run BUNDLE`` on the emulated board and on this machine, over the same frames."""
    args = ["run", str(bundle), "--source", str(VAL_IMAGES), "--max-frames", str(frames), *options]
    r = aarch64("-m", "edgeseg", *args, "--json", str(tmp_path / "aarch64.jsonl"))
    assert r.returncode == 0, r.stderr
    r = cli(*args, "--json", str(tmp_path / "x86_64.jsonl"))
    assert r.returncode == 0, r.stderr
    return agreement(tmp_path / "aarch64.jsonl", tmp_path / "x86_64.jsonl")


def assert_same_detections(a: dict) -> None:
    """Another CPU's kernels (their own rounding, fp16 or dot-product int8) may move a borderline
    score across the threshold, never the picture. The README's figures (10 frames, every ARM
    bundle): at most two instances of ~42 unmatched, boxes under 4 px apart, mean mask IoU >= 0.993.
    Scores have no README figure: 0.1 is a few int8 steps of a logit near the threshold."""
    assert a["b"] > 20 and max(a["a"], a["b"]) - a["matched"] <= 2, a
    assert a["max_box_px"] < 4 and a["max_score_diff"] < 0.1 and a["mean_iou"] > 0.98, a


def pytest_collection_modifyitems(config, items):
    # a test on the emulated Pi is "emulated" wherever it lives (target files use it too)
    for item in items:
        if "aarch64" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.emulated)


def pytest_ignore_collect(collection_path, config):
    """A file marked whole (``pytestmark = pytest.mark.toolchain``) that ``-m`` leaves out is not even
    imported: `make test-fast` then skips the torch and nncf imports of files it would deselect."""
    expr = config.option.markexpr
    if not expr or collection_path.suffix != ".py" or not collection_path.name.startswith("test_"):
        return None
    import itertools
    import re

    from _pytest.mark.expression import Expression

    marks = set(re.findall(r"^pytestmark = pytest\.mark\.(\w+)$", collection_path.read_text(), re.M))
    if not marks:
        return None
    # left out only if no test in it can be chosen, whatever other declared markers it carries
    declared = sorted({line.split(":")[0].strip() for line in config.getini("markers")} - marks)
    match = Expression.compile(expr).evaluate
    for n in range(len(declared) + 1):
        for extra in itertools.combinations(declared, n):
            if match(lambda name, /, chosen=marks.union(extra), **kw: name in chosen):
                return None
    return True
