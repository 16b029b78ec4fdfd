"""Frame sources: camera index, Raspberry Pi camera, video file, image folder/glob, RTSP/HTTP.

Every source yields :class:`Frame` items and says whether it is *live* (a sensor that keeps
producing whether or not we keep up: the pipeline drops stale frames) or not (a file: every
frame is processed). Live sources that fail are reopened with back-off instead of ending the run.
"""

from __future__ import annotations

import glob
import logging
import os
import platform
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..data import IMAGE_SUFFIXES, regular_files
from ..errors import EdgesegError, ToolchainMissing
from .preprocess import Letterbox

log = logging.getLogger("edgeseg.sources")

VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".mov", ".m4v", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".ts", ".gif"}


@dataclass
class Frame:
    index: int
    image: np.ndarray  # HxWx3 uint8 BGR
    time: float  # capture time, seconds since the epoch
    name: str  # the image file for folder/glob sources, else the source spec
    # set by sources that run the network themselves (the IMX500 sensor): its outputs and where
    # its input sits in this frame; the pipeline then skips preprocessing and inference
    outputs: dict[str, np.ndarray] | None = None
    mapping: Letterbox | None = None


@contextmanager
def quiet_opencv() -> Iterator[None]:
    """Silence OpenCV's own warnings while probing a device; edgeseg reports the outcome itself."""
    # OpenCV 5 has cv2.utils.logging; the 4.x wheels (the ones pip picks next to numpy 1.x, as on
    # Raspberry Pi OS) have cv2.getLogLevel/setLogLevel; 0 is "silent" in both
    api = getattr(getattr(cv2, "utils", None), "logging", None) or cv2
    get, set_ = getattr(api, "getLogLevel", None), getattr(api, "setLogLevel", None)
    if get is None or set_ is None:  # pragma: no cover - a build without either
        yield
        return
    prev = get()
    set_(0)
    try:
        yield
    finally:
        set_(prev)


MAX_PIXELS_ENV = "EDGESEG_MAX_IMAGE_PIXELS"
DEFAULT_MAX_PIXELS = 50_000_000  # a 50 Mpx photo decodes to 150 MB of BGR; a PNG bomb of 30000x30000 to 2.7 GB
MAX_CAMERA_INDEX = 1023


def max_image_pixels() -> int:
    v = os.environ.get(MAX_PIXELS_ENV, "")
    if not v:
        return DEFAULT_MAX_PIXELS
    if not v.isdigit() or int(v) < 1:
        raise EdgesegError(f"{MAX_PIXELS_ENV}={v}: expected a positive number of pixels, e.g. 100000000")
    return int(v)


# OpenCV's own guard, for the formats the header reader below does not know (TIFF...): read once,
# at its first decode, so set before any
os.environ.setdefault("CV_IO_MAX_IMAGE_PIXELS", str(max(DEFAULT_MAX_PIXELS, 1 << 30)))


def image_size(head: bytes) -> tuple[int, int] | None:
    """(width, height) from the first bytes of a PNG, JPEG, BMP, GIF or WebP file, without decoding
    it; None for other formats."""
    import struct

    if head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) >= 24:
        return struct.unpack(">II", head[16:24])
    if head[:6] in (b"GIF87a", b"GIF89a") and len(head) >= 10:
        return struct.unpack("<HH", head[6:10])
    if head[:2] == b"BM" and len(head) >= 26:
        w, h = struct.unpack("<ii", head[18:26])
        return abs(w), abs(h)
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP" and len(head) >= 30:
        kind = head[12:16]
        if kind == b"VP8X":
            return 1 + int.from_bytes(head[24:27], "little"), 1 + int.from_bytes(head[27:30], "little")
        if kind == b"VP8L":
            b = int.from_bytes(head[21:25], "little")
            return 1 + (b & 0x3FFF), 1 + ((b >> 14) & 0x3FFF)
        if kind == b"VP8 ":
            w, h = struct.unpack("<HH", head[26:30])
            return w & 0x3FFF, h & 0x3FFF
    if head[:2] == b"\xff\xd8":  # JPEG: walk the segments to the first start-of-frame
        i = 2
        while i + 9 < len(head):
            if head[i] != 0xFF:
                return None
            marker = head[i + 1]
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
                i += 2
                continue
            length = int.from_bytes(head[i + 2:i + 4], "big")
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                h, w = struct.unpack(">HH", head[i + 5:i + 9])
                return w, h
            i += 2 + length
    return None


