"""Semantic models as their users export them: torchvision LRASPP and DeepLabV3-MobileNetV3 and a
transformers SegFormer (random weights from their constructors/config: no hub download), each
exported with torch.onnx and converted, its input normalisation taken from where that family
keeps it (SegFormer: the preprocessor_config.json saved beside the model; LRASPP: ONNX metadata;
DeepLabV3: the --mean/--std flags). Each FP32 bundle is compared with the torch model itself on
non-square frames, the reference pipeline written here in torch (resize, pad, normalise,
upsample), independently of edgeseg's."""

import json
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from conftest import VAL_IMAGES, cli

# exports three models with torch.onnx and converts each (about a minute on 2 cores)
pytestmark = pytest.mark.slow

torch = pytest.importorskip("torch", reason="exporting the models needs torch: pip install torch torchvision")
pytest.importorskip("torchvision", reason="the torchvision models: pip install torchvision")
transformers = pytest.importorskip("transformers", reason="the SegFormer model: pip install transformers")
F = torch.nn.functional

IN_HW = (192, 256)  # model input (height, width): SegFormer's logits come out at 48 x 64
NAMES = "background,circle,rectangle,triangle,star"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # torchvision's, in 0..1 units
PX = ",".join  # 0..255 pixel units for the flags and metadata


def _frames() -> list[np.ndarray]:
    """Non-square frames, landscape and portrait, with letterbox padding that is not whole logit cells."""
    imgs = [cv2.imread(str(p)) for p in sorted(VAL_IMAGES.glob("*.jpg"))[:3]]
    return [cv2.resize(imgs[0], (517, 333)), imgs[1][:, 40:250].copy(), cv2.resize(imgs[2], (640, 360))]


class Logits(torch.nn.Module):
    """torchvision returns {"out": ...}, transformers a SemanticSegmenterOutput: export the logits."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        y = self.model(x)
        return y.logits if hasattr(y, "logits") else y["out"]


def _spread_classes(convs, seed: int) -> None:
    """Random-init classifiers put every pixel in one class (their biases dominate): zero the biases
    and widen the weights so that the picture decides, as in a trained model."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for conv in convs:
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * 8 / conv.weight[0].numel() ** 0.5)
            if conv.bias is not None:
                conv.bias.zero_()


def _export(model, path) -> torch.nn.Module:
    wrapped = Logits(model).eval()
    torch.onnx.export(wrapped, torch.zeros(1, 3, *IN_HW), str(path), input_names=["images"],
                      output_names=["logits"], opset_version=17, dynamo=False)
    return wrapped


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large, lraspp_mobilenet_v3_large

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("semantic-models")
    out = {}
    # transformers: the image processor's config saved beside the model, as save_pretrained does
    cfg = transformers.SegformerConfig(depths=[1, 1, 1, 1], hidden_sizes=[16, 32, 64, 128],
                                       num_attention_heads=[1, 1, 2, 4], decoder_hidden_size=64, num_labels=5)
    seg = transformers.SegformerForSemanticSegmentation(cfg)
    _spread_classes([seg.decode_head.classifier], 1)
    (root / "segformer").mkdir()
    processor = transformers.SegformerImageProcessor(size={"height": IN_HW[0], "width": IN_HW[1]})
    processor.save_pretrained(root / "segformer")
    out["segformer"] = (root / "segformer" / "model.onnx", _export(seg, root / "segformer" / "model.onnx"))
    # torchvision LRASPP: the normalisation written into the ONNX metadata
    import onnx

    lr = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=5)
    _spread_classes([lr.classifier.low_classifier, lr.classifier.high_classifier], 2)
    path = root / "lraspp.onnx"
    out["lraspp"] = (path, _export(lr, path))
    m = onnx.load(str(path))
    onnx.helper.set_model_props(m, {"edgeseg.input.mean": PX(f"{255 * v:g}" for v in IMAGENET_MEAN),
                                    "edgeseg.input.std": PX(f"{255 * v:g}" for v in IMAGENET_STD)})
    onnx.save(m, str(path))
    # torchvision DeepLabV3-MobileNetV3: nothing in the model, the user passes --mean/--std
    dl = deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=5, aux_loss=False)
    _spread_classes([dl.classifier[-1]], 3)
    path = root / "deeplabv3.onnx"
    out["deeplabv3"] = (path, _export(dl, path))
    return out


