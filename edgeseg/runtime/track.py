"""Object identities across frames: a ByteTrack-style tracker on numpy, and what ``--track`` adds
to a run (timestamps, events, counts, trails).

ByteTrack (Zhang et al., 2022): detections above the confidence threshold are matched to the
tracks first; the low-score ones (an object half hidden or blurred) then extend the tracks left
unmatched instead of being thrown away. Motion is a constant-velocity Kalman filter on box centre
and size, advanced by each frame's own timestamp: the pipeline drops the oldest frame when
inference lags, so the time between two processed frames varies. Where the boxes of neighbours
overlap, the masks decide (box IoU cannot tell two crossing objects apart; mask IoU can).

The filter's four coordinates are independent (diagonal noise), so each is a 2-state filter and
all tracks advance together in a few elementwise numpy operations: no per-track matrices.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import EdgesegError, ToolchainMissing
from .decode import FrameResult, Instance

if TYPE_CHECKING:
    from .model import Model
    from .sources import Frame, Source

TENTATIVE, TRACKED, LOST = 0, 1, 2
REF_PERIOD_S = 1 / 30  # ByteTrack's noise figures are per frame of a 30 FPS video
STD_POS, STD_VEL = 1 / 20, 1 / 160  # ByteTrack's, relative to the box size
LOW_SCORE = 0.1  # ByteTrack's second-stage floor: what the decoder keeps while tracking
AMBIGUOUS_IOU = 0.1  # a track whose predicted box meets two detections (or the reverse) asks the masks
DUPLICATE_IOU = 0.7  # two boxes of different classes on one object (class-wise NMS keeps both): one track
BUFFER = 0.3  # C-BIoU's box growth for matching (Yang et al., 2023): irregular motion, dropped frames


def _solver() -> Callable:
    try:
        import lap
    except ImportError:
        from ..install import pip_extra

        raise ToolchainMissing(f"tracking needs the lap package (a linear assignment solver): {pip_extra('track')}"
                               ) from None
    return lap.lapjv


def assign(cost: np.ndarray, limit: float, lapjv: Callable) -> list[tuple[int, int]]:
    """Pairs (row, col) of least total cost, none dearer than ``limit``."""
    if cost.size == 0:
        return []
    _, x, _ = lapjv(cost, extend_cost=True, cost_limit=limit)
    return [(i, int(j)) for i, j in enumerate(x) if j >= 0]


def box_iou(a: np.ndarray, b: np.ndarray, buffer: float = 0.0) -> np.ndarray:
    """[len(a), len(b)] IoU of x1y1x2y2 boxes, each grown by ``buffer`` times its size on every
    side first (C-BIoU: a box that moved further than its prediction still overlaps)."""
    if buffer:
        a, b = (np.concatenate([x[:, :2] - buffer * (x[:, 2:] - x[:, :2]),
                                x[:, 2:] + buffer * (x[:, 2:] - x[:, :2])], axis=1) for x in (a, b))
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.maximum(rb - lt, 0)  # products spelt out: np.prod and np.clip cost more than the maths at 20 boxes
    inter = wh[..., 0] * wh[..., 1]
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def mask_iou(a: np.ndarray, ax: int, ay: int, area_a: int, b: np.ndarray, bx: int, by: int, area_b: int) -> float:
    """IoU of two box-cropped masks placed at (ax, ay) and (bx, by) in the frame, of known areas."""
    x0, y0 = max(ax, bx), max(ay, by)
    x1, y1 = min(ax + a.shape[1], bx + b.shape[1]), min(ay + a.shape[0], by + b.shape[0])
    inter = 0
    if x1 > x0 and y1 > y0:
        inter = int(np.count_nonzero(a[y0 - ay:y1 - ay, x0 - ax:x1 - ax] & b[y0 - by:y1 - by, x0 - bx:x1 - bx]))
    union = area_a + area_b - inter
    return inter / union if union else 0.0


class Tracker:
    """ByteTrack on numpy: ``update(instances, t)`` returns the instances that belong to a
    confirmed track, each with its ``track_id`` set, plus the ids that appeared and left.

    ``high``: detections at or above it are matched first and may start tracks; ``low``: the
    floor for the second stage; ``lost_frames``: how many processed frames a track survives
    unseen (an occlusion) before it is dropped and reported as left; ``min_hits``: frames a new
    track needs before it gets an id (1 = at once), so that a one-frame false detection is no
    object. The first frame confirms at once, as ByteTrack does.
    """

    def __init__(self, high: float = 0.25, low: float = LOW_SCORE, lost_frames: int = 30, min_hits: int = 2,
                 match_cost: float = 0.8, low_match_cost: float = 0.5, new_match_cost: float = 0.7,
                 use_masks: bool = True, buffer: float = BUFFER):
        if not 0 <= low <= high <= 1:
            raise EdgesegError(f"tracker: expected 0 <= low ({low}) <= high ({high}) <= 1")
        self.lapjv = _solver()
        self.high, self.low, self.lost_frames, self.min_hits = high, low, lost_frames, min_hits
        self.match_cost, self.low_match_cost, self.new_match_cost = match_cost, low_match_cost, new_match_cost
        self.use_masks, self.buffer = use_masks, buffer
        self.frame = 0
        self.t: float | None = None
        self.next_id = 1
        # one row per track (structure of arrays, so predicting 20 tracks is one numpy call)
        self.ids = np.zeros(0, dtype=np.int64)  # 0 while tentative
        self.state = np.zeros(0, dtype=np.int8)
        self.hits = np.zeros(0, dtype=np.int64)
        self.seen = np.zeros(0, dtype=np.int64)  # frame last matched
        self.x = np.zeros((0, 4))  # cx, cy, w, h
        self.v = np.zeros((0, 4))  # their rates, per second
        self.p = np.zeros((0, 4, 3))  # per coordinate: var(pos), cov(pos, vel), var(vel)
        self.obs = np.zeros((0, 4))  # the box last seen, x1y1x2y2
        # mask, its x and y, the box centre then: for mask IoU where boxes overlap
        self.masks: list[tuple[np.ndarray, int, int, float, float] | None] = []
        self.class_names: list[str] = []

    def __len__(self) -> int:
        return int(np.count_nonzero(self.state != TENTATIVE))

    @staticmethod
    def _scale(xywh: np.ndarray) -> np.ndarray:
        return xywh[..., [2, 3, 2, 3]]  # x and w scale with the width, y and h with the height

    def _predict(self, dt: float) -> None:
        if not len(self.x) or dt <= 0:
            return
        s = dt / REF_PERIOD_S  # noise grows with the time elapsed, not with the frame count
        size = self._scale(self.x)
        p00, p01, p11 = self.p[..., 0], self.p[..., 1], self.p[..., 2]
        q_pos, q_vel = (STD_POS * size) ** 2 * s, (STD_VEL * size / REF_PERIOD_S) ** 2 * s
        self.x = self.x + dt * self.v
        self.x[:, 2:] = np.maximum(self.x[:, 2:], 1.0)
        self.p = np.stack([p00 + 2 * dt * p01 + dt * dt * p11 + q_pos, p01 + dt * p11, p11 + q_vel], axis=-1)

    def _correct(self, rows: np.ndarray, z: np.ndarray) -> None:
        r = (STD_POS * self._scale(z)) ** 2
        p = self.p[rows]
        p00, p01, p11 = p[..., 0], p[..., 1], p[..., 2]
        k0, k1 = p00 / (p00 + r), p01 / (p00 + r)
        y = z - self.x[rows]
        self.x[rows] += k0 * y
        self.v[rows] += k1 * y
        self.p[rows] = np.stack([(1 - k0) * p00, (1 - k0) * p01, p11 - k1 * p01], axis=-1)

    def boxes(self) -> np.ndarray:
        """The tracks' current (predicted or corrected) boxes, x1y1x2y2."""
        c, wh = self.x[:, :2], self.x[:, 2:] / 2
        return np.concatenate([c - wh, c + wh], axis=1)

    def _similarity(self, rows: np.ndarray, det_boxes: np.ndarray, dets: list[Instance],
                    observed: bool = False) -> np.ndarray:
        track_boxes = (self.obs if observed else self.boxes())[rows]
        sim = box_iou(track_boxes, det_boxes, self.buffer)
        if not self.use_masks or sim.size == 0:
            return sim
        near = box_iou(track_boxes, det_boxes) > AMBIGUOUS_IOU  # really overlapping, not by the buffer
        ambiguous = near & ((near.sum(1) > 1)[:, None] | (near.sum(0) > 1)[None, :])
        areas: dict[int, int] = {}
        for i, j in zip(*np.nonzero(ambiguous)):
            last, d = self.masks[rows[i]], dets[j]
            if last is None or d.mask is None:
                continue
            m, mx, my, cx, cy = last
            if j not in areas:
                areas[j] = int(np.count_nonzero(d.mask))
            # the last mask, moved by the predicted motion of the box centre
            dx, dy = (0, 0) if observed else (round(self.x[rows[i], 0] - cx), round(self.x[rows[i], 1] - cy))
            sim[i, j] = mask_iou(m, mx + dx, my + dy, int(np.count_nonzero(m)), d.mask, d.mask_x, d.mask_y, areas[j])
        return sim

    def _match(self, rows: np.ndarray, cols: np.ndarray, dets: list[Instance], boxes: np.ndarray,
               scores: np.ndarray, limit: float, fuse: bool,
               observed: bool = False) -> tuple[list[tuple[int, int]], np.ndarray, np.ndarray]:
        if not len(rows) or not len(cols):
            return [], rows, cols
        sim = self._similarity(rows, boxes[cols], [dets[j] for j in cols], observed)
        if fuse:  # ByteTrack's fuse_score: a confident detection wins a tie
            sim = sim * scores[cols][None, :]
        pairs = [(int(rows[i]), int(cols[j])) for i, j in assign(1 - sim, limit, self.lapjv)]
        mr, mc = {r for r, _ in pairs}, {c for _, c in pairs}
        return pairs, np.array([r for r in rows if r not in mr], dtype=np.int64), \
            np.array([c for c in cols if c not in mc], dtype=np.int64)

    def _take(self, pairs: list[tuple[int, int]], dets: list[Instance], xywh: np.ndarray) -> None:
        if not pairs:
            return
        rows, cols = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
        self._correct(rows, xywh[cols])
        self.obs[rows] = np.concatenate([xywh[cols, :2] - xywh[cols, 2:] / 2, xywh[cols, :2] + xywh[cols, 2:] / 2], 1)
        self.hits[rows] += 1
        self.seen[rows] = self.frame
        for r, c in pairs:
            d = dets[c]
            self.masks[r] = self._mask_of(d, xywh[c])
            self.class_names[r] = d.class_name

    def update(self, instances: list[Instance], t: float) -> tuple[list[Instance], list[int], list[tuple[int, str]]]:
        """Associate this frame's ``instances`` (captured at ``t`` seconds) with the tracks.

        Returns (the instances of confirmed tracks, their ``track_id`` set, in their order;
        the ids confirmed now; (id, class name) of the tracks dropped now)."""
        self.frame += 1
        instances = self._one_per_object(instances)
        self._predict(0.0 if self.t is None else t - self.t)
        self.t = t if self.t is None else max(self.t, t)  # a clock that steps back predicts nothing
        n = len(instances)
        boxes = np.array([i.box for i in instances], dtype=np.float64).reshape(n, 4)
        scores = np.array([i.score for i in instances], dtype=np.float64)
        xywh = np.concatenate([(boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]], axis=1)
        high = np.nonzero(scores >= self.high)[0]
        low = np.nonzero((scores >= self.low) & (scores < self.high))[0]
        known = np.nonzero(self.state != TENTATIVE)[0]
        tentative = np.nonzero(self.state == TENTATIVE)[0]
        matched: list[tuple[int, int]] = []

        # 1. confident detections against every known track, lost ones included (they come back)
        pairs, rest_tracks, rest_high = self._match(known, high, instances, boxes, scores, self.match_cost, True)
        matched += pairs
        # 2. the weak ones can only extend a track that was seen last frame (ByteTrack's rule)
        recent = rest_tracks[self.state[rest_tracks] == TRACKED] if len(rest_tracks) else rest_tracks
        pairs, _, _ = self._match(recent, low, instances, boxes, scores, self.low_match_cost, False)
        matched += pairs
        # 2b. OC-SORT's recovery: a track whose motion changed (turned, stopped) is where it was last
        # seen, not where its velocity took it; match what is left by that box
        taken = {r for r, _ in pairs}
        rest_tracks = np.array([r for r in rest_tracks if r not in taken], dtype=np.int64)
        pairs, _, rest_high = self._match(rest_tracks, rest_high, instances, boxes, scores, self.match_cost, True,
                                          observed=True)
        matched += pairs
        self._take(matched, instances, xywh)
        self.state[[r for r, _ in matched]] = TRACKED
        # 3. what is left of the confident ones against the tracks still waiting for confirmation
        pairs, _, rest_high = self._match(tentative, rest_high, instances, boxes, scores, self.new_match_cost, True)
        self._take(pairs, instances, xywh)
        matched += pairs
        appeared = []
        for r, _ in pairs:
            if self.hits[r] >= self.min_hits:
                self.state[r], self.ids[r] = TRACKED, self.next_id
                appeared.append(self.next_id)
                self.next_id += 1
        # 4. new tracks (on the first frame confirmed at once: there is no history to wait for)
        first = self.frame == 1
        for c in rest_high:
            self._add(instances[c], xywh[c], confirmed=first or self.min_hits <= 1)
            if first or self.min_hits <= 1:
                appeared.append(int(self.ids[-1]))
                matched.append((len(self.ids) - 1, int(c)))
        # 5. tracks unseen this frame are lost; lost for too long, or tentative and unseen, gone
        unseen = self.seen < self.frame
        self.state[unseen & (self.state == TRACKED)] = LOST
        drop = unseen & ((self.state == TENTATIVE) | (self.frame - self.seen > self.lost_frames))
        left = [(int(i), c) for i, c, d in zip(self.ids, self.class_names, drop) if d and i > 0]
        out_rows = {c: r for r, c in matched if self.ids[r] > 0}
        out = []
        for c, inst in enumerate(instances):
            if c in out_rows:
                inst.track_id = int(self.ids[out_rows[c]])
                out.append(inst)
        if drop.any():
            self._keep(~drop)
        return out, appeared, left

    @staticmethod
    def _one_per_object(instances: list[Instance]) -> list[Instance]:
        """Class-wise NMS keeps two boxes of different classes on one object; tracking wants one.
        The weaker goes when the boxes overlap by DUPLICATE_IOU and, if both have masks, the
        masks too (two objects crossing share a box, not a mask)."""
        if len(instances) < 2:
            return instances
        iou = box_iou(*(np.array([i.box for i in instances], dtype=np.float64),) * 2)
        if not (np.triu(iou, 1) > DUPLICATE_IOU).any():
            return instances
        order = sorted(range(len(instances)), key=lambda k: -instances[k].score)
        kept: list[int] = []
        for k in order:
            a = instances[k]
            if not any(iou[k, j] > DUPLICATE_IOU and (
                    a.mask is None or (b := instances[j]).mask is None
                    or mask_iou(a.mask, a.mask_x, a.mask_y, a.area, b.mask, b.mask_x, b.mask_y, b.area) > DUPLICATE_IOU)
                       for j in kept):
                kept.append(k)
        return [instances[k] for k in sorted(kept)]

    def _add(self, inst: Instance, xywh: np.ndarray, confirmed: bool) -> None:
        size = self._scale(xywh)
        p0 = np.stack([(2 * STD_POS * size) ** 2, np.zeros(4), (10 * STD_VEL * size / REF_PERIOD_S) ** 2], axis=-1)
        self.ids = np.append(self.ids, self.next_id if confirmed else 0)
        self.next_id += int(confirmed)
        self.state = np.append(self.state, np.int8(TRACKED if confirmed else TENTATIVE))
        self.hits = np.append(self.hits, 1)
        self.seen = np.append(self.seen, self.frame)
        self.x = np.vstack([self.x, xywh[None]])
        self.v = np.vstack([self.v, np.zeros((1, 4))])
        self.p = np.concatenate([self.p, p0[None]])
        self.obs = np.vstack([self.obs, np.concatenate([xywh[:2] - xywh[2:] / 2, xywh[:2] + xywh[2:] / 2])[None]])
        self.masks.append(self._mask_of(inst, xywh))
        self.class_names.append(inst.class_name)

    @staticmethod
    def _mask_of(inst: Instance, xywh: np.ndarray) -> tuple | None:
        if inst.mask is None:
            return None
        return inst.mask, inst.mask_x, inst.mask_y, float(xywh[0]), float(xywh[1])

    def _keep(self, keep: np.ndarray) -> None:
        for k in ("ids", "state", "hits", "seen", "x", "v", "p", "obs"):
            setattr(self, k, getattr(self, k)[keep])
        self.masks = [m for m, k in zip(self.masks, keep) if k]
        self.class_names = [c for c, k in zip(self.class_names, keep) if k]


