"""Where results go: a window, an annotated video or image folder, and a JSON-lines file."""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, TextIO

import cv2
import numpy as np

from ..data import IMAGE_SUFFIXES
from ..errors import EdgesegError
from .decode import FrameResult
from .sources import VIDEO_SUFFIXES, Frame


class Sink(Protocol):
    def write(self, frame: Frame, result: FrameResult, annotated: np.ndarray | None) -> None: ...
    def close(self) -> None: ...


log = logging.getLogger(__name__)

MIN_FREE_MB = 100  # what a file sink leaves free on its disk
SPACE_CHECK_S = 2.0  # how often it looks (one statvfs call)


class FreeSpace:
    """Whether the disk under ``path`` still has ``MIN_FREE_MB`` free, looked at every few seconds.

    A week-long run must not fill a board's SD card, which the OS needs too, and OpenCV's video
    writer fails silently on a full disk. Once short, a sink stops for good (no flapping) and
    says so once.
    """

    def __init__(self, path: Path, on_event: Callable[[str], None] | None = None):
        self.path = path
        self.on_event = on_event or (lambda msg: log.warning("%s", msg))
        self.last = -float("inf")
        self.short = False

    def ok(self, frame_index: int) -> bool:
        now = time.monotonic()
        if self.short or now - self.last < SPACE_CHECK_S:
            return not self.short
        self.last = now
        free = shutil.disk_usage(self.path if self.path.is_dir() else self.path.parent).free
        if free < MIN_FREE_MB * 2**20:
            self.short = True
            self.on_event(f"{self.path}: only {free / 2**20:.0f} MB left on its disk; stopped writing it at frame "
                          f"{frame_index} (what was written stays valid); free space or write elsewhere")
        return not self.short


class _FileSink:
    """What file sinks share: ``stopped`` once their disk ran short (the pipeline ends the run
    when every sink has stopped)."""

    space: FreeSpace | None = None

    @property
    def stopped(self) -> bool:
        return self.space is not None and self.space.short


def rle(mask: np.ndarray) -> dict:
    """COCO run-length encoding of a bool mask (pycocotools' own encoder, string counts)."""
    import pycocotools.mask as mu

    r = mu.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in r["size"]], "counts": r["counts"].decode("ascii")}


def result_record(frame: Frame, result: FrameResult, source: str, masks: bool = True) -> dict:
    """The JSON-lines record of one frame, in source-frame pixels (``masks=False``: without the
    RLE masks, a few kilobytes a frame, for a message bus)."""
    h, w = result.height, result.width
    inst = []
    if result.label_map is not None:
        for k in result.classes_present():
            m = result.label_map == k
            ys, xs = np.nonzero(m)
            inst.append({"class_id": int(k), "class_name": result.names[k] if k < len(result.names) else str(k),
                         "score": 1.0, "box": [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1],
                         **({"mask": rle(m)} if masks else {})})
    for i in result.instances:
        inst.append({"class_id": i.class_id, "class_name": i.class_name, "score": round(i.score, 5),
                     "box": [round(float(v), 2) for v in i.box],
                     **({"mask": rle(i.full_mask(h, w))} if masks else {}),
                     **({} if i.track_id is None else {"track_id": i.track_id})})
    # an image source names each file; a video or stream names itself
    return {"frame": frame.index, "source": frame.name or source, "width": w, "height": h, "time": round(frame.time, 6),
            "instances": inst, **({} if result.counts is None else {"events": result.events or [],
                                                                    "counts": result.counts})}


class JsonlSink(_FileSink):
    """One JSON object per line, written and flushed whole, so a killed run leaves valid lines."""

    def __init__(self, path: str | Path | TextIO, source: str, on_event: Callable[[str], None] | None = None):
        self.space = None
        if hasattr(path, "write"):  # an open stream (`--json -`: another program reads the lines)
            self.path, self.f, self.owned = None, path, False
        else:
            self.path = Path(path)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.f, self.owned = open(self.path, "w", encoding="utf-8"), True
            self.space = FreeSpace(self.path, on_event)
        self.source = source

    def write(self, frame: Frame, result: FrameResult, annotated: np.ndarray | None) -> None:
        if self.space is not None and not self.space.ok(frame.index):
            return
        self.f.write(json.dumps(result_record(frame, result, self.source), separators=(",", ":")) + "\n")
        self.f.flush()

    def close(self) -> None:
        if self.owned:
            self.f.close()
        else:
            self.f.flush()


