"""TFLite / Edge TPU: TensorFlow's converter in the isolated env edgeseg creates, the full-integer
model run by the real LiteRT interpreter (the int8 arithmetic the Edge TPU executes)."""

import json

import numpy as np
import pytest
from conftest import DATA_YAML, MODEL, MODEL_V8, VAL_IMAGES, agreement_on_aarch64, assert_same_detections

# drives TensorFlow and onnx2tf (their isolated env): `make test-fast` leaves it out
pytestmark = pytest.mark.toolchain

pytest.importorskip("ai_edge_litert", reason='the TFLite target needs: pip install "edgeseg[tflite]"')


@pytest.fixture(scope="module")
def tfl(tmp_path_factory):
    from edgeseg.convert import convert

    d = tmp_path_factory.mktemp("tflite")
    return {"split": convert(MODEL, target="edgetpu", out=d / "int8", log=lambda m: None),
            "nosplit": convert(MODEL, target="tflite", out=d / "nosplit", split=False, log=lambda m: None),
            "fp16": convert(MODEL, target="tflite", precision="fp16", out=d / "fp16", log=lambda m: None)}


def _score(path):
    from edgeseg.eval import evaluate
    from edgeseg.runtime.model import Model, Thresholds

    return evaluate(Model.load(path, thresholds=Thresholds(conf=0.001)), DATA_YAML, progress=False)["mask_map50_95"]


def test_full_integer_model_in_litert(tfl, fp32_bundle):
    b = tfl["split"]
    for o in b.manifest.outputs:  # int8 outputs, dequantized by edgeseg with these parameters
        assert o["quant"]["dtype"] == "int8" and o["quant"]["scale"] > 0
    assert b.manifest.input["quant"]["dtype"] == "int8"
    from conftest import VAL_IMAGES

    from edgeseg.runtime.model import Model
    from edgeseg.runtime.sources import read_image

    m = Model.load(b.path)
    x, _ = m.preprocess(read_image(VAL_IMAGES / "00000.jpg"))
    assert all(v.dtype == np.int8 for v in m.infer(x).values())
    assert _score(fp32_bundle.path) - _score(b.path) <= 0.015


def test_edgetpu_report_lists_every_op(tfl):
    b = tfl["split"]
    rep = json.loads((b.path / "edgetpu_report.json").read_text())
    assert rep["op_count"] == len(rep["ops"]) > 100
    assert all(isinstance(r["supported"], bool) and r["op"] for r in rep["ops"])
    # YOLO11's attention: BATCH_MATMUL is not an Edge TPU op, and its softmax runs over a 2-D map
    # (Coral's table: one axis only); everything after the first of them runs on the CPU
    assert rep["unsupported_ops"] == ["BATCH_MATMUL", "SOFTMAX"] and rep["split_at"]["op"] == "BATCH_MATMUL"
    verdicts = {}
    for r in rep["ops"]:
        verdicts.setdefault(r["op"], set()).add(r["supported"])
    assert verdicts == {**{op: {True} for op in (
        "ADD", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D", "LOGISTIC", "MAX_POOL_2D", "MUL", "PAD",
        "QUANTIZE", "RESHAPE", "RESIZE_NEAREST_NEIGHBOR", "SPLIT", "STRIDED_SLICE", "TRANSPOSE",
        "TRANSPOSE_CONV")}, "BATCH_MATMUL": {False}, "SOFTMAX": {False}}
    softmax = next(r for r in rep["ops"] if r["op"] == "SOFTMAX")
    assert "[1, 2, 100, 100]" in softmax["reason"] and "16,000" in softmax["reason"]
    assert 0.1 < rep["mapped_fraction"] < 0.6 and "YOLOv8" in rep["advice"][0]
    from edgeseg.convert.toolchains.tflite.edgetpu import summary_lines

    screen = "\n".join(summary_lines(rep))
    assert "(BATCH_MATMUL at #" in screen and "SOFTMAX x1" in screen and "advice: YOLO11" in screen
    import shutil

    if shutil.which("edgetpu_compiler") is None:  # the conversion ran with the PATH this test has
        assert rep["compiler"]["compiled"] is False and "edgetpu_compiler" in rep["compiler"]["how"]
    else:
        assert rep["compiler"]["compiled"] is True
    assert b.manifest.quantization["edgetpu"]["split_at"]["op"] == "BATCH_MATMUL"