def read_image(path: Path) -> np.ndarray:
    """Read an image as 8-bit BGR whatever it was on disk (gray, 16-bit, alpha, CMYK JPEG).

    Its size is read from the header first: an image larger than ``EDGESEG_MAX_IMAGE_PIXELS``
    (50 Mpx by default) is refused before any memory is spent on decoding it."""
    limit = max_image_pixels()
    try:
        with open(path, "rb") as f:  # a FIFO or device named x.jpg is refused by the caller's listing
            head = f.read(1 << 16)
    except OSError as e:
        raise EdgesegError(f"{path}: cannot read this image ({e.strerror}); check the file") from None
    wh = image_size(head)
    if wh is not None and wh[0] * wh[1] > limit:
        raise EdgesegError(f"{path}: image of {wh[0]}x{wh[1]} pixels is larger than the limit of {limit} pixels; "
                           f"shrink it, or raise the limit with {MAX_PIXELS_ENV}=N")
    data = np.fromfile(str(path), dtype=np.uint8)  # np.fromfile copes with non-ASCII paths on every OS
    try:
        img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    except cv2.error:  # OpenCV's own size guard, and decoders that raise instead of returning None
        img = None
    if img is not None and img.shape[0] * img.shape[1] > limit:  # a format without a header reader here
        raise EdgesegError(f"{path}: image of {img.shape[1]}x{img.shape[0]} pixels is larger than the limit of "
                           f"{limit} pixels; shrink it, or raise the limit with {MAX_PIXELS_ENV}=N")
    if img is None:
        raise EdgesegError(f"{path}: cannot decode this image (corrupt or unsupported format); "
                           "remove it or re-save as JPEG/PNG")
    return img


class Source:
    live: bool = False
    name: str = ""

    def __iter__(self) -> Iterator[Frame]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ImageFolder(Source):
    def __init__(self, files: list[Path], name: str):
        self.files = files
        self.name = name

    def __iter__(self) -> Iterator[Frame]:
        for i, f in enumerate(self.files):
            try:
                img = read_image(f)
            except EdgesegError as e:
                log.warning("%s", e)  # one bad file does not end a folder run
                continue
            yield Frame(i, img, time.time(), str(f))


class VideoFile(Source):
    def __init__(self, path: Path):
        self.path = path
        self.name = path.name
        self.cap = cv2.VideoCapture(str(path))
        if not self.cap.isOpened():
            raise EdgesegError(f"{path}: cannot open this video (corrupt or codec missing); re-encode it as H.264 MP4")
        self.fps = self.cap.get(cv2.CAP_PROP_FPS) or 30.0

    def __iter__(self) -> Iterator[Frame]:
        i = 0
        while True:
            ok, img = self.cap.read()
            if not ok:
                return
            yield Frame(i, img, time.time(), self.name)
            i += 1

    def close(self) -> None:
        self.cap.release()


def retry_with_backoff(src: Any, why: str, doing: str, done: str, reopen: Callable[[], bool]) -> bool:
    """The one reconnect policy of live sources: report, wait ``src.backoff`` doubling to 10 s,
    ``reopen()``; at most ``src.retries`` times, and never once the source is closed."""
    delay = src.backoff
    for attempt in range(1, src.retries + 1):
        if src._closed:
            return False
        src.on_event(f"{src.name}: {why}; {doing} (attempt {attempt}/{src.retries}) in {delay:.1f} s")
        time.sleep(delay)
        if reopen():
            src.reconnects += 1
            src.on_event(f"{src.name}: {done}")
            return True
        delay = min(delay * 2, 10.0)
    src.on_event(f"{src.name}: gave up after {src.retries} attempts")
    return False


