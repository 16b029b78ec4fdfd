"""``--serve``: the annotated frames as an MJPEG stream over HTTP, for a headless board, and
the newest frame's results as JSON for a program that polls.

A browser on the same network opens ``http://<board>:8080/`` and sees the masks live; no window
system, no video file filling the SD card. Only the standard library's HTTP server: each client
gets its own thread and always the newest frame, so a slow viewer skips frames instead of
holding back the pipeline, and nothing is encoded while nobody watches.
"""

from __future__ import annotations

import errno
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import cv2
import numpy as np

from ..errors import EdgesegError
from .decode import FrameResult
from .sinks import result_record
from .sources import Frame

log = logging.getLogger(__name__)

BOUNDARY = "edgesegframe"
PAGE = (b"<!doctype html><title>edgeseg</title><body style='margin:0;background:#111'>"
        b"<img src='/stream' style='max-width:100%;max-height:100vh;display:block;margin:auto'>")


def parse_address(spec: str) -> tuple[str, int]:
    """``8080``, ``:8080`` (all interfaces) or ``127.0.0.1:8080``."""
    host, _, port = spec.rpartition(":")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise EdgesegError(f"--serve {spec}: expected PORT or HOST:PORT, e.g. --serve 8080 or --serve 127.0.0.1:8080")
    return host or "0.0.0.0", int(port)


class MjpegSink:
    """Serves the newest annotated frame as ``/stream`` (multipart JPEG), ``/frame.jpg`` and ``/``,
    and its results as ``/frame.json`` (the record ``--json`` writes, masks as COCO RLE)."""

    def __init__(self, address: str, quality: int = 80):
        host, port = parse_address(address)
        self.quality = quality
        self._cond = threading.Condition()
        self._seq = 0
        self._frame: np.ndarray | None = None
        self._result: tuple[Frame, FrameResult] | None = None
        self._jpeg: tuple[int, bytes] = (0, b"")
        self._closed = False
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server hook name
                path = self.path.split("?")[0]
                if path == "/":
                    self._send(200, "text/html", PAGE)
                elif path == "/frame.jpg":
                    seq = sink.wait_frame(0, timeout=5.0)
                    if seq is None:
                        self._send(503, "text/plain", b"no frame yet\n")
                    else:
                        self._send(200, "image/jpeg", sink.jpeg(seq))
                elif path == "/frame.json":
                    seq = sink.wait_frame(0, timeout=5.0)
                    if seq is None:
                        self._send(503, "text/plain", b"no frame yet\n")
                    else:
                        self._send(200, "application/json", sink.record())
                elif path == "/stream":
                    self._stream()
                else:
                    self._send(404, "text/plain", b"try / or /stream or /frame.jpg or /frame.json\n")

            def _send(self, code: int, ctype: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def _stream(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                seq = 0
                try:
                    while True:
                        seq = sink.wait_frame(seq, timeout=None)
                        if seq is None:
                            return
                        data = sink.jpeg(seq)
                        self.wfile.write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                                         f"Content-Length: {len(data)}\r\n\r\n".encode("ascii") + data + b"\r\n")
                        self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    return  # the viewer closed the tab

            def log_message(self, fmt: str, *args: Any) -> None:
                log.debug("%s " + fmt, self.address_string(), *args)

        try:
            self.server = ThreadingHTTPServer((host, port), Handler)
        except OSError as e:
            fix = ("choose another port" if e.errno == errno.EADDRINUSE else
                   "ports below 1024 need root; choose 8080" if e.errno == errno.EACCES else "check the address")
            raise EdgesegError(f"--serve {address}: {e.strerror}; {fix}") from None
        self.server.daemon_threads = True
        self.address = self.server.server_address[:2]
        self._thread = threading.Thread(target=self.server.serve_forever, name="edgeseg-mjpeg", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{'localhost' if host in ('0.0.0.0', '::') else host}:{port}/"

    def wait_frame(self, after: int, timeout: float | None) -> int | None:
        """The newest frame's number once it is newer than ``after``; None once closed (or timed out)."""
        with self._cond:
            self._cond.wait_for(lambda: self._closed or self._seq > after, timeout)
            return None if self._closed or self._seq <= after else self._seq

    def jpeg(self, seq: int) -> bytes:
        """The JPEG of frame ``seq`` or newer, encoded once however many viewers there are."""
        with self._cond:
            if self._jpeg[0] >= seq:
                return self._jpeg[1]
            cur, frame = self._seq, self._frame
        ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        data = buf.tobytes() if ok else b""
        with self._cond:
            if cur > self._jpeg[0]:
                self._jpeg = (cur, data)
        return data

    def record(self) -> bytes:
        """The newest frame's results as one JSON object, built only when asked for."""
        with self._cond:
            frame, result = self._result  # type: ignore[misc]
        return json.dumps(result_record(frame, result, frame.name), separators=(",", ":")).encode()

    def write(self, frame: Frame, result: FrameResult, annotated: np.ndarray | None) -> None:
        assert annotated is not None
        with self._cond:
            self._frame, self._result, self._seq = annotated, (frame, result), self._seq + 1
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self.server.shutdown()
        self.server.server_close()