STAND_IN_COMPILER = """#!{python}
# Stands in for Google's edgetpu_compiler, which installs nowhere here (Coral's apt repository
# only): it prints the compiler's log layout (Coral's docs and issue threads) with the op table
# it is given and copies the model where the compiler would write it.
import shutil, sys
from pathlib import Path
args = sys.argv[1:]
out, model = Path(args[args.index("-o") + 1]), Path(args[-1])
rows = [line.split("|") for line in Path("{table}").read_text().splitlines()]
total = sum(int(n) for _, n, _ in rows)
cpu = sum(int(n) for _, n, s in rows if s != "Mapped to Edge TPU")
print("Edge TPU Compiler version 16.0.384591198")
if {fail}:
    print("Internal compiler error. Aborting!"); sys.exit(1)
print("\\nModel compiled successfully in 3133 ms.\\n")
print(f"Input model: {{model}}\\nOutput model: {{out / (model.stem + '_edgetpu.tflite')}}")
print("On-chip memory used for caching model parameters: 3.25MiB")
print("On-chip memory remaining for caching model parameters: 3.81MiB")
print("Off-chip memory used for streaming uncached model parameters: 640.00KiB")
print(f"Number of Edge TPU subgraphs: 1\\nTotal number of operations: {{total}}")
print(f"Operation log: {{out / (model.stem + '_edgetpu.log')}}\\n")
print(f"Number of operations that will run on Edge TPU: {{total - cpu}}")
print(f"Number of operations that will run on CPU: {{cpu}}\\n")
print(f"{{'Operator':<31}}{{'Count':<11}}Status\\n")
for op, n, status in rows:
    print(f"{{op:<31}}{{n:<11}}{{status}}")
shutil.copyfile(model, out / (model.stem + "_edgetpu.tflite"))
(out / (model.stem + "_edgetpu.log")).write_text("per-op log")
"""


def _stand_in_compiler(tmp_path, monkeypatch, rows, fail=False):
    import os
    import sys

    (tmp_path / "table").write_text("\n".join("|".join(map(str, r)) for r in rows))
    exe = tmp_path / "bin" / "edgetpu_compiler"
    exe.parent.mkdir()
    exe.write_text(STAND_IN_COMPILER.format(python=sys.executable, table=tmp_path / "table", fail=fail))
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{exe.parent}{os.pathsep}{os.environ['PATH']}")