class LiveCapture(Source):
    """An OpenCV camera or network stream, reopened with exponential back-off when it drops."""

    live = True

    def __init__(self, spec: int | str, width: int | None = None, height: int | None = None,
                 fps: float | None = None, retries: int = 10, backoff: float = 0.5,
                 opener: Callable[[int | str], Any] | None = None, on_event: Callable[[str], None] | None = None,
                 stall_timeout: float = 10.0, fourcc: str | None = None):
        if fourcc is not None and len(fourcc) != 4:
            raise EdgesegError(f"--fourcc {fourcc}: a pixel format is four characters, e.g. MJPG or YUYV")
        self.fourcc = fourcc
        self.spec = spec
        self.stall_timeout = stall_timeout
        self.stalls = 0
        self.name = f"camera {spec}" if isinstance(spec, int) else str(spec)
        self.size = (width, height)
        self.fps_req = fps
        self.retries = retries
        self.backoff = backoff
        self.opener = opener or self._default_opener
        self.on_event = on_event or (lambda msg: log.warning("%s", msg))
        self.reconnects = 0
        self.cap = self._open()
        if self.cap is None:
            if isinstance(spec, int):
                raise EdgesegError(f"camera {spec}: no camera found at this index; check the cable and "
                                   "`ls /dev/video*`, or pass --source FILE_OR_URL")
            raise EdgesegError(f"{spec}: cannot open this stream; check the URL and that the server is reachable")
        self.fps = self.cap.get(cv2.CAP_PROP_FPS) or 30.0
        self._closed = False
        if isinstance(spec, int):
            self._report_mode()

    def _report_mode(self) -> None:
        """Say what the camera delivers when it is not what was asked: a USB camera sending
        uncompressed YUYV falls to a fraction of the asked frame rate at HD sizes (USB 2
        bandwidth), which then looks like a slow model."""
        w, h = int(self.cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(self.cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        code = int(self.cap.get(cv2.CAP_PROP_FOURCC))
        fmt = "".join(chr((code >> 8 * k) & 0xFF) for k in range(4)).strip("\x00 ") if code > 0 else "?"
        want_w, want_h = self.size
        short = []
        if (want_w and want_w != w) or (want_h and want_h != h):
            short.append(f"{want_w or w}x{want_h or h}")
        if self.fps_req and self.fps < 0.95 * self.fps_req:
            short.append(f"{self.fps_req:g} FPS")
        if short:
            hint = "; USB cameras often need --fourcc MJPG for HD at full rate" if fmt != "MJPG" else ""
            self.on_event(f"{self.name}: delivers {w}x{h} at {self.fps:g} FPS ({fmt}), not the {' at '.join(short)} "
                          f"asked{hint}")
    def _default_opener(self, spec: int | str) -> Any:
        if isinstance(spec, str):
            # FFmpeg prints its own lines ("Connection refused", decoder chatter) past OpenCV's log
            # level; edgeseg reports opens, stalls and reconnects itself. OpenCV reads this when
            # its FFmpeg backend starts; set it yourself to see FFmpeg's lines again.
            os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
            # a stream that stops sending would block read() forever; FFmpeg's own timeouts make
            # it return False instead, which the reconnect path below handles
            ms = int(self.stall_timeout * 1000)
            return cv2.VideoCapture(spec, cv2.CAP_FFMPEG, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms,
                                                          cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms])
        return cv2.VideoCapture(spec)  # V4L2 gives up on a silent camera after its own 10 s select()

    def _open(self):
        with quiet_opencv():
            cap = self.opener(self.spec)
        if not cap.isOpened():
            cap.release()
            return None
        if self.fourcc:  # before the size: the sizes a camera offers depend on the format
            cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*self.fourcc))
        w, h = self.size
        if w:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, w)
        if h:
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, h)
        if self.fps_req:
            cap.set(cv2.CAP_PROP_FPS, self.fps_req)
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # the newest frame, not a queue of stale ones
        return cap

    def _reconnect(self, why: str = "no frames") -> bool:
        def reopen() -> bool:
            self.cap.release()
            cap = self._open()
            if cap is None:
                return False
            self.cap = cap
            return True

        return retry_with_backoff(self, why, "reconnecting", "reconnected", reopen)

    def __iter__(self) -> Iterator[Frame]:
        i = 0
        while not self._closed:
            t0 = time.monotonic()
            ok, img = self.cap.read()
            if not ok or img is None or img.ndim != 3 or img.size == 0:
                waited = time.monotonic() - t0
                stalled = waited >= 0.8 * self.stall_timeout
                self.stalls += stalled
                if not self._reconnect(f"stalled, no frame for {waited:.1f} s" if stalled else "no frames"):
                    return
                continue
            yield Frame(i, img, time.time(), self.name)
            i += 1

    def close(self) -> None:
        self._closed = True
        self.cap.release()