def _letterbox_ref(frame: np.ndarray, resize: str) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """The frame as the model input (RGB, 0..1), resized by torch: Ultralytics' letterbox
    (round the scaled sides, pad (d - 0.1) rounded, value 114) or a stretch; and the content box."""
    h, w = frame.shape[:2]
    x = torch.from_numpy(np.ascontiguousarray(frame[:, :, ::-1])).permute(2, 0, 1)[None].float()
    if resize == "stretch":
        return F.interpolate(x, IN_HW, mode="bilinear", align_corners=False).round() / 255, (0, 0, *IN_HW)
    r = min(IN_HW[0] / h, IN_HW[1] / w)
    nh, nw = round(h * r), round(w * r)
    top, left = round((IN_HW[0] - nh) / 2 - 0.1), round((IN_HW[1] - nw) / 2 - 0.1)
    canvas = torch.full((1, 3, *IN_HW), 114.0)
    canvas[..., top:top + nh, left:left + nw] = F.interpolate(x, (nh, nw), mode="bilinear",
                                                              align_corners=False).round()
    return canvas / 255, (top, left, nh, nw)


def _torch_label_map(wrapped, frame, mean, std, resize: str) -> tuple[np.ndarray, torch.Tensor]:
    x, (top, left, nh, nw) = _letterbox_ref(frame, resize)
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        logits = wrapped(x)
    size = frame.shape[:2]
    if resize == "stretch":  # transformers' own post-processing: interpolate the logits to the frame
        proc = transformers.SegformerImageProcessor()
        lm = proc.post_process_semantic_segmentation(SimpleNamespace(logits=logits), target_sizes=[size])[0]
        return lm.numpy(), x
    up = F.interpolate(logits, IN_HW, mode="bilinear", align_corners=False)[..., top:top + nh, left:left + nw]
    return F.interpolate(up, size, mode="bilinear", align_corners=False)[0].argmax(0).numpy(), x


def _check(bundle_dir, wrapped, mean, std, resize: str) -> float:
    """Pixel agreement of the bundle with the torch model on the frames; also that edgeseg's
    preprocessing feeds the model what the reference feeds it."""
    from edgeseg.runtime.model import Model
    from edgeseg.runtime.preprocess import InputSpec, preprocess

    model = Model.load(bundle_dir)
    spec = InputSpec.from_dict(model.manifest.input)
    agree = []
    for frame in _frames():
        ref, x_ref = _torch_label_map(wrapped, frame, mean, std, resize)
        counts = np.bincount(ref.ravel(), minlength=5) / ref.size
        assert (counts > 0.02).sum() >= 2, counts  # a map with classes to disagree on
        x, _ = preprocess(frame, spec)
        assert np.abs(x - x_ref.numpy()).mean() < 0.01
        agree.append(float((model(frame).label_map == ref).mean()))
    return min(agree)


def test_segformer_normalisation_from_its_preprocessor_config(models, tmp_path):
    path, wrapped = models["segformer"]
    r = cli("convert", str(path), "--fp32", "--names", NAMES, "--out", str(tmp_path / "b"))
    assert r.returncode == 0, r.stderr
    # the user is told where the normalisation came from
    assert "mean/std/resize from preprocessor_config.json beside the model" in r.stderr, r.stderr
    inp = json.loads((tmp_path / "b" / "edgeseg.json").read_text())["input"]
    assert inp["resize"] == "stretch" and inp["normalisation_from"]["mean"].startswith("preprocessor_config")
    assert inp["mean"] == pytest.approx(IMAGENET_MEAN) and inp["std"] == pytest.approx(IMAGENET_STD)
    agree = _check(tmp_path / "b", wrapped, IMAGENET_MEAN, IMAGENET_STD, "stretch")
    print(f"segformer: pixel agreement with the torch model {agree:.4f}")
    assert agree >= 0.99