def test_the_compilers_figures_go_in_the_report_beside_the_prediction(tfl, tmp_path, monkeypatch):
    """Where edgetpu_compiler is installed, its memory figures and per-op table are parsed into the
    report and each op type where it disagrees with edgeseg's prediction is named on screen. The
    compiler is a stand-in (see above); the run, parse and comparison are edgeseg's own."""
    import shutil

    from edgeseg.convert.toolchains.tflite.edgetpu import compatibility, compile_if_available, summary_lines

    work = tmp_path / "bundle"
    work.mkdir()
    shutil.copyfile(tfl["split"].path / "model.tflite", work / "model.tflite")
    rep = compatibility(work / "model.tflite")
    predicted: dict = {}
    for r in rep["ops"]:
        predicted[r["op"]] = predicted.get(r["op"], 0) + int(r["edgetpu"])
    # the compiler agrees on every op but one of the transposes, which it keeps on the CPU
    rows = [(op, n, "Mapped to Edge TPU") for op, n in predicted.items() if n and op != "TRANSPOSE"]
    rows += [("TRANSPOSE", predicted["TRANSPOSE"] - 1, "Mapped to Edge TPU"),
             ("TRANSPOSE", 1, "Operation is otherwise supported, but not mapped due to some unspecified limitation"),
             ("BATCH_MATMUL", 2, "Operation not supported")]
    _stand_in_compiler(tmp_path, monkeypatch, rows)
    rep["compiler"] = compile_if_available(work / "model.tflite", work, tmp_path / "failed.log")
    c = rep["compiler"]
    assert c["compiled"] and (work / "model_edgetpu.tflite").is_file() and (work / "edgetpu_compiler.log").is_file()
    assert not (work / "model_edgetpu.log").exists() and not (tmp_path / "failed.log").exists()
    assert c["version"] == "16.0.384591198" and c["subgraphs"] == 1
    assert (c["on_chip_used"], c["on_chip_remaining"], c["off_chip_used"]) == (3407872, round(3.81 * 2**20),
                                                                               640 * 2**10)
    assert c["op_count"] == sum(n for _, n, _ in rows) and c["ops_on_cpu"] == 3
    assert c["ops_on_edgetpu"] == rep["mapped_to_edgetpu"] - 1 and len(c["op_table"]) == len(rows)
    screen = "\n".join(summary_lines(rep))
    assert "compiled by edgetpu_compiler" in screen and "on-chip memory 3.25 MiB used, 3.81 MiB free" in screen
    differs = [line for line in screen.splitlines() if "the compiler differs" in line]
    assert len(differs) == 1 and "TRANSPOSE" in differs[0] and "unspecified limitation" in differs[0], screen


def test_a_failing_compiler_stops_the_conversion_and_keeps_its_log(tfl, tmp_path, monkeypatch):
    import shutil

    from edgeseg.convert.toolchains.tflite.edgetpu import compile_if_available
    from edgeseg.errors import EdgesegError

    work = tmp_path / "bundle"
    work.mkdir()
    shutil.copyfile(tfl["split"].path / "model.tflite", work / "model.tflite")
    _stand_in_compiler(tmp_path, monkeypatch, [("CONV_2D", 1, "Mapped to Edge TPU")], fail=True)
    with pytest.raises(EdgesegError, match=r"failed\.log: edgetpu_compiler failed \(exit 1\).*--target tflite"):
        compile_if_available(work / "model.tflite", work, tmp_path / "failed.log")
    assert "Internal compiler error" in (tmp_path / "failed.log").read_text()
    assert sorted(p.name for p in work.iterdir()) == ["model.tflite"]


def test_yolov8_maps_whole_to_the_edgetpu_within_goal(tmp_path):
    """The reference YOLOv8n-seg, cut before its decode, passes every check of Coral's table (ops
    and per-op limits); its full-integer model in LiteRT stays within 0.015 of its FP32 bundle."""
    from edgeseg.convert import convert

    tpu = convert(MODEL_V8, target="edgetpu", out=tmp_path / "v8", log=lambda m: None)
    rep = json.loads((tpu.path / "edgetpu_report.json").read_text())
    assert rep["split_at"] is None and rep["unsupported_ops"] == [] and rep["advice"] == []
    assert rep["mapped_to_edgetpu"] == rep["op_count"] > 200 and all(r["edgetpu"] for r in rep["ops"])
    assert {"CONV_2D", "STRIDED_SLICE", "CONCATENATION", "PAD", "RESIZE_NEAREST_NEIGHBOR"} <= set(rep["op_types"])
    fp32 = convert(MODEL_V8, target="onnxruntime", precision="fp32", out=tmp_path / "v8fp32", log=lambda m: None)
    assert _score(fp32.path) - _score(tpu.path) <= 0.015