class Tracking:
    """What ``--track`` (and ``model.track``) adds to each frame: ``track_id`` on the instances,
    ``result.events`` and ``result.counts``, and on the picture a colour per track, its trail,
    the counting line or zone and the counts.

    ``fps``: for a file source, its frame rate, so that time is the video's own (frame index /
    fps) and not the moment it was read; None for a live source, whose capture times are real.
    """

    def __init__(self, high: float = 0.25, low: float = LOW_SCORE, lost_frames: int = 30, fps: float | None = None,
                 line: str | list[float] | None = None, zone: str | list[float] | None = None, trail: int = 30,
                 min_hits: int = 2):
        from .events import EventCounter

        self.tracker = Tracker(high=high, low=low, lost_frames=lost_frames, min_hits=min_hits)
        self.counter = EventCounter(line=line, zone=zone)
        self.fps = fps
        self.trail = trail
        self.trails: dict[int, deque[tuple[int, int]]] = {}
        self._restore: tuple[Any, float] | None = None
        self.last_ms = 0.0
        self.options: dict = {}  # what model.track(frame, **options) built this with

    def __call__(self, frame: Frame, result: FrameResult) -> FrameResult:
        t = frame.time if self.fps is None else frame.index / self.fps
        return self.update(result, t, frame.index)

    def update(self, result: FrameResult, t: float, index: int = 0) -> FrameResult:
        if result.label_map is not None:
            raise EdgesegError("--track follows instances; a semantic bundle has none (use a YOLO-seg bundle)")
        t0 = time.perf_counter()
        result.instances, appeared, left = self.tracker.update(result.instances, t)
        result.events, result.counts = self.counter.update(result.instances, appeared, left, index, t,
                                                              result.width, result.height)
        if self.trail:
            for inst in result.instances:
                x1, y1, x2, y2 = inst.box
                self.trails.setdefault(inst.track_id, deque(maxlen=self.trail)).append(
                    (int((x1 + x2) / 2), int((y1 + y2) / 2)))
            for tid, _ in left:
                self.trails.pop(tid, None)
        self.last_ms = (time.perf_counter() - t0) * 1e3
        return result

    def summary(self) -> str:
        """One line for the end of a run: objects tracked and the counts."""
        c = self.counter
        text = f"tracked {self.tracker.next_id - 1} objects"
        if c.line_spec is not None:
            text += (f", line in {sum(v['in'] for v in c.line_counts.values())} "
                     f"out {sum(v['out'] for v in c.line_counts.values())}")
        if c.zone_spec is not None:
            text += f", zone entered {c.zone_counts['entered']} exited {c.zone_counts['exited']}"
        return text

    def draw(self, img: np.ndarray) -> np.ndarray:
        """Trails, the counting line or zone, and the counts, on an annotated frame (in place)."""
        import cv2

        from .draw import color

        for tid, pts in self.trails.items():
            if len(pts) > 1:
                cv2.polylines(img, [np.array(pts, dtype=np.int32)], False, color(tid), 2, cv2.LINE_AA)
        self.counter.draw(img)
        return img

    def attach(self, model: Model) -> Tracking:
        """Let ``model`` decode down to the low threshold while tracking (ByteTrack's second
        stage needs the weak detections); ``close()`` gives the model its threshold back."""
        self._restore = (model.thresholds, model.thresholds.conf)
        model.thresholds.conf = min(model.thresholds.conf, self.tracker.low)
        return self

    def close(self) -> None:
        if self._restore is not None:
            thresholds, conf = self._restore
            thresholds.conf = conf
            self._restore = None

    def __enter__(self) -> Tracking:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def tracking_for(model: Model, source: Source | None = None, **options: Any) -> Tracking:
    """A :class:`Tracking` for ``model`` on ``source``: the model's confidence threshold becomes
    the tracker's high one, its decoder keeps the low ones, and a file source's time is its own."""
    if model.manifest.head.get("type") == "semantic":
        raise EdgesegError(f"{model.bundle.path}: --track follows instances; this is a semantic bundle "
                           "(use a YOLO-seg bundle)")
    fps = None
    if source is not None and not source.live:
        fps = float(getattr(source, "fps", 0) or 30.0)
    options.setdefault("high", model.thresholds.conf)
    options.setdefault("low", min(LOW_SCORE, options["high"]))
    return Tracking(fps=fps, **options).attach(model)


