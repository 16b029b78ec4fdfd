"""What tracked objects do: appear, leave, cross a counting line, enter or exit a zone.

A track's position is its box centre. A crossing is counted when the segment between two
consecutive positions of a track (the last one seen before an occlusion included) cuts the line;
``in`` is towards the right-hand side of the line as drawn from (x1, y1) to (x2, y2) on the
picture (a line drawn left to right: moving down is ``in``). A zone entry is counted when a
track's centre goes from outside the polygon to inside (or first appears inside it).
"""

from __future__ import annotations

import numpy as np

from ..errors import EdgesegError
from .decode import Instance


def parse_points(spec: str | list[float] | None, flag: str, min_points: int, max_points: int | None = None
                 ) -> np.ndarray | None:
    """``x,y,x,y,...`` as an [N, 2] array, in pixels; values all within 0..1 are fractions of the
    frame (resolved by :func:`to_pixels`)."""
    if spec is None:
        return None
    try:
        vals = [float(v) for v in spec.split(",")] if isinstance(spec, str) else [float(v) for v in spec]
    except ValueError:
        vals = []
    n = len(vals) // 2
    if not vals or len(vals) % 2 or n < min_points or (max_points and n > max_points) or \
            not all(np.isfinite(vals)) or min(vals) < 0:
        want = "x1,y1,x2,y2" if max_points == 2 else "x,y,x,y,x,y,... (3 points or more)"
        raise EdgesegError(f"{flag} {spec}: expected {want} in pixels, or all within 0..1 as fractions of the frame")
    return np.array(vals, dtype=np.float64).reshape(n, 2)


def to_pixels(points: np.ndarray, width: int, height: int) -> np.ndarray:
    return points * [width, height] if points.max() <= 1.0 else points


def _cross(o: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    return float((a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0]))


def crossing(a: np.ndarray, b: np.ndarray, p: np.ndarray, q: np.ndarray) -> int:
    """+1 if the move p -> q crosses the segment a -> b towards its right-hand side (on the
    picture, y down), -1 the other way, 0 if it does not cross."""
    d1, d2 = _cross(a, b, p), _cross(a, b, q)
    if (d1 > 0) == (d2 > 0):
        return 0
    d3, d4 = _cross(p, q, a), _cross(p, q, b)
    if d3 * d4 > 0:
        return 0  # the move passes beside the segment's end
    return 1 if d2 > 0 else -1


class EventCounter:
    """Per-frame events and running counts for the tracked instances of each frame."""

    def __init__(self, line: str | list[float] | None = None, zone: str | list[float] | None = None):
        self.line_spec = parse_points(line, "--line", 2, 2)
        self.zone_spec = parse_points(zone, "--zone", 3)
        self.line: np.ndarray | None = None
        self.zone: np.ndarray | None = None
        self.size: tuple[int, int] | None = None
        self.last: dict[int, np.ndarray] = {}  # track id -> last centre
        self.inside: set[int] = set()
        self.line_counts: dict[str, dict[str, int]] = {}  # class -> in/out
        self.zone_counts = {"entered": 0, "exited": 0}
        self.classes: dict[int, str] = {}

    def _resolve(self, width: int, height: int) -> None:
        if self.size != (width, height):
            self.size = (width, height)
            self.line = to_pixels(self.line_spec, width, height) if self.line_spec is not None else None
            self.zone = to_pixels(self.zone_spec, width, height).astype(np.float32) if self.zone_spec is not None \
                else None

    def update(self, instances: list[Instance], appeared: list[int], left: list[tuple[int, str]], frame: int,
               t: float, width: int = 0, height: int = 0) -> tuple[list[dict], dict]:
        """This frame's events (in the order they happened) and the counts after it."""
        import cv2

        self._resolve(width, height)
        events: list[dict] = []

        def event(kind: str, tid: int, cls: str, **extra: object) -> None:
            events.append({"event": kind, "track_id": tid, "class_name": cls, "frame": frame, "time": round(t, 6),
                           **extra})

        new = set(appeared)
        for inst in instances:
            tid = inst.track_id
            assert tid is not None
            self.classes[tid] = inst.class_name
            x1, y1, x2, y2 = inst.box.tolist()
            c = np.array([(x1 + x2) / 2, (y1 + y2) / 2])
            if tid in new:
                event("appeared", tid, inst.class_name)
            prev = self.last.get(tid)
            if self.line is not None and prev is not None:
                d = crossing(self.line[0], self.line[1], prev, c)
                if d:
                    way = "in" if d > 0 else "out"
                    self.line_counts.setdefault(inst.class_name, {"in": 0, "out": 0})[way] += 1
                    event("crossed", tid, inst.class_name, direction=way)
            if self.zone is not None:
                now_in = cv2.pointPolygonTest(self.zone, (float(c[0]), float(c[1])), False) >= 0
                if now_in and tid not in self.inside:
                    self.inside.add(tid)
                    self.zone_counts["entered"] += 1
                    event("entered", tid, inst.class_name)
                elif not now_in and tid in self.inside:
                    self.inside.discard(tid)
                    self.zone_counts["exited"] += 1
                    event("exited", tid, inst.class_name)
            self.last[tid] = c
        for tid, cls in left:
            event("left", tid, cls)
            self.last.pop(tid, None)
            self.inside.discard(tid)
            self.classes.pop(tid, None)
        return events, self.counts(instances)

    def counts(self, instances: list[Instance]) -> dict:
        classes: dict[str, int] = {}
        for inst in instances:
            classes[inst.class_name] = classes.get(inst.class_name, 0) + 1
        out: dict = {"tracks": len(instances), "classes": classes}
        if self.line_spec is not None:
            out["line"] = {"in": sum(v["in"] for v in self.line_counts.values()),
                           "out": sum(v["out"] for v in self.line_counts.values()),
                           "by_class": {k: dict(v) for k, v in self.line_counts.items()}}
        if self.zone_spec is not None:
            seen = {i.track_id for i in instances}
            out["zone"] = {"inside": len(self.inside & seen), **self.zone_counts}
        return out

    def draw(self, img: np.ndarray) -> None:
        import cv2

        h, w = img.shape[:2]
        self._resolve(w, h)
        labels = []
        if self.line is not None:
            a, b = (tuple(round(float(v)) for v in p) for p in self.line)
            cv2.arrowedLine(img, a, b, (0, 255, 255), 2, cv2.LINE_AA, tipLength=0.02)
            labels.append(f"in {sum(v['in'] for v in self.line_counts.values())}  "
                          f"out {sum(v['out'] for v in self.line_counts.values())}")
        if self.zone is not None:
            cv2.polylines(img, [self.zone.round().astype(np.int32)], True, (255, 255, 0), 2, cv2.LINE_AA)
            labels.append(f"entered {self.zone_counts['entered']}  exited {self.zone_counts['exited']}")
        for k, text in enumerate(labels):
            y = h - 10 - 22 * k
            cv2.putText(img, text, (8, y), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 3, cv2.LINE_AA)
            cv2.putText(img, text, (8, y), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1, cv2.LINE_AA)
