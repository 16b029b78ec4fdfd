"""`eval --report`: the worst-agreeing images first, then a spread; ground truth beside FP32 and
the converted bundle."""

import re

import cv2
import numpy as np
from conftest import DATA_YAML, VAL_IMAGES

from edgeseg.report_samples import WORST, choose


def test_choose_puts_the_worst_first_then_a_spread():
    scores = [0.9, 0.2, 1.0, 0.5, 0.95, 0.1, 0.7, 0.99, 0.3, 0.8]
    picked = choose(scores, worst=3, spread=(0.5, 1.0))
    assert picked[:3] == [5, 1, 8]  # 0.1, 0.2, 0.3
    assert [scores[i] for i in picked[3:]] == [0.9, 1.0]  # the median of the rest, then the best
    assert choose([0.5], worst=4) == [0] and choose([]) == []


def _report(folder):
    text = (folder / "report.md").read_text()
    caps = re.findall(r"!\[([^\]]+): agreement with (?:FP32|the labels) ([0-9.]+)\]\((side_by_side_\d+\.jpg)\)", text)
    return [(name, float(score), folder / pic) for name, score, pic in caps]


def test_report_shows_ground_truth_beside_fp32_and_int8_worst_first(int8_bundle, fp32_bundle, tmp_path):
    from edgeseg.eval import evaluate
    from edgeseg.runtime.model import Model

    model, ref = Model.load(int8_bundle.path), Model.load(fp32_bundle.path)
    evaluate(model, DATA_YAML, against=ref, report=tmp_path / "r", limit=30, progress=False)
    shown = _report(tmp_path / "r")
    assert len(shown) == WORST + 2, shown
    scores = [s for _, s, _ in shown]
    assert scores[:WORST] == sorted(scores[:WORST]) and max(scores[:WORST]) <= min(scores[WORST:]), scores
    for name, _, pic in shown:
        frame = cv2.imread(str(VAL_IMAGES / name))
        img = cv2.imread(str(pic))
        h, w = frame.shape[:2]
        assert img.shape[1] == 3 * w and img.shape[0] > h  # three panels, each with a caption strip
        strip = img.shape[0] - h
        panels = [img[strip:, k * w:(k + 1) * w].astype(int) for k in range(3)]
        # every panel is the frame with something drawn on it (labels: ground truth has them)
        assert all(np.abs(p - frame).mean() > 1 for p in panels[:1]), name
    # without a reference: ground truth beside the bundle
    evaluate(model, DATA_YAML, report=tmp_path / "g", limit=12, progress=False)
    shown = _report(tmp_path / "g")
    assert shown and all(cv2.imread(str(p)).shape[1] == 2 * cv2.imread(str(VAL_IMAGES / n)).shape[1]
                         for n, _, p in shown)