def track_frame(model: Model, frame: np.ndarray, t: float | None = None, reset: bool = False,
                **options: Any) -> FrameResult:
    """``model.track(frame)``: one frame, tracked against the frames of the previous calls.
    ``t``: its capture time in seconds (default: now); ``reset``: forget the previous frames."""
    tracking: Tracking | None = getattr(model, "_tracking", None)
    if tracking is None or reset or options != tracking.options:
        tracking = tracking_for(model, None, **options)
        tracking.close()  # the model keeps the user's threshold between calls; lowered per call below
        tracking.options = options
        model._tracking = tracking  # type: ignore[attr-defined]
    conf = model.thresholds.conf
    model.thresholds.conf = min(conf, tracking.tracker.low)
    try:
        result = model(frame)
    finally:
        model.thresholds.conf = conf
    return tracking.update(result, time.time() if t is None else t)


def check_run_options(line: str | None, zone: str | None, mqtt: str | None) -> None:
    """``edgeseg run``'s tracking and publishing flags, checked before the model loads."""
    from .events import parse_points

    parse_points(line, "--line", 2, 2)
    parse_points(zone, "--zone", 3)
    if mqtt:
        from .mqtt import parse_url

        parse_url(mqtt)


def run_extras(model: Model, source: Source, *, track: bool, line: str | None, zone: str | None,
               mqtt: str | None, events_only: bool, ha: bool,
               on_event: Callable[[str], None]) -> tuple[Tracking | None, list]:
    """What ``edgeseg run --track/--line/--zone/--mqtt`` adds: the tracking step (``--line``,
    ``--zone``, ``--mqtt-events-only`` and ``--mqtt-ha`` imply ``--track``: their events and counts
    come from it) and the MQTT sink."""
    wanted = track or line or zone or (mqtt and (events_only or ha))
    tracking = tracking_for(model, source, line=line, zone=zone) if wanted else None
    sinks = []
    if mqtt:
        from .mqtt import MqttSink

        try:
            sinks.append(MqttSink(mqtt, events_only=events_only, ha_discovery=ha, names=model.names,
                                  source=source.name, on_event=on_event))
        except BaseException:
            if tracking is not None:
                tracking.close()
            raise
    return tracking, sinks