def import_picamera2(devices: bool = False) -> Any:
    """picamera2, or a one-line error saying why not. Raspberry Pi OS ships it (apt) built against
    the system numpy; in a venv holding another numpy its import fails with a ValueError
    ("numpy.dtype size changed"), which would otherwise surface as a traceback."""
    try:
        import picamera2

        if devices:
            import picamera2.devices  # noqa: F401 - the IMX500 helper
    except ImportError:
        raise ToolchainMissing("picamera2 is not installed: sudo apt install python3-picamera2 (Raspberry Pi OS), "
                               "and create the venv with --system-site-packages") from None
    except ValueError as e:
        raise EdgesegError(f"picamera2 does not import with this venv's numpy {np.__version__} ({e}); it was built "
                           "against the system's: pip install \"numpy==$(/usr/bin/python3 -c 'import numpy; "
                           "print(numpy.__version__)')\"") from None
    return picamera2


class PiCamera(Source):
    """The Raspberry Pi camera through picamera2 (libcamera), delivering BGR frames; restarted with
    back-off when a capture fails (a libcamera frontend timeout, a loose ribbon cable)."""

    live = True

    def __init__(self, width: int | None = None, height: int | None = None, fps: float | None = None,
                 retries: int = 10, backoff: float = 0.5, on_event: Callable[[str], None] | None = None):
        Picamera2 = import_picamera2().Picamera2  # noqa: N806 - picamera2's class name
        self.name = "picamera2"
        self.size, self.fps = (width or 1280, height or 720), fps or 30.0
        self.retries, self.backoff = retries, backoff
        self.on_event = on_event or (lambda msg: log.warning("%s", msg))
        self._factory = Picamera2
        self._closed = False
        self.reconnects = 0
        try:
            self.cam = self._start()
        except Exception as e:  # noqa: BLE001 - no camera: IndexError or RuntimeError, by picamera2 version
            raise EdgesegError(f"--camera pi: no Raspberry Pi camera found ({type(e).__name__}: {e}); "
                               "check the ribbon cable and `rpicam-hello --list-cameras`, "
                               "or use a USB camera: --camera 0") from None

    def _start(self) -> Any:
        cam = self._factory()
        # "RGB888" in libcamera is BGR byte order in memory, which is what OpenCV expects.
        cam.configure(cam.create_video_configuration(main={"size": self.size, "format": "RGB888"},
                                                     controls={"FrameRate": self.fps}))
        cam.start()
        return cam

    def _restart(self, why: str) -> bool:
        def reopen() -> bool:
            try:
                self.cam.stop()
                self.cam.close()
            except Exception:  # noqa: BLE001 - a dead camera may fail to stop as well
                pass
            try:
                self.cam = self._start()
            except Exception:  # noqa: BLE001
                return False
            return True

        return retry_with_backoff(self, why, "restarting the camera", "restarted", reopen)

    def __iter__(self) -> Iterator[Frame]:
        i = 0
        while not self._closed:
            try:
                img = self.cam.capture_array("main")
            except Exception as e:  # noqa: BLE001 - libcamera reports a lost camera in several ways
                if not self._restart(f"capture failed ({type(e).__name__}: {e})"):
                    return
                continue
            yield Frame(i, np.ascontiguousarray(img[:, :, :3]), time.time(), self.name)
            i += 1

    def close(self) -> None:
        self._closed = True
        try:
            self.cam.stop()
            self.cam.close()  # libcamera holds the camera until then: a second open would fail
        except Exception:  # noqa: BLE001 - a lost camera may fail to stop as well
            pass


