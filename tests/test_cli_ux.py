"""A command line that never surprises: --version, -h, help for every flag, what was found per
image, a model file recognised, progress lines in a log, a fidelity verdict, a dataset folder."""

import io
import json
import subprocess
import sys
import time

import pytest
from conftest import DATA_YAML, MODEL, VAL_IMAGES, cli
from typer.main import get_command

from edgeseg import __version__
from edgeseg.cli import app, command
from edgeseg.fidelity_verdict import verdict
from edgeseg.progress import track

COMMANDS = sorted(get_command(app).commands)


def test_version_and_short_help():
    r = cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"edgeseg {__version__}"
    for cmd in [[], *([c] for c in COMMANDS)]:
        r = cli(*cmd, "-h")
        assert r.returncode == 0 and "Usage: edgeseg" in r.stdout, (cmd, r.stderr)


@pytest.mark.parametrize("name", COMMANDS)
def test_every_flag_has_help_and_on_off_flags_take_no_value(name):
    sub = command().commands[name]
    missing = [p.opts[0] for p in sub.params if p.param_type_name == "option" and not (p.help or "").strip()]
    assert not missing, f"edgeseg {name}: no help for {missing}"
    r = subprocess.run([sys.executable, "-m", "edgeseg", name, "--help"], check=False, capture_output=True, text=True,
                       env={"COLUMNS": "200", "PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path)})
    assert r.returncode == 0 and "<bool>" not in r.stdout, r.stdout
    # rich reads [words] in help as markup and drops them ("the target profile's , e.g.")
    assert " , " not in r.stdout and "'s ," not in r.stdout, r.stdout


def test_run_without_a_sink_says_what_each_image_holds(fp32_bundle):
    r = cli("run", str(fp32_bundle.path), "--source", str(VAL_IMAGES / "0000[0-3].jpg"))
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("image ")]
    assert len(lines) == 4, r.stdout
    import re

    for k, ln in enumerate(lines, 1):
        m = re.fullmatch(rf"image {k}/4 0000{k - 1}\.jpg (\d+)x(\d+): (.+), (\d+\.\d) ms", ln)
        assert m, ln
        found = m.group(3)
        assert found == "no objects" or all(re.fullmatch(r"\d+ [a-z]+", part) for part in found.split(", ")), ln
    # the counts are the JSON's
    r = cli("run", str(fp32_bundle.path), "--source", str(VAL_IMAGES / "00000.jpg"), "--json", "-")
    rec = json.loads(r.stdout.splitlines()[0])
    names = [i["class_name"] for i in rec["instances"]]
    first = lines[0].split(": ", 1)[1].rsplit(", ", 1)[0]
    assert sorted(first.split(", ")) == sorted(f"{names.count(n)} {n}" for n in set(names))


def test_a_model_file_where_a_bundle_goes_names_the_convert_command(tmp_path):
    r = cli("run", str(MODEL), "--source", str(VAL_IMAGES))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert "this is a model" in lines[0] and f"edgeseg convert {MODEL} --target onnxruntime" in lines[0]


def test_eval_takes_a_folder_with_labels_beside_it(fp32_bundle, tmp_path):
    """`eval --data some/val/images`: the same figures as the dataset YAML naming that folder."""
    by_yaml, by_folder = tmp_path / "y.json", tmp_path / "f.json"
    for data, out in ((DATA_YAML, by_yaml), (VAL_IMAGES, by_folder)):
        r = cli("eval", str(fp32_bundle.path), "--data", str(data), "--limit", "6", "--json", str(out))
        assert r.returncode == 0, r.stderr
    a, b = json.loads(by_yaml.read_text()), json.loads(by_folder.read_text())
    assert a["mask_map50_95"] > 0.3 and a == b


def test_progress_is_plain_lines_in_a_log():
    out = io.StringIO()  # not a terminal
    got = list(track(range(4), "calibration", stream=out, every_s=0))
    assert got == [0, 1, 2, 3]
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("calibration: 1/4 images, ") and "left" in lines[0]
    assert lines[-1].startswith("calibration: 4/4 images, ") and "left" not in lines[-1]
    assert "\x1b" not in out.getvalue() and "\r" not in out.getvalue()


@pytest.mark.slow
def test_convert_piped_to_a_file_shows_each_stage_as_it_happens(tmp_path):
    """`make demo > log`: each stage is a line when it starts, not a blank line after half a minute."""
    p = subprocess.Popen([sys.executable, "-m", "edgeseg", "convert", "--target", "onnxruntime", "--calib-images", "24",
                          "--out", str(tmp_path / "b")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in p.stderr:
        seen.append((time.monotonic(), line.rstrip("\n")))
    p.wait(timeout=600)
    end = time.monotonic()
    assert p.returncode == 0, seen
    text = [ln for _, ln in seen]
    assert all(ln.strip() for ln in text), text  # no blank lines
    stages = ["converting ", "onnxruntime: building the int8 model, calibrating on 24 images", "calibration: ",
              "measuring fidelity", "fidelity on "]
    at = [next(i for i, ln in enumerate(text) if ln.startswith(s)) for s in stages]
    assert at == sorted(at), text
    first_cal = next(t for t, ln in seen if ln.startswith("calibration: "))
    assert end - first_cal > 1.0  # printed while the work went on, not flushed at the end
    assert "INT8 keeps " in text[at[-1]] and (": good" in text[at[-1]] or ": fair" in text[at[-1]]), text[at[-1]]
    assert "\x1b" not in p.stdout.read()


def test_fidelity_verdicts():
    assert verdict({"detections_kept": 0.9655, "mean_mask_iou": 0.9852, "cosine": {"box": 0.999}}) == \
        "INT8 keeps 97% of detections, mask IoU 0.99: good"
    assert verdict({"detections_kept": 0.9, "mean_mask_iou": 0.97}).endswith(": fair")
    poor = verdict({"detections_kept": 0.0, "mean_mask_iou": None, "cosine": {"cls": 0.0}})
    assert poor.startswith("INT8 keeps 0% of detections: poor") and "--calib" in poor
    assert verdict({"pixel_agreement": 0.991}, "fp16") == "FP16 agrees with FP32 on 99% of pixels: good"
    assert (verdict({"cosine": {"box": 0.999, "cls": 0.96}})
            == "INT8 outputs follow FP32 (lowest cosine 0.960, cls): fair")
    assert verdict({}) == "not measured"
