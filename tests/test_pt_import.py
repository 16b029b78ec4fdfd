"""Ultralytics .pt checkpoints: refused without --trust-model; imported through Ultralytics' exporter."""

import cv2
import pytest
from conftest import FIXTURES, VAL_IMAGES, cli

PT = FIXTURES / "shapes-yolo11n-seg.pt"


def test_pickled_checkpoint_is_refused_without_trust(tmp_path):
    r = cli("convert", str(PT), "--out", str(tmp_path / "b"))
    assert r.returncode == 2 and "--trust-model" in r.stderr and "pickle" in r.stderr
    assert not (tmp_path / "b").exists()


@pytest.mark.slow  # an Ultralytics export (torch) and a conversion
def test_pt_import_matches_the_onnx_export(tmp_path, fp32_model):
    pytest.importorskip("ultralytics", reason="importing .pt needs ultralytics (AGPL, optional): "
                        "pip install torch==2.14.1 torchvision==0.29.1 ultralytics==8.4.190")
    from edgeseg.runtime.model import Model

    src = tmp_path / "ckpt"
    src.mkdir()
    (src / PT.name).write_bytes(PT.read_bytes())
    r = cli("convert", str(src / PT.name), "--trust-model", "--fp32", "--out", str(tmp_path / "b"), timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(p.name for p in src.iterdir()) == [PT.name]  # nothing written next to the checkpoint
    m = Model.load(tmp_path / "b")
    assert m.manifest.source["format"] == "ultralytics-pt" and m.input_hw == (320, 320)
    assert m.names == fp32_model.names
    _same_instances(fp32_model, tmp_path / "b")


ULTRALYTICS = ("making this export needs ultralytics (AGPL, optional): "
               "pip install torch==2.14.1 torchvision==0.29.1 ultralytics==8.4.190")


def _export(tmp_path, fmt: str, suffix: str, **kw):
    """The reference checkpoint exported by Ultralytics itself, in a subprocess."""
    import subprocess
    import sys

    (tmp_path / PT.name).write_bytes(PT.read_bytes())
    code = ("from ultralytics import YOLO; import sys; "
            f"YOLO(sys.argv[1]).export(format={fmt!r}, imgsz=320, **{kw!r})")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / PT.name)], capture_output=True, text=True,
                       cwd=tmp_path, timeout=900)
    out = tmp_path / PT.with_suffix(suffix).name
    assert r.returncode == 0 and out.is_file(), r.stderr[-2000:]
    return out


def _same_instances(ref, bundle_dir):
    from edgeseg.runtime.model import Model
    from edgeseg.runtime.sources import read_image

    m = Model.load(bundle_dir)
    for f in sorted(VAL_IMAGES.iterdir())[:10]:
        frame = read_image(f)
        a, b = ref(frame), m(frame)
        assert [i.class_id for i in a.instances] == [i.class_id for i in b.instances]
        for x, y in zip(a.instances, b.instances):
            assert abs(x.score - y.score) < 0.01 and abs(x.box - y.box).max() < 1.0


@pytest.mark.slow  # an Ultralytics export (torch) and four conversions
def test_dynamic_onnx_export_converts_at_any_imgsz(tmp_path, fp32_model):
    """`yolo export format=onnx dynamic=True`: symbolic input and output dims, head sizes computed by
    Shape/Gather/Reshape. With --imgsz the import fixes them; the split bundle matches the static one."""
    pytest.importorskip("ultralytics", reason=ULTRALYTICS)
    from edgeseg.runtime.model import Model

    onnx_path = _export(tmp_path, "onnx", ".onnx", dynamic=True, simplify=True, opset=17)
    r = cli("convert", str(onnx_path), "--fp32", "--out", str(tmp_path / "b"))
    assert r.returncode == 2 and "--imgsz" in r.stderr  # dynamic: the size must be chosen
    for size in (320, 256):
        r = cli("convert", str(onnx_path), "--fp32", "--imgsz", str(size), "--out", str(tmp_path / f"b{size}"))
        assert r.returncode == 0, r.stderr[-2000:]
        assert Model.load(tmp_path / f"b{size}").input_hw == (size, size)
    _same_instances(fp32_model, tmp_path / "b320")
    # rectangular: --imgsz H,W fixes height and width; the anchors and letterbox follow
    # (split per stride on 40x60 ... 10x15 grids, decoded as the graph's own output decodes)
    for name, extra in (("rect", []), ("rect_whole", ["--no-split"])):
        r = cli("convert", str(onnx_path), "--fp32", "--imgsz", "320,480", "--out", str(tmp_path / name), *extra)
        assert r.returncode == 0, r.stderr[-2000:]
    rect, whole = Model.load(tmp_path / "rect"), Model.load(tmp_path / "rect_whole")
    assert rect.input_hw == (320, 480) and rect.manifest.head["layout"] == "split"
    n = 0
    for f in sorted(VAL_IMAGES.iterdir())[:5]:
        wide = cv2.resize(cv2.imread(str(f)), (480, 320))
        a, b = rect(wide), whole(wide)
        assert [i.class_id for i in a.instances] == [i.class_id for i in b.instances]
        assert all(abs(x.box - y.box).max() < 0.01 for x, y in zip(a.instances, b.instances))
        n += len(a.instances)
    assert n > 0
    # eval --against a reference of another input size: each bundle undoes its own letterbox
    from conftest import DATA_YAML

    from edgeseg.eval import evaluate

    f = evaluate(Model.load(tmp_path / "b256"), DATA_YAML, against=Model.load(tmp_path / "b320"), limit=20,
                 progress=False)["fidelity"]
    assert f["detections_kept"] > 0.8 and f["mean_mask_iou"] > 0.85, f


@pytest.mark.slow  # an Ultralytics TorchScript export (torch) and a conversion
def test_ultralytics_torchscript_export_converts(tmp_path, fp32_model):
    pytest.importorskip("ultralytics", reason=ULTRALYTICS)
    ts = _export(tmp_path, "torchscript", ".torchscript")
    r = cli("convert", str(ts), "--fp32", "--trust-model", "--out", str(tmp_path / "b"), timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    from edgeseg.bundle import Bundle

    m = Bundle.load(tmp_path / "b").manifest
    assert m.source["format"] == "torchscript" and m.names == fp32_model.names and m.head["layout"] == "split"
    _same_instances(fp32_model, tmp_path / "b")


@pytest.mark.slow  # an Ultralytics export (torch) and a conversion
def test_fp16_onnx_export_is_cast_back_to_fp32(tmp_path, fp32_model):
    """`half=True`: a Cast in, an FP16 graph and Casts out. The import computes it in FP32 (its FP16
    weights kept), so the head splits for INT8 as any export, and the manifest says which it was."""
    pytest.importorskip("ultralytics", reason=ULTRALYTICS)
    from edgeseg.bundle import Bundle

    onnx_path = _export(tmp_path, "onnx", ".onnx", half=True, simplify=True, opset=17)
    r = cli("convert", str(onnx_path), "--fp32", "--out", str(tmp_path / "b"))
    assert r.returncode == 0, r.stderr[-2000:]
    m = Bundle.load(tmp_path / "b").manifest
    assert m.head["layout"] == "split" and m.precision == "fp32" and m.source["metadata"]["weights"] == "fp16"
    _same_instances(fp32_model, tmp_path / "b")