def on_raspberry_pi() -> bool:
    try:
        return platform.machine().startswith(("aarch64", "arm")) and "Raspberry Pi" in Path(
            "/proc/device-tree/model").read_text(errors="ignore")
    except OSError:
        return False


def open_source(spec: int | str, width: int | None = None, height: int | None = None, fps: float | None = None,
                **kw: Any) -> Source:
    """Open ``spec``: camera index (int or digits), 'pi', URL, video file, image folder or glob."""
    if isinstance(spec, str) and spec.isascii() and spec.isdigit():
        spec = int(spec)
    if isinstance(spec, int) and not 0 <= spec <= MAX_CAMERA_INDEX:
        raise EdgesegError(f"camera {spec}: not a camera index (0..{MAX_CAMERA_INDEX}); see `ls /dev/video*`, "
                           "or pass --source FILE_OR_URL")
    prefer_pi = kw.pop("prefer_pi", False)
    pi_kw = {k: v for k, v in kw.items() if k == "on_event"}
    if spec == "pi":
        return PiCamera(width, height, fps, **pi_kw)
    if spec == 0 and prefer_pi and on_raspberry_pi():
        try:
            return PiCamera(width, height, fps, **pi_kw)
        except EdgesegError:
            # a Pi with only a USB webcam: camera 0 is that webcam, through V4L2
            (kw.get("on_event") or log.warning)("camera 0: no Raspberry Pi camera through picamera2; "
                                                "opening the USB camera /dev/video0 instead")
    if isinstance(spec, int):
        return LiveCapture(spec, width, height, fps, **kw)
    s = str(spec)
    if "://" in s:
        return LiveCapture(s, width, height, fps, **kw)
    if any(ch in s for ch in "*?["):
        matches = (Path(f) for f in glob.glob(s, recursive=True) if Path(f).suffix.lower() in IMAGE_SUFFIXES)
        files = regular_files(matches, on_skip=kw.get("on_event"))
        if not files:
            raise EdgesegError(f"{s}: the pattern matches no images; check the glob")
        return ImageFolder(files, s)
    p = Path(s)
    if p.is_dir():
        files = regular_files((f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES),
                              on_skip=kw.get("on_event"))
        if not files:
            raise EdgesegError(f"{p}: folder has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        return ImageFolder(files, p.name)
    if not p.exists():
        raise EdgesegError(f"{p}: no such file or folder; pass --camera N, a video, an image folder or a URL")
    if p.suffix.lower() in IMAGE_SUFFIXES:
        return ImageFolder([p], p.name)
    if p.suffix.lower() in VIDEO_SUFFIXES or os.path.getsize(p) > 0:
        return VideoFile(p)
    raise EdgesegError(f"{p}: not an image or video")


class Paced(Source):
    """A file source delivered at its own frame rate, as a camera would (``--realtime``): a viewer
    of ``--serve`` sees the video at its speed instead of as fast as the model runs."""

    def __init__(self, source: Source, fps: float):
        self.source, self.fps, self.live, self.name = source, fps, source.live, source.name

    def __getattr__(self, name: str) -> Any:  # files, path, ... of the wrapped source
        return getattr(self.source, name)

    def __iter__(self) -> Iterator[Frame]:
        start = time.monotonic()
        for n, fr in enumerate(self.source):
            wait = start + n / self.fps - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            yield fr

    def close(self) -> None:
        self.source.close()