# containers OpenCV's FFmpeg writer fills with mp4v (MJPG for .avi); .webm, .gif and the like fail
WRITABLE_VIDEO = {".mp4", ".m4v", ".mov", ".mkv", ".avi", ".ts"}


class VideoSink(_FileSink):
    """An annotated MP4 (or AVI); frames of another size are resized to the first frame's size."""

    def __init__(self, path: str | Path, fps: float = 30.0, on_event: Callable[[str], None] | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fps = fps
        self.writer: cv2.VideoWriter | None = None
        self.size: tuple[int, int] | None = None
        self.space = FreeSpace(self.path, on_event)

    def write(self, frame: Frame, result: FrameResult, annotated: np.ndarray | None) -> None:
        assert annotated is not None
        if not self.space.ok(frame.index):
            self.close()  # finish the file now, so what was recorded plays (closing twice is harmless)
            return
        if self.writer is None:
            h, w = annotated.shape[:2]
            self.size = (w, h)
            fourcc = cv2.VideoWriter_fourcc(*("MJPG" if self.path.suffix.lower() == ".avi" else "mp4v"))
            self.writer = cv2.VideoWriter(str(self.path), fourcc, self.fps, self.size)
            if not self.writer.isOpened():
                raise EdgesegError(f"{self.path}: cannot write a video here; use .mp4 or .avi, or a folder for images")
        if (annotated.shape[1], annotated.shape[0]) != self.size:
            annotated = cv2.resize(annotated, self.size)
        self.writer.write(annotated)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()
            self.writer = None


class ImageFolderSink(_FileSink):
    def __init__(self, path: str | Path, on_event: Callable[[str], None] | None = None):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.space = FreeSpace(self.path, on_event)

    def write(self, frame: Frame, result: FrameResult, annotated: np.ndarray | None) -> None:
        if not self.space.ok(frame.index):
            return
        stem = Path(frame.name).stem if frame.name and "." in frame.name else f"frame{frame.index:06d}"
        dst = self.path / f"{frame.index:06d}_{stem}.jpg"
        try:
            ok = cv2.imwrite(str(dst), annotated)
        except cv2.error:
            ok = False
        if not ok:  # OpenCV reports a failed write only by its return value
            raise EdgesegError(f"{dst}: cannot write the annotated image (folder not writable, or full); "
                               "choose a folder you may write with --save")

    def close(self) -> None:
        pass


class WindowSink:
    def __init__(self, title: str = "edgeseg"):
        self.title = title
        try:
            cv2.namedWindow(self.title, cv2.WINDOW_NORMAL)
        except cv2.error:
            raise EdgesegError("--show needs OpenCV with GUI support and a display: pip install opencv-python "
                               "(not -headless), or use --save out.mp4") from None
        self.quit = False

    def write(self, frame: Frame, result: FrameResult, annotated: np.ndarray | None) -> None:
        cv2.imshow(self.title, annotated)
        if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
            self.quit = True

    def close(self) -> None:
        try:
            cv2.destroyWindow(self.title)
        except cv2.error:
            pass


class ImageFileSink:
    """One annotated picture, for a source that is one image."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, frame: Frame, result: FrameResult, annotated: np.ndarray | None) -> None:
        if not cv2.imwrite(str(self.path), annotated):
            raise EdgesegError(f"{self.path}: OpenCV cannot write this image format; use .jpg or .png")

    def close(self) -> None:
        pass


def make_save_sink(path: str | Path, fps: float, frames: int | None = None,
                   on_event: Callable[[str], None] | None = None) -> Sink:
    """``frames``: how many frames the source holds when known (1 for a single image);
    ``on_event``: where a sink that stops for lack of disk space says so."""
    p = Path(path)
    if p.suffix.lower() in VIDEO_SUFFIXES:
        if p.suffix.lower() not in WRITABLE_VIDEO:  # known before the first frame, not after
            raise EdgesegError(f"{p}: OpenCV's writer here takes {', '.join(sorted(WRITABLE_VIDEO))}; "
                               "save as .mp4, or to a folder for images")
        return VideoSink(p, fps, on_event)
    if p.suffix.lower() in IMAGE_SUFFIXES and not p.is_dir():
        if frames != 1:
            raise EdgesegError(f"{p}: one picture is saved only from a single image; this source has "
                               f"{frames or 'many'} frames: --save a folder or a video (.mp4)")
        return ImageFileSink(p)
    if p.suffix and not p.is_dir():
        raise EdgesegError(f"{p}: --save takes a video path (.mp4, .avi), a folder for annotated images, "
                           "or an image path when the source is one image")
    return ImageFolderSink(p, on_event)

