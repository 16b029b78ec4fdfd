"""Sony IMX500: Sony's real MCT and imx500-converter in the isolated env edgeseg creates, the
quantized network's host outputs for accuracy, and the Pi runtime driven through a stand-in at the
``picamera2`` import only (this machine has no AI Camera)."""

import json
import os
import stat
import sys
import types
import zipfile

import numpy as np
import onnx
import pytest
from conftest import DATA_YAML, MODEL, VAL_IMAGES, cli
from onnx import TensorProto, helper, numpy_helper

# drives Sony's MCT and imx500-converter: `make test-fast` leaves it out
pytestmark = pytest.mark.toolchain


def _score(path, limit=None):
    from edgeseg.eval import evaluate
    from edgeseg.runtime.model import Model, Thresholds

    return evaluate(Model.load(path, thresholds=Thresholds(conf=0.001)), DATA_YAML, progress=False, limit=limit)


@pytest.fixture(scope="module")
def imx(tmp_path_factory):
    from edgeseg.convert import convert
    from edgeseg.convert.toolchains.imx500 import Imx500Toolchain

    av = Imx500Toolchain.availability()
    if not av.installed:  # `make test` installs Java; elsewhere this says what is missing
        pytest.skip(f"{av.detail}; install with: {av.install}")

    out = tmp_path_factory.mktemp("imx500") / "int8"
    return convert(MODEL, target="imx500", out=out, verify_data=DATA_YAML, log=lambda m: None)


# -- no toolchain needed ---------------------------------------------------------------------------

def test_joined_scales_decode_exactly_like_split_outputs(tmp_path):
    """The four-tensor layout the sensor sends decodes to the same instances as ten per-scale ones."""
    import onnxruntime as ort

    from edgeseg.convert.importer import import_model
    from edgeseg.convert.split import merge_scales, split_yolo_seg
    from edgeseg.runtime.decode import make_decoder
    from edgeseg.runtime.preprocess import preprocess
    from edgeseg.runtime.sources import read_image

    im = import_model(MODEL, workdir=tmp_path)
    split, outs = split_yolo_seg(im.model, im.output_roles[0]["name"], im.output_roles[1]["name"])
    merged, mouts, grids = merge_scales(split, outs)
    assert [o["name"] for o in mouts] == ["box", "cls", "coef", "protos"]
    assert mouts[0]["shape"] == [1, 64, 2100] and grids[0] == {"h": 40, "w": 40, "stride": 8}
    head = dict(im.head, layout="split")
    runs = []
    for model, o, h in ((split, outs, head), (merged, mouts, dict(head, grids=grids))):
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        dec = make_decoder(h, o, im.names, im.input_hw)
        res = []
        for p in sorted(VAL_IMAGES.glob("*.jpg"))[:5]:
            x, lb = preprocess(read_image(p), im.input_hw)
            r = dict(zip([v.name for v in sess.get_outputs()], sess.run(None, {sess.get_inputs()[0].name: x})))
            res.append(dec(r, lb))
        runs.append(res)
    n = 0
    for a, b in zip(*runs):
        assert [i.class_id for i in a.instances] == [i.class_id for i in b.instances]
        for i, j in zip(a.instances, b.instances):
            assert np.abs(i.box - j.box).max() < 1e-3 and (i.mask == j.mask).all()
            n += 1
    assert n > 5


def test_sensor_outputs_are_reoriented_by_shape():
    from edgeseg.errors import EdgesegError
    from edgeseg.runtime.backends.imx500 import orient

    a = np.arange(64 * 2100, dtype=np.float32).reshape(64, 2100)
    assert (orient(a, [1, 64, 2100], "box")[0] == a).all()
    # what picamera2 hands back when the sensor reports the dims fastest-first (Fortran order)
    f = a.reshape(-1).reshape((2100, 64), order="F")
    assert (orient(f, [1, 64, 2100], "box")[0] == a).all()
    p = np.random.default_rng(0).random((32, 80, 80), dtype=np.float32)
    assert (orient(p.reshape(-1).reshape((80, 80, 32), order="F"), [1, 32, 80, 80], "protos")[0] == p).all()
    with pytest.raises(EdgesegError, match="'box' has shape"):
        orient(np.zeros((10, 10), np.float32), [1, 64, 2100], "box")


