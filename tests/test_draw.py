"""Annotated pictures read at a glance: checked on the pixels drawn, not on the drawing calls."""

import numpy as np
import pytest

from edgeseg.runtime.decode import FrameResult, Instance
from edgeseg.runtime.draw import color, draw, label_box, line_width, text_color

NAMES = ["circle", "rectangle", "triangle", "star", "hexagon"]
GRAY = 128


def _inst(cls: int, score: float, box, mask: bool = False) -> Instance:
    x1, y1, x2, y2 = box
    m = np.ones((y2 - y1, x2 - x1), dtype=bool) if mask else None
    return Instance(cls, f"class{cls}" if cls >= len(NAMES) else NAMES[cls], score, np.array(box, dtype=np.float32),
                    m, x1, y1)


def _frame(h: int = 240, w: int = 320) -> np.ndarray:
    return np.full((h, w, 3), GRAY, dtype=np.uint8)


def _fill_mask(out: np.ndarray, c) -> np.ndarray:
    return (out == np.array(c, dtype=np.uint8)).all(axis=2)


def _label_rect(out: np.ndarray, c, rows: slice, cols: slice):
    """Bounding box (x0, y0, x1, y1) of colour ``c`` inside ``rows`` x ``cols`` of ``out``."""
    ys, xs = np.nonzero(_fill_mask(out[rows, cols], c))
    assert ys.size, "no label drawn there"
    return (xs.min() + (cols.start or 0), ys.min() + (rows.start or 0),
            xs.max() + (cols.start or 0), ys.max() + (rows.start or 0))


def test_a_label_at_the_right_edge_is_moved_inside_the_frame_whole():
    """A box against the right edge: its label is shifted left, not cut ("triangle 0.7")."""
    h, w = 240, 320
    inst = _inst(2, 0.71, (w - 24, 100, w - 1, 140))
    out = draw(_frame(h, w), FrameResult(w, h, [inst], names=NAMES))
    c = color(2)
    x0, _, x1, _ = _label_rect(out, c, slice(0, 100), slice(0, w))  # the label sits above the box
    import cv2

    lw = line_width(h, w)
    (tw, _), _ = cv2.getTextSize("triangle 0.71", cv2.FONT_HERSHEY_SIMPLEX, max(lw / 3, 0.4), max(lw - 1, 1))
    assert x1 <= w - 1 and x1 - x0 + 1 >= tw, (x0, x1, tw)  # the whole text fits, inside the frame
    assert x0 < w - 24 - 10  # moved left of the box to make room


def test_a_label_at_the_top_edge_goes_inside_the_box():
    h, w = 240, 320
    inst = _inst(0, 0.9, (50, 0, 150, 80))
    out = draw(_frame(h, w), FrameResult(w, h, [inst], names=NAMES))
    _, y0, _, y1 = _label_rect(out, color(0), slice(2, 60), slice(52, 149))
    assert y0 >= 0 and y1 - y0 >= 8  # a label's height of fill below the top edge, not above the frame


@pytest.mark.parametrize("seed", range(5))
def test_label_boxes_always_inside_the_frame(seed):
    rng = np.random.default_rng(seed)
    for _ in range(200):
        h, w = int(rng.integers(40, 2000)), int(rng.integers(40, 2000))
        x1, y1 = float(rng.uniform(-50, w + 50)), float(rng.uniform(-50, h + 50))
        tw, th = int(rng.integers(5, 300)), int(rng.integers(5, 40))
        left, top, right, bottom = label_box(x1, y1, tw, th, 2, h, w)
        assert 0 <= left <= right < w and 0 <= top <= bottom < h, (h, w, x1, y1, tw, th)