def test_torchvision_lraspp_normalisation_from_onnx_metadata(models, tmp_path):
    from edgeseg.convert import convert

    path, wrapped = models["lraspp"]
    lines: list[str] = []
    b = convert(path, precision="fp32", names=NAMES, out=tmp_path / "b", fidelity=False, log=lines.append)
    assert any("mean/std from the ONNX metadata" in ln for ln in lines), lines
    assert b.manifest.input["normalisation_from"] == {"mean": "the ONNX metadata", "std": "the ONNX metadata"}
    agree = _check(b.path, wrapped, IMAGENET_MEAN, IMAGENET_STD, "letterbox")
    print(f"lraspp: pixel agreement with the torch model {agree:.4f}")
    assert agree >= 0.99


def test_torchvision_deeplabv3_normalisation_from_flags(models, tmp_path):
    from edgeseg.convert import convert

    path, wrapped = models["deeplabv3"]
    lines: list[str] = []
    b = convert(path, precision="fp32", names=NAMES, out=tmp_path / "b", fidelity=False, log=lines.append,
                mean=[255 * v for v in IMAGENET_MEAN], std=[255 * v for v in IMAGENET_STD])
    assert any("mean/std from --mean" in ln or "from --mean" in ln for ln in lines), lines
    agree = _check(b.path, wrapped, IMAGENET_MEAN, IMAGENET_STD, "letterbox")
    print(f"deeplabv3: pixel agreement with the torch model {agree:.4f}")
    assert agree >= 0.99


def test_yolo26_sem_matches_ultralytics_predictor_on_non_square_frames(tmp_path):
    """Ultralytics' semantic task (YOLO26n-sem from its yaml, random weights spread so that the picture
    decides the classes), its default ONNX export (argmax inside: class ids at input size), and
    Ultralytics' own predict of that ONNX on non-square frames: the bundle's maps are the same."""
    import importlib.util
    import subprocess
    import sys

    from conftest import ROOT

    if importlib.util.find_spec("ultralytics") is None:
        pytest.skip("the YOLO26-sem model and reference need ultralytics (AGPL-3.0): pip install ultralytics")
    frames = []
    for i, f in enumerate(_frames()):
        cv2.imwrite(str(tmp_path / f"f{i}.png"), f)
        frames.append(f)
    r = subprocess.run([sys.executable, str(ROOT / "tests" / "random_yolo26_sem.py"),
                        *[str(tmp_path / f"f{i}.png") for i in range(len(frames))]],
                       cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    from edgeseg.convert import convert
    from edgeseg.runtime.model import Model

    b = convert(tmp_path / "rand26-sem.onnx", precision="fp32", out=tmp_path / "b", fidelity=False,
                log=lambda m: None)
    assert b.manifest.head["output"] == "labels" and len(b.manifest.names) == 19
    model = Model.load(b.path)
    for i, frame in enumerate(frames):
        ref = np.load(tmp_path / f"onnx_{i}.npy")
        assert (np.bincount(ref.ravel()) / ref.size > 0.02).sum() >= 2  # a map with classes to disagree on
        agree = float((model(frame).label_map == ref).mean())
        rect = float((np.load(tmp_path / f"pt_{i}.npy") == ref).mean())
        print(f"yolo26n-sem frame {frame.shape[1]}x{frame.shape[0]}: agreement with Ultralytics' predict of the "
              f"ONNX {agree:.5f} (Ultralytics' .pt predict, rect letterbox, vs its ONNX predict: {rect:.4f})")
        assert agree >= 0.999
