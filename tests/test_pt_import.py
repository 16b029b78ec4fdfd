"""Ultralytics .pt checkpoints: refused without --trust-model; imported through Ultralytics' exporter."""

import pytest
from conftest import FIXTURES, VAL_IMAGES, cli

PT = FIXTURES / "shapes-yolo11n-seg.pt"


def test_pickled_checkpoint_is_refused_without_trust(tmp_path):
    r = cli("convert", str(PT), "--out", str(tmp_path / "b"))
    assert r.returncode == 2 and "--trust-model" in r.stderr and "pickle" in r.stderr
    assert not (tmp_path / "b").exists()


def test_pt_import_matches_the_onnx_export(tmp_path, fp32_model):
    pytest.importorskip("ultralytics", reason="importing .pt needs ultralytics (AGPL, optional): "
                        "pip install torch==2.14.1 torchvision==0.29.1 ultralytics==8.4.190")
    from edgeseg.runtime.model import Model
    from edgeseg.runtime.sources import read_image

    src = tmp_path / "ckpt"
    src.mkdir()
    (src / PT.name).write_bytes(PT.read_bytes())
    r = cli("convert", str(src / PT.name), "--trust-model", "--fp32", "--out", str(tmp_path / "b"), timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(p.name for p in src.iterdir()) == [PT.name]  # nothing written next to the checkpoint
    m = Model.load(tmp_path / "b")
    assert m.manifest.source["format"] == "ultralytics-pt" and m.input_hw == (320, 320)
    assert m.names == fp32_model.names
    for f in sorted(VAL_IMAGES.iterdir())[:10]:
        frame = read_image(f)
        a, b = fp32_model(frame), m(frame)
        assert [i.class_id for i in a.instances] == [i.class_id for i in b.instances]
        for x, y in zip(a.instances, b.instances):
            assert abs(x.score - y.score) < 0.01 and abs(x.box - y.box).max() < 1.0


def test_dynamic_onnx_export_converts_at_any_imgsz(tmp_path, fp32_model):
    """`yolo export format=onnx dynamic=True`: symbolic input and output dims, head sizes computed by
    Shape/Gather/Reshape. With --imgsz the import fixes them; the split bundle matches the static one."""
    pytest.importorskip("ultralytics", reason="making a dynamic export needs ultralytics (AGPL, optional): "
                        "pip install torch==2.14.1 torchvision==0.29.1 ultralytics==8.4.190")
    import subprocess
    import sys

    from edgeseg.runtime.model import Model
    from edgeseg.runtime.sources import read_image

    (tmp_path / PT.name).write_bytes(PT.read_bytes())
    code = ("from ultralytics import YOLO; import sys; "
            "print(YOLO(sys.argv[1]).export(format='onnx', dynamic=True, simplify=True, imgsz=320, opset=17))")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / PT.name)], capture_output=True, text=True,
                       cwd=tmp_path, timeout=900)
    onnx_path = tmp_path / PT.with_suffix(".onnx").name
    assert r.returncode == 0 and onnx_path.is_file(), r.stderr[-2000:]
    r = cli("convert", str(onnx_path), "--fp32", "--out", str(tmp_path / "b"))
    assert r.returncode == 2 and "--imgsz" in r.stderr  # dynamic: the size must be chosen
    for size in (320, 256):
        r = cli("convert", str(onnx_path), "--fp32", "--imgsz", str(size), "--out", str(tmp_path / f"b{size}"))
        assert r.returncode == 0, r.stderr[-2000:]
        assert Model.load(tmp_path / f"b{size}").input_hw == (size, size)
    m = Model.load(tmp_path / "b320")
    for f in sorted(VAL_IMAGES.iterdir())[:10]:
        frame = read_image(f)
        a, b = fp32_model(frame), m(frame)
        assert [i.class_id for i in a.instances] == [i.class_id for i in b.instances]
        for x, y in zip(a.instances, b.instances):
            assert abs(x.score - y.score) < 0.01 and abs(x.box - y.box).max() < 1.0
