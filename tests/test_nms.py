import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeseg.runtime.nms import box_iou, nms


def scalar_iou(p, q):
    """IoU of two xyxy boxes, one overlap per axis, in Python floats: not edgeseg's code."""
    w = max(0.0, min(float(p[2]), float(q[2])) - max(float(p[0]), float(q[0])))
    h = max(0.0, min(float(p[3]), float(q[3])) - max(float(p[1]), float(q[1])))
    union = (float(p[2]) - float(p[0])) * (float(p[3]) - float(p[1])) + (float(q[2]) - float(q[0])) * (
        float(q[3]) - float(q[1])) - w * h
    return w * h / union if union > 0 else 0.0


def reference_nms(boxes, scores, classes, thr):
    """Plain greedy NMS, one class at a time, as torchvision.ops.batched_nms defines it."""
    keep = []
    for c in np.unique(classes):
        idx = [i for i in np.argsort(-scores, kind="stable") if classes[i] == c]
        while idx:
            i = idx.pop(0)
            keep.append(i)
            idx = [j for j in idx if scalar_iou(boxes[i], boxes[j]) <= thr]
    return sorted(keep, key=lambda i: (-scores[i], i))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(*[st.integers(0, 24)] * 4), min_size=1, max_size=6),
       st.lists(st.tuples(*[st.integers(0, 24)] * 4), min_size=1, max_size=6))
def test_box_iou_counts_the_shared_pixels(a, b):
    """box_iou against brute force: integer boxes as sets of unit cells, IoU = shared / covered."""
    def cells(x0, y0, x1, y1):
        return {(x, y) for x in range(x0, x1) for y in range(y0, y1)}

    a = [(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)) for x0, y0, x1, y1 in a]
    b = [(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)) for x0, y0, x1, y1 in b]
    got = box_iou(np.array(a, np.float32), np.array(b, np.float32))
    for i, p in enumerate(a):
        for j, q in enumerate(b):
            cp, cq = cells(*p), cells(*q)
            want = len(cp & cq) / len(cp | cq) if cp | cq else 0.0
            assert abs(got[i, j] - want) < 1e-6, (p, q, got[i, j], want)
            assert abs(scalar_iou(p, q) - want) < 1e-9  # the reference NMS's IoU, checked the same way


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 60), st.integers(0, 2**31 - 1), st.floats(0.1, 0.9))
def test_nms_matches_reference(n, seed, thr):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 100, (n, 2))
    wh = rng.uniform(1, 60, (n, 2))
    boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    scores = rng.permutation(n).astype(np.float32) / max(n, 1)  # distinct scores: a unique answer
    classes = rng.integers(0, 3, n)
    got = nms(boxes, scores, classes, thr, max_det=1000)
    assert list(got) == reference_nms(boxes, scores, classes, thr)


def test_nms_class_aware_and_max_det():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]], np.float32)
    scores = np.array([0.9, 0.8, 0.7], np.float32)
    assert list(nms(boxes, scores, np.array([0, 0, 1]), 0.5)) == [0, 2]
    assert list(nms(boxes, scores, np.array([0, 0, 1]), 0.5, agnostic=True)) == [0]
    assert list(nms(boxes, scores, np.array([0, 1, 2]), 0.5, max_det=2)) == [0, 1]


def test_degenerate_boxes_do_not_produce_nan():
    boxes = np.array([[5, 5, 5, 5], [5, 5, 5, 5]], np.float32)
    iou = box_iou(boxes, boxes)
    assert np.isfinite(iou).all()


@settings(max_examples=8, deadline=None)
@given(st.integers(65, 400), st.integers(0, 2**31 - 1), st.floats(0.1, 0.9), st.integers(1, 400))
def test_many_candidates_take_the_same_greedy_rule(n, seed, thr, max_det):
    """Above 64 candidates OpenCV's batched NMS does the work: the same answer, best first, cut at max_det."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 300, (n, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(1, 80, (n, 2))], 1).astype(np.float32)
    scores = rng.permutation(n).astype(np.float32) / n
    classes = rng.integers(0, 4, n)
    assert (list(nms(boxes, scores, classes, thr, max_det=max_det))
            == reference_nms(boxes, scores, classes, thr)[:max_det])