def bench_tracker(n_instances: int = 20, frames: int = 300, size: tuple[int, int] = (640, 480),
                  masks: bool = True, seed: int = 0) -> dict:
    """Tracking cost per frame (ms: median, p90) with ``n_instances`` moving objects, masks
    included, so ``edgeseg bench --track`` can report it; no model involved."""
    from .decode import Instance

    rng = np.random.default_rng(seed)
    w, h = size
    pos = rng.uniform([40, 40], [w - 40, h - 40], size=(n_instances, 2))
    vel = rng.uniform(-4, 4, size=(n_instances, 2))
    half = rng.uniform(12, 30, size=(n_instances, 1))
    tracking = Tracking(trail=30)
    times, cpu = [], []
    for f in range(frames):
        pos = pos + vel
        out = (pos < 30) | (pos > [w - 30, h - 30])
        vel[out] = -vel[out]  # bounce off the edges (clamped objects would pile up in the corners)
        insts = []
        for k in range(n_instances):
            x1, y1 = (pos[k] - half[k]).astype(int)
            side = int(2 * half[k, 0])
            mask = np.ones((side, side), dtype=bool) if masks else None
            insts.append(Instance(k % 5, "shape", float(0.3 + 0.7 * rng.random()),
                                  np.array([x1, y1, x1 + side, y1 + side], dtype=np.float32), mask, int(x1), int(y1)))
        res = FrameResult(w, h, insts)
        t0, c0 = time.perf_counter(), time.thread_time()
        tracking.update(res, f / 30, f)
        times.append((time.perf_counter() - t0) * 1e3)
        cpu.append((time.thread_time() - c0) * 1e3)
    times, cpu = times[10:], cpu[10:]
    # cpu_ms: this thread's CPU time, which other processes on a busy board do not inflate
    return {"instances": n_instances, "frames": len(times), "median_ms": round(float(np.median(times)), 4),
            "cpu_median_ms": round(float(np.median(cpu)), 4),
            "p90_ms": round(float(np.percentile(times, 90)), 4)}


def bench_figures(track_ms: list[float], n_instances: int = 20) -> dict:
    """What ``edgeseg bench --track`` adds: the tracker's ms per frame on the bundle's own frames
    (also inside its end_to_end_ms) and on ``n_instances`` synthetic moving objects with masks,
    the crowded case a budget is set for (median, p90, and the median CPU time of this thread)."""
    a = np.asarray(track_ms)
    syn = bench_tracker(n_instances, frames=300)
    return {"track_ms": {"median": round(float(np.median(a)), 3), "p90": round(float(np.percentile(a, 90)), 3)},
            "track_synthetic": syn}