def test_sensor_crop_maps_like_the_letterbox_it_replaces():
    """A region the sensor fed the network maps boxes back exactly as the equivalent letterbox."""
    from edgeseg.runtime.backends.imx500 import sensor_mapping
    from edgeseg.runtime.preprocess import letterbox_params

    lb = letterbox_params(480, 640, 320, 320)  # 640x480 frame, 320 input: 40 px bands top and bottom
    roi = (-lb.pad_x / lb.scale_x, -lb.pad_y / lb.scale_y, 320 / lb.scale_x, 320 / lb.scale_y)
    sm = sensor_mapping(roi, (320, 320), (640, 480))
    boxes = np.array([[10, 50, 300, 270], [0, 0, 320, 320]], np.float32)
    assert np.allclose(sm.to_source(boxes), lb.to_source(boxes), atol=1e-3)
    # a centre crop of a 4:3 frame to a square input: x offset 80 px, nothing outside the frame
    crop = sensor_mapping((80, 0, 480, 480), (320, 320), (640, 480))
    assert np.allclose(crop.to_source(np.array([[0, 0, 320, 320]], np.float32)), [[80, 0, 560, 480]])


def _big_semantic_onnx(path):
    """A semantic-segmentation ONNX with ~9.4 M parameters: more weights than the sensor holds."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((1024, 3, 3, 3)).astype(np.float32) * 0.01, "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((1024, 1024, 3, 3)).astype(np.float32) * 0.01, "w2")
    w3 = numpy_helper.from_array(rng.standard_normal((2, 1024, 1, 1)).astype(np.float32) * 0.01, "w3")
    nodes = [helper.make_node("Conv", ["images", "w1"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["a", "w2"], ["b"], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["b", "w3"], ["logits"])]
    g = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 64])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 2, 64, 64])], [w1, w2, w3])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_a_model_too_big_for_the_sensor_is_refused_before_quantizing(tmp_path):
    from edgeseg.convert.toolchains.imx500 import Imx500Toolchain

    if not Imx500Toolchain.availability().installed:
        pytest.skip(Imx500Toolchain.availability().detail)
    _big_semantic_onnx(tmp_path / "big.onnx")
    r = cli("convert", str(tmp_path / "big.onnx"), "--target", "imx500", "--out", str(tmp_path / "b"), timeout=120)
    assert r.returncode == 2, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert "big.onnx" in last and "of the IMX500's 8.00 MB" in last and "--imgsz" in last
    assert not (tmp_path / "b").exists() and not list(tmp_path.glob("b.*"))


def test_unknown_target_option_is_one_line(tmp_path):
    r = cli("convert", "--target", "imx500", "--option", "mixed_precison=true", "--out", str(tmp_path / "b"))
    assert r.returncode == 2 and "--option mixed_precison: not an option of target 'imx500'" in r.stderr
    r = cli("convert", "--target", "onnxruntime", "--option", "x=1", "--out", str(tmp_path / "b"))
    assert r.returncode == 2 and "--option x: not an option" in r.stderr


# -- the real toolchain --------------------------------------------------------------------------

def test_converts_to_packer_zip_that_fits_the_sensor(imx):
    m = imx.manifest
    assert m.target == "imx500" and m.model_files == ["packerOut.zip"]
    with zipfile.ZipFile(imx.path / "packerOut.zip") as z:
        assert z.testzip() is None and len(z.namelist()) > 0
    mem = m.quantization["memory"]
    assert mem["Fit In Chip"] is True and mem["Total Memory Available On Chip"] == "8.00MB"
    assert float(mem["Memory Usage"].rstrip("MB")) < 8.0
    assert json.loads((imx.path / "memory_report.json").read_text()) == mem
    # the early estimate is within 25% of the converter's figure
    est = m.quantization["memory_estimate"]["total_bytes"] / 2**20
    assert abs(est - float(mem["Memory Usage"].rstrip("MB"))) < 0.25 * est
    assert [o["name"] for o in m.outputs] == ["box", "cls", "coef", "protos"] and len(m.head["grids"]) == 3
    assert "NMS" not in m.quantization["nms"] or "Pi" in m.quantization["nms"]


def test_mct_quantized_accuracy_is_within_002_of_fp32(imx, fp32_bundle):
    f = imx.manifest.fidelity
    assert set(f["cosine"]) == {"box", "cls", "coef", "proto"} and f["cosine"]["box"] > 0.98
    ref = _score(fp32_bundle.path)["mask_map50_95"]
    got = _score(imx.path)["mask_map50_95"]
    assert ref - got <= 0.02, (ref, got)


# The stand-in below follows picamera2's own IMX500 helper, not edgeseg's orient() or
# sensor_mapping(): raspberrypi/picamera2 picamera2/devices/imx500/imx500.py (get_outputs,
# get_output_shapes, convert_inference_coords, set_auto_aspect_ratio) and, for the tensor layout,
# raspberrypi/libcamera src/ipa/rpi/cam_helper/imx500_tensor_parser/imx500_tensor_parser.cpp, which
# exports each output tensor with its dimensions listed in CnnOutputTensorInfo and its data ordered
# with the first listed dimension varying fastest (picamera2 reshapes with order='F').
FULL_SENSOR = (0, 0, 4056, 3040)  # IMX500.get_full_sensor_resolution()
RAW_SIZE, MAIN_SIZE = (2028, 1520), (1014, 760)  # the 2x2-binned sensor mode; the stream edgeseg asks for
NET_IN_FRAME = (127, 0, 760, 760)  # where the centre-square inference crop lands in MAIN_SIZE (worked out below)


class Rectangle:
    """libcamera.Rectangle, with the integer arithmetic of libcamera's geometry.cpp."""

    __slots__ = ("height", "width", "x", "y")

    def __init__(self, x, y, width, height):
        self.x, self.y, self.width, self.height = int(x), int(y), int(width), int(height)

    def scaled_by(self, num, den):  # Size arguments as (width, height)
        return Rectangle(self.x * num[0] // den[0], self.y * num[1] // den[1], self.width * num[0] // den[0],
                         self.height * num[1] // den[1])

    def bounded_to(self, b):
        x0, y0 = max(self.x, b.x), max(self.y, b.y)
        x1, y1 = min(self.x + self.width, b.x + b.width), min(self.y + self.height, b.y + b.height)
        return Rectangle(x0, y0, max(x1 - x0, 0), max(y1 - y0, 0))

    def translated_by(self, dx, dy):
        return Rectangle(self.x + dx, self.y + dy, self.width, self.height)


def _sensor_export(tensors: list, dims_listed: str):
    """What libcamera puts in a request's metadata for the network's outputs: one flat float list
    (CnnOutputTensor) and CnnOutputTensorInfo (picamera2's CnnOutputTensorInfoExported struct:
    char[64] name, u32 count, then 8 x {u32 data_num, u32 num_dims, u16 size[8]}). The converter
    decides the order each tensor's dimensions are listed in; both orders are exported the way the
    parser does: first listed dimension fastest."""
    import struct

    flat, info = [], b"edgeseg-test".ljust(64, b"\0") + struct.pack("<I", len(tensors))
    for t in tensors:
        dims = list(t.shape[::-1]) if dims_listed == "innermost first" else list(t.shape)
        data = t.reshape(-1) if dims_listed == "innermost first" else t.reshape(-1, order="F")
        flat.extend(data.tolist())
        info += struct.pack("<II8H", t.size, len(dims), *(dims + [0] * (8 - len(dims))))
    info += bytes(struct.calcsize("<II8H") * (8 - len(tensors)))
    return flat, info


def _fake_picamera2(bundle, frames, tensors_for, dims_listed):
    """picamera2 with its IMX500 helper, as far as edgeseg uses it; tensors come from the
    MCT-quantized network (recorded at conversion) for the picture the sensor fed it, exported as
    libcamera does and read back as picamera2 does."""
    import ctypes

    calls: dict = {"released": 0}

    class Request:
        def __init__(self, k):
            self.k = k

        def make_array(self, stream):
            return np.dstack([frames[self.k], np.full(frames[self.k].shape[:2], 255, np.uint8)])  # XRGB8888

        def get_metadata(self):
            md = {"k": self.k, "ScalerCrop": FULL_SENSOR}  # the whole sensor: MAIN_SIZE is its 4:3
            if self.k:  # the first frame arrives before the network has run
                md["CnnOutputTensor"], md["CnnOutputTensorInfo"] = _sensor_export(tensors_for(self.k), dims_listed)
            return md

        def release(self):
            calls["released"] += 1

    class Picamera2:
        def __init__(self, num=0):
            calls["camera_num"] = num
            self.k = 0

        def create_preview_configuration(self, main=None, controls=None, buffer_count=4):
            calls["config"] = main
            return {"main": main}

        def camera_configuration(self):
            return {"main": {"size": MAIN_SIZE}, "raw": {"size": RAW_SIZE}}

        def start(self, cfg):
            calls["started"] = calls.get("started", 0) + 1

        def capture_request(self):
            if self.k == 3 and not calls.get("failed"):  # once, as libcamera does when the sensor stalls
                calls["failed"] = True
                raise RuntimeError("Camera frontend has timed out!")
            self.k += 1
            return Request((self.k - 1) % len(frames))  # the frames again and again, like a live sensor

        def stop(self):
            calls["stopped"] = True

        def close(self):
            calls["closed"] = True

    class OutputTensorInfo(ctypes.LittleEndianStructure):
        _fields_ = [("tensor_data_num", ctypes.c_uint32), ("num_dimensions", ctypes.c_uint32),
                    ("size", ctypes.c_uint16 * 8)]

    class CnnOutputTensorInfoExported(ctypes.LittleEndianStructure):
        _fields_ = [("network_name", ctypes.c_char * 64), ("num_tensors", ctypes.c_uint32),
                    ("info", OutputTensorInfo * 8)]

    class IMX500:
        def __init__(self, path):
            calls["rpk"] = path
            self.camera_num = 0
            self.roi = Rectangle(*FULL_SENSOR)  # set_inference_roi_abs(full sensor) in picamera2's __init__

        def set_auto_aspect_ratio(self):
            # picamera2's demos set the crop once the camera runs; set before, it may not hold
            calls["aspect"] = "preserve" if calls.get("started") else "set before start"
            side = min(FULL_SENSOR[2:])  # the input's 1:1 aspect, centred on the sensor
            self.roi = Rectangle((FULL_SENSOR[2] - side) // 2, (FULL_SENSOR[3] - side) // 2, side, side)

        def show_network_fw_progress_bar(self):
            pass

        def get_input_size(self):
            return (320, 320)

        def get_outputs(self, metadata, add_batch=False):
            output_tensor = metadata.get("CnnOutputTensor")
            if not output_tensor:
                return None
            raw = bytes(metadata["CnnOutputTensorInfo"])
            parsed = CnnOutputTensorInfoExported()
            assert len(raw) == ctypes.sizeof(parsed)
            ctypes.memmove(ctypes.addressof(parsed), raw, len(raw))
            np_output, offset, outputs = np.fromiter(output_tensor, dtype=np.float32), 0, []
            for t in parsed.info[:parsed.num_tensors]:
                shape = list(t.size)[:t.num_dimensions]
                size = int(np.prod(shape))
                outputs.append(np_output[offset:offset + size].reshape(shape, order="F"))
                offset += size
            return [o[None] for o in outputs] if add_batch else outputs

        def convert_inference_coords(self, coords, metadata, picam2, stream="main"):
            # picamera2 >= 0.3.2x returns a libcamera Rectangle (attributes, not a tuple)
            isp = picam2.camera_configuration()[stream]["size"]
            sensor = picam2.camera_configuration()["raw"]["size"]
            crop = Rectangle(*metadata["ScalerCrop"])
            y0, x0, y1, x1 = coords
            w, h = FULL_SENSOR[2:]
            obj = Rectangle(*np.maximum(np.array([x0 * w, y0 * h, (x1 - x0) * w, (y1 - y0) * h]), 0).astype(np.int32))
            sensor_crop = crop.scaled_by(sensor, (w, h))
            obj = obj.bounded_to(self.roi).scaled_by(sensor, (w, h)).bounded_to(sensor_crop)
            return obj.translated_by(-sensor_crop.x, -sensor_crop.y).scaled_by(isp, (sensor_crop.width,
                                                                                       sensor_crop.height))

    pc = types.ModuleType("picamera2")
    devices = types.ModuleType("picamera2.devices")
    pc.Picamera2, devices.IMX500, pc.devices = Picamera2, IMX500, devices
    return pc, devices, calls


def test_the_stand_ins_crop_is_where_picamera2_puts_it():
    """The inference crop of the stand-in (picamera2's arithmetic): the centre 3040x3040 of the
    4056x3040 sensor is x 508..3548, in the 1014x760 stream x 127..887, the full height."""
    pc, _, _ = _fake_picamera2(None, [], None, "innermost first")
    imx = pc.devices.IMX500("network.rpk")
    imx.set_auto_aspect_ratio()
    r = imx.convert_inference_coords((0.0, 0.0, 1.0, 1.0), {"ScalerCrop": FULL_SENSOR}, pc.Picamera2())
    assert (r.x, r.y, r.width, r.height) == NET_IN_FRAME


@pytest.mark.parametrize("dims_listed", ["innermost first", "as in the model"])
def test_pi_runtime_decodes_sensor_tensors_with_the_real_decoder(imx, tmp_path, monkeypatch, dims_listed):
    """The sensor's network sees the centre square of a 4:3 stream; each frame here is a scene
    scaled into that square with gray bands beside it, and the instances must land on the scene."""
    import cv2

    from edgeseg.runtime.backends.imx500 import Imx500Backend, network_rpk
    from edgeseg.runtime.model import Model
    from edgeseg.runtime.pipeline import run_pipeline
    from edgeseg.runtime.preprocess import preprocess
    from edgeseg.runtime.sources import read_image

    scenes = [read_image(p) for p in sorted(VAL_IMAGES.glob("*.jpg"))[:6]]  # 320x320: what the network saw
    x, y, w, h = NET_IN_FRAME
    frames = []
    for sc in scenes:
        f = np.full((MAIN_SIZE[1], MAIN_SIZE[0], 3), 114, np.uint8)
        f[y:y + h, x:x + w] = cv2.resize(sc, (w, h), interpolation=cv2.INTER_LINEAR)
        frames.append(f)
    host = Model.load(imx.path)  # no picamera2 here: the recorded outputs are replayed
    assert type(host.backend).__name__ == "ReplayImx500Backend"

    # imx500-package is a Raspberry Pi OS tool; this stand-in only copies, to exercise the call
    tool = tmp_path / "bin" / "imx500-package"
    tool.parent.mkdir()
    tool.write_text('#!/bin/sh\n# -i packerOut.zip -o DIR\nmkdir -p "$4" && cp "$2" "$4/network.rpk"\n')
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tool.parent}{os.pathsep}{os.environ['PATH']}")

    def tensors_for(k):
        outs = host.backend.run(preprocess(scenes[k], (320, 320))[0])
        return [outs[o["name"]][0] for o in imx.manifest.outputs]  # the sensor sends no batch dimension

    pc, devices, calls = _fake_picamera2(imx, frames, tensors_for, dims_listed)
    monkeypatch.setitem(sys.modules, "picamera2", pc)
    monkeypatch.setitem(sys.modules, "picamera2.devices", devices)

    board = Model.load(imx.path)
    assert isinstance(board.backend, Imx500Backend)
    events: list[str] = []
    src = board.backend.camera(imx, *MAIN_SIZE, 30, backoff=0.01, on_event=events.append)
    assert calls["rpk"] == str(network_rpk(imx)) and calls["aspect"] == "preserve"
    seen = []
    st = run_pipeline(board, src, [], annotate=False, max_frames=len(frames) - 1,
                      on_frame=lambda s, fr, res: seen.append((fr.image, res)))
    assert st.frames == len(frames) - 1 and calls["released"] >= len(frames) and calls.get("stopped")
    assert calls.get("closed")  # the camera is free for the next open
    # the stalled capture restarted the stream (same configuration), reported, and the run went on
    assert calls["started"] == 2 and src.reconnects == 1 and "timed out" in events[0], events
    n = 0
    s = np.array([w / 320, h / 320, w / 320, h / 320])
    for image, res in seen:
        # live source: frames may be dropped, but each arrives with its own tensors
        k = next(k for k, f in enumerate(frames) if f.shape == image.shape and (f == image).all())
        assert k != 0  # the frame without tensors (network still loading) was skipped
        ref = host(scenes[k])  # the same tensors decoded for the 320x320 scene itself
        assert [i.class_id for i in res.instances] == [i.class_id for i in ref.instances]
        for a, b in zip(res.instances, ref.instances):
            # in the frame: scaled by 760/320 and moved right by the 127 px band
            assert np.abs(a.box - (b.box * s + [x, y, x, y])).max() < 0.05, (a.box, b.box)
            placed = np.zeros(image.shape[:2], bool)
            placed[y:y + h, x:x + w] = cv2.resize(b.full_mask(320, 320).astype(np.uint8), (w, h),
                                                  interpolation=cv2.INTER_NEAREST).astype(bool)
            got = a.full_mask(*image.shape[:2])
            # the scene upscaled 2.4x by nearest neighbour: 0.92 at worst for the FP32 model; misplaced: 0
            assert (got & placed).sum() / (got | placed).sum() > 0.8 and not got[:, :x].any()
            n += 1
    assert n >= 5
    with pytest.raises(Exception, match="runs inside the camera"):
        board.backend.run(np.zeros((1, 3, 320, 320), np.float32))


def test_mixed_precision_fits_a_weights_budget(imx, tmp_path):
    """MCT mixed precision (8/4/2-bit weights) against 75% of the 8-bit weight bytes: the sensor
    memory the converter reports drops below the plain 8-bit bundle's."""
    from edgeseg.convert import convert

    mp = convert(MODEL, target="imx500", out=tmp_path / "mp", calib_images=16, fidelity=False, log=lambda m: None,
                 options={"mixed_precision": "true"})
    q = mp.manifest.quantization
    assert q["mixed_precision"] is True and q["weights_memory"] == pytest.approx(
        0.75 * q["memory_estimate"]["weights_bytes"])
    used = float(q["memory"]["Memory Usage"].rstrip("MB"))
    assert q["memory"]["Fit In Chip"] and used < float(imx.manifest.quantization["memory"]["Memory Usage"].rstrip("MB"))


def test_gptq_option_runs_mct_gradient_ptq(tmp_path):
    from edgeseg.convert import convert
    from edgeseg.convert.toolchains.imx500 import Imx500Toolchain

    if not Imx500Toolchain.availability().installed:
        pytest.skip(Imx500Toolchain.availability().detail)
    b = convert(MODEL, target="imx500", out=tmp_path / "gptq", calib_images=16, fidelity=False, log=lambda m: None,
                options={"gptq": "true", "gptq_epochs": "1"})
    q = b.manifest.quantization
    assert q["gptq"] is True and q["gptq_epochs"] == 1 and q["memory"]["Fit In Chip"]


def test_a_failing_imx500_package_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    """imx500-package (Raspberry Pi OS) is stood in for by a script that fails as a bad archive
    would; the message quotes its last line (it printed a Python list before) and no half-made
    network.rpk or work folder stays in the bundle."""
    from edgeseg.errors import EdgesegError
    from edgeseg.runtime.backends.imx500 import network_rpk

    bundle_dir = tmp_path / "bundle"
    bundle_dir.mkdir()
    (bundle_dir / "packerOut.zip").write_bytes(b"not a zip")
    bundle = types.SimpleNamespace(file=lambda name: bundle_dir / name,
                                   manifest=types.SimpleNamespace(model_files=["packerOut.zip"]))
    tool = tmp_path / "bin" / "imx500-package"
    tool.parent.mkdir()
    tool.write_text('#!/bin/sh\necho "reading packerOut.zip" >&2\necho "error: not a packer archive" >&2\nexit 3\n')
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tool.parent}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(EdgesegError) as e:
        network_rpk(bundle)
    msg = str(e.value)
    assert "imx500-package failed (exit 3: error: not a packer archive); run it by hand" in msg and "[" not in msg
    assert sorted(p.name for p in bundle_dir.iterdir()) == ["packerOut.zip"]