def test_unsplit_full_integer_model_detects_nothing(tfl):
    f = tfl["nosplit"].manifest.fidelity
    assert f["cosine"]["cls"] < 0.2
    assert _score(tfl["nosplit"].path) < 0.05


def test_fp16_tflite_matches_fp32(tfl, fp32_bundle):
    b = tfl["fp16"]
    assert all(o["quant"] is None for o in b.manifest.outputs) and "quant" not in b.manifest.input
    assert abs(_score(fp32_bundle.path) - _score(b.path)) <= 0.003


def test_edgetpu_delegate_is_used_when_libedgetpu_loads(tfl, tmp_path, monkeypatch, caplog):
    """This machine has no Coral and no edgetpu_compiler: only ``load_delegate`` (libedgetpu) and
    the compiled file are stood in for (a copy of the int8 model). The backend must load the
    compiled model with the delegate when libedgetpu loads, and the int8 model on CPU when not."""
    import shutil

    from edgeseg.bundle import Bundle, write_manifest
    from edgeseg.runtime.model import Model
    from edgeseg.runtime.sources import read_image

    b = tmp_path / "compiled"
    shutil.copytree(tfl["split"].path, b)
    shutil.copyfile(b / "model.tflite", b / "model_edgetpu.tflite")
    m = Bundle.load(b, verify=False).manifest
    m.model_files = ["model.tflite", "model_edgetpu.tflite"]
    write_manifest(b, m)

    import ai_edge_litert.interpreter as lite  # what the backend imports when a bundle opens

    seen: dict = {}
    real = lite.Interpreter

    def fake_load_delegate(lib):
        seen["lib"] = lib
        return "edgetpu-delegate"

    def interpreter(model_path, num_threads=None, experimental_delegates=None):
        seen.update(model=model_path, delegates=experimental_delegates)
        return real(model_path=model_path, num_threads=num_threads)  # the delegate's ops run on the CPU here

    monkeypatch.setattr(lite, "load_delegate", fake_load_delegate)
    monkeypatch.setattr(lite, "Interpreter", interpreter)
    tpu = Model.load(b)
    assert (tpu.backend.on_edgetpu and tpu.backend.name == "litert+edgetpu" and seen["lib"] == "libedgetpu.so.1"
            and seen["delegates"] == ["edgetpu-delegate"])
    assert not caplog.records
    assert seen["model"].endswith("model_edgetpu.tflite")
    frame = read_image(sorted(VAL_IMAGES.glob("*.jpg"))[0])
    with_tpu = tpu(frame)

    def no_coral(lib):
        raise ValueError("Failed to load delegate from libedgetpu.so.1")

    monkeypatch.setattr(lite, "load_delegate", no_coral)
    cpu = Model.load(b)
    assert (not cpu.backend.on_edgetpu and cpu.backend.name == "litert" and seen["model"].endswith("model.tflite")
            and not seen["delegates"])
    # running ~10x slower on the CPU is never silent
    assert [r.getMessage() for r in caplog.records if "no Edge TPU found" in r.getMessage()], caplog.text
    caplog.clear()
    Model.load(tfl["split"].path).close()  # converted here: compiled only where edgetpu_compiler is installed
    if "model_edgetpu.tflite" not in tfl["split"].manifest.model_files:
        assert "holds no Edge TPU-compiled model" in caplog.text and "edgetpu_compiler" in caplog.text
    else:
        assert "holds no Edge TPU-compiled model" not in caplog.text
    ref = cpu(frame)
    assert [i.class_id for i in with_tpu.instances] == [i.class_id for i in ref.instances] and ref.instances


def test_full_integer_bundle_on_a_pi_cpu_decodes_as_here(tfl, aarch64, tmp_path):
    """A Coral host without its stick (or before it is plugged in) runs the int8 model on LiteRT's
    ARM kernels (emulated Cortex-A76)."""
    a = agreement_on_aarch64(aarch64, tfl["split"].path, tmp_path)
    assert_same_detections(a)