def test_the_most_confident_label_is_drawn_on_top():
    """Two instances at the same place: whatever order decoding gave them in, the 0.91 label is
    the one seen (the old drawing put the 0.31 one over it)."""
    h, w = 240, 320
    hi, lo = _inst(0, 0.91, (100, 100, 200, 200), mask=True), _inst(3, 0.31, (100, 100, 200, 200), mask=True)
    for order in ([hi, lo], [lo, hi]):
        out = draw(_frame(h, w), FrameResult(w, h, order, names=NAMES))
        x0, y0, _, y1 = _label_rect(out, color(0), slice(60, 98), slice(90, 320))  # above the outline
        # the corner of the label (padding, no text there) is the confident class's colour
        assert tuple(out[y0, x0]) == color(0) and tuple(out[y1, x0]) == color(0)
        assert not _fill_mask(out[60:100], color(3)).any()  # the 0.31 label is wholly under it
        # the confident mask is on top as well: its colour dominates inside the box
        px = out[150, 150].astype(int)
        blend_hi = GRAY * 0.55 + np.array(color(0)) * 0.45
        assert np.abs(px - blend_hi).max() < np.abs(px - (GRAY * 0.55 + np.array(color(3)) * 0.45)).max()


def test_no_outline_crosses_a_label():
    """A second box whose edge runs through where the first box's label goes: the label stays
    whole (all outlines are drawn before any label)."""
    h, w = 240, 320
    a = _inst(0, 0.3, (100, 120, 220, 200))  # its label sits above y=120, from x=100 rightwards
    b = _inst(1, 0.9, (140, 60, 260, 230))  # its left edge x=140 and top y=60 cross that place
    out = draw(_frame(h, w), FrameResult(w, h, [a, b], names=NAMES))
    x0, y0, x1, y1 = _label_rect(out, color(0), slice(90, 119), slice(98, 140))
    rect = out[y0:y1 + 1, x0:x1 + 1]
    assert not _fill_mask(rect, color(1)).any()  # b's outline colour nowhere inside a's label


@pytest.mark.parametrize("cls", range(20))
def test_label_text_contrasts_with_its_colour(cls):
    """Black text on light labels (yellow, pink), white on dark: the text's luminance differs from
    the label's by at least half the range."""
    h, w = 240, 320
    inst = _inst(cls, 0.88, (60, 100, 250, 200))
    out = draw(_frame(h, w), FrameResult(w, h, [inst], names=[f"class{cls}"] * 20))
    c = color(cls)
    x0, y0, x1, y1 = _label_rect(out, c, slice(60, 99), slice(58, 320))
    rect = out[y0:y1 + 1, x0:x1 + 1].astype(float)
    luma = rect @ np.array([0.114, 0.587, 0.299])  # BGR
    fill = np.array(c, dtype=float) @ np.array([0.114, 0.587, 0.299])
    text = luma[np.abs(luma - fill) > 1]
    assert text.size > 20  # some text was drawn
    extreme = text.min() if text_color(c) == (0, 0, 0) else text.max()
    assert abs(extreme - fill) > 100, (c, fill, extreme)


def test_line_width_and_text_follow_the_frame_size():
    small, big = _frame(320, 320), _frame(1080, 1920)
    inst_s, inst_b = _inst(0, 0.9, (50, 80, 150, 200)), _inst(0, 0.9, (300, 400, 900, 1000))
    out_s = draw(small, FrameResult(320, 320, [inst_s], names=NAMES))
    out_b = draw(big, FrameResult(1920, 1080, [inst_b], names=NAMES))
    thick_s = _fill_mask(out_s[150:151, 40:70], color(0)).sum()  # the left edge, in one row
    thick_b = _fill_mask(out_b[700:701, 280:330], color(0)).sum()
    assert thick_s == line_width(320, 320) + 1 - line_width(320, 320) % 2  # cv2 centres the line
    assert thick_b > thick_s and thick_b >= line_width(1080, 1920)
    lab_s = _label_rect(out_s, color(0), slice(0, 80 - 2), slice(0, 320))  # above the outline
    lab_b = _label_rect(out_b, color(0), slice(0, 400 - 3), slice(0, 1920))
    assert lab_b[3] - lab_b[1] >= 1.6 * (lab_s[3] - lab_s[1])  # the label grows with the frame


def test_text_is_only_drawn_when_asked():
    """No figure burned into a picture unless the caller passes one (live views pass the FPS)."""
    h, w = 240, 320
    res = FrameResult(w, h, [_inst(0, 0.9, (150, 150, 250, 230))], names=NAMES)
    plain, fps = draw(_frame(h, w), res), draw(_frame(h, w), res, text="31.2 FPS")
    assert (plain[:30, :120] == GRAY).all() and (fps[:30, :120] != GRAY).any()