def test_no_ai_camera_attached_is_one_line(tmp_path):
    """picamera2's IMX500() raises RuntimeError when no IMX500 sensor node exists (a Pi without
    the AI Camera, or a loose cable); the stand-in is that picamera2 call alone."""
    from edgeseg.errors import EdgesegError
    from edgeseg.runtime.backends.imx500 import Imx500Camera

    bundle_dir = tmp_path / "bundle"
    bundle_dir.mkdir()
    (bundle_dir / "packerOut.zip").write_bytes(b"zip")
    (bundle_dir / "network.rpk").write_bytes(b"rpk")  # packaged already: no imx500-package call
    manifest = types.SimpleNamespace(model_files=["packerOut.zip"], outputs=[])
    bundle = types.SimpleNamespace(path=bundle_dir, manifest=manifest, file=lambda name: bundle_dir / name)

    def no_sensor(path):
        raise RuntimeError("IMX500: Requested camera dev-node not found")

    pc = types.SimpleNamespace(devices=types.SimpleNamespace(IMX500=no_sensor), Picamera2=None)
    with pytest.raises(EdgesegError, match=r"no Raspberry Pi AI Camera \(IMX500\) found \(IMX500: Requested camera "
                                           r"dev-node not found\); check the ribbon cable"):
        Imx500Camera(bundle, picamera2_module=pc)
