"""``--serve``: the annotated frames as an MJPEG stream over HTTP, for a headless board, and
the newest frame's results as JSON for a program that polls.

A browser opens ``http://<board>:8080/?token=...`` and sees the masks live; no window system,
no video file filling the SD card. Only the standard library's HTTP server: each client gets its
own thread and always the newest frame, so a slow viewer skips frames instead of holding back
the pipeline, and nothing is encoded while nobody watches.

What it exposes, and to whom: it binds loopback unless told otherwise; any other address needs a
credential (a token generated per run and shown in the URL, as Jupyter does, or given by the user),
kept in a cookie after the first visit. The Host header must name this machine (loopback names,
the bound address, an IP literal on a wildcard bind, or ``EDGESEG_SERVE_HOSTS``), so a web page
the user visits cannot read it by DNS rebinding. Connections are bounded (idle ones time out, and
the oldest one still silent is dropped when the limit is reached), viewers are capped (then 503),
and what it serves names the source by its base name only.
"""

from __future__ import annotations

import errno
import hmac
import ipaddress
import json
import logging
import os
import secrets
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import cv2
import numpy as np

from ..errors import EdgesegError
from .decode import FrameResult
from .sinks import result_record
from .sources import Frame

log = logging.getLogger(__name__)

BOUNDARY = "edgesegframe"
TOKEN_ENV = "EDGESEG_SERVE_TOKEN"
HOSTS_ENV = "EDGESEG_SERVE_HOSTS"  # more names the Host header may carry, comma-separated
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}
MAX_VIEWERS = 8  # /stream clients at once; more get 503
MAX_CONNECTIONS = 32  # connections (and so handler threads) at once, viewers included
CLIENT_TIMEOUT_S = 10.0  # a client silent (or not reading) this long is disconnected

PAGE = (b"<!doctype html><title>edgeseg</title><body style='margin:0;background:#111;color:#ddd;font:14px sans-serif'>"
        b"<img src='/stream' style='max-width:100%;max-height:100vh;display:block;margin:auto'>"
        b"<div id=s style='position:fixed;top:4px;right:8px'></div><script>"
        b"setInterval(()=>fetch('/status.json').then(r=>r.json()).then(j=>{document.getElementById('s')"
        b".textContent=j.state=='ended'?'run ended ('+j.frames+' frames)':''}).catch(()=>{"
        b"document.getElementById('s').textContent='run ended'}),1000)</script>")


def parse_address(spec: str) -> tuple[str, int]:
    """``8080`` or ``:8080`` (loopback), or ``HOST:PORT`` (``0.0.0.0:8080``: every interface)."""
    host, _, port = spec.rpartition(":")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise EdgesegError(f"--serve {spec}: expected PORT or HOST:PORT, e.g. --serve 8080 (this machine only) "
                           "or --serve 0.0.0.0:8080 (every interface, with a token)")
    return host.strip("[]") or "127.0.0.1", int(port)


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
        except OSError:
            return False


def public_name(name: str) -> str:
    """What a viewer may learn of a source: a file's base name, a URL without its credentials."""
    if "://" in name:
        u = urlsplit(name)
        return f"{u.scheme}://{u.hostname or ''}{f':{u.port}' if u.port else ''}{u.path}"
    return os.path.basename(name.rstrip("/")) or name


class _Server(ThreadingHTTPServer):
    """Bounded connections: at the limit, the oldest connection that has not sent its request yet
    is dropped for the new one (an idle or slow-loris client cannot lock a real viewer out), and
    when every connection is a request in progress, the new one is closed at once."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, *a: Any, **kw: Any):
        super().__init__(*a, **kw)
        self.conn_lock = threading.Lock()
        self.silent: list[socket.socket] = []  # accepted, request not read yet: oldest first
        self.busy: set[socket.socket] = set()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.conn_lock:
            if len(self.silent) + len(self.busy) >= MAX_CONNECTIONS:
                if not self.silent:
                    self.shutdown_request(request)
                    return
                old = self.silent.pop(0)
                try:
                    old.shutdown(socket.SHUT_RDWR)  # its thread's read returns and the thread ends
                except OSError:
                    pass
            self.silent.append(request)
        super().process_request(request, client_address)

    def started(self, request: Any) -> bool:
        """The request was read: the connection is no longer one to drop for a newcomer."""
        with self.conn_lock:
            if request not in self.silent:
                return False  # dropped while its request was arriving
            self.silent.remove(request)
            self.busy.add(request)
            return True

    def shutdown_request(self, request: Any) -> None:
        with self.conn_lock:
            if request in self.silent:
                self.silent.remove(request)
            self.busy.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # a client that goes away mid-response is not the run's problem: no traceback in its output
        log.debug("client %s: connection error", client_address, exc_info=True)

    def connections(self) -> int:
        with self.conn_lock:
            return len(self.silent) + len(self.busy)


class MjpegSink:
    """Serves the newest annotated frame as ``/stream`` (multipart JPEG), ``/frame.jpg`` and ``/``,
    its results as ``/frame.json`` (the record ``--json`` writes, masks as COCO RLE) and the run's
    state as ``/status.json``.

    ``token``: the credential clients must present (``?token=``, then a cookie, or an
    ``Authorization: Bearer`` header); by default ``EDGESEG_SERVE_TOKEN``, else one generated per
    run when the address is beyond loopback. ``linger``: :meth:`close` (the run ended) keeps the
    page up, showing "run ended", until :meth:`shutdown`.
    """

    def __init__(self, address: str, quality: int = 80, token: str | None = None, linger: bool = False,
                 allowed_hosts: list[str] | None = None):
        host, port = parse_address(address)
        self.quality = quality
        self.linger = linger
        self._cond = threading.Condition()
        self._seq = 0
        self._frame: np.ndarray | None = None
        self._result: tuple[Frame, FrameResult] | None = None
        self._jpeg: tuple[int, bytes] = (0, b"")
        self._closed = False  # the run ended
        self._stopped = False  # the server is going away: streams end
        self._viewers = 0
        token = token or os.environ.get(TOKEN_ENV) or None
        self.loopback = is_loopback(host)
        if token is None and not self.loopback:
            token = secrets.token_urlsafe(24)
        self.token = token
        self.cookie = f"edgeseg_token_{port}"
        wildcard = host in ("0.0.0.0", "")
        names = set(LOOPBACK_NAMES) | {host.lower()}
        if wildcard:
            # not getfqdn(): a reverse DNS lookup can stall the start for seconds on a board without DNS
            names |= {socket.gethostname().lower(), f"{socket.gethostname().lower()}.local"}
        names |= {h.strip().lower() for h in (allowed_hosts or os.environ.get(HOSTS_ENV, "").split(",")) if h.strip()}
        self.allowed_hosts = names
        sink = self

        def host_ok(value: str | None) -> bool:
            if not value:
                return False
            name = value.strip().lower()
            if name.startswith("[") and "]" in name:  # [::1]:8080
                name = name[1:name.index("]")]
            elif name.count(":") == 1:  # host:8080 (more colons: a bare IPv6 address)
                name = name.rsplit(":", 1)[0]
            if name in sink.allowed_hosts or f"[{name}]" in sink.allowed_hosts:
                return True
            if wildcard:  # an address typed by the user cannot be rebound by DNS: any IP literal
                try:
                    ipaddress.ip_address(name)
                    return True
                except ValueError:
                    return False
            return False

        class Handler(BaseHTTPRequestHandler):
            timeout = CLIENT_TIMEOUT_S  # socket timeout: idle, slow-sending and non-reading clients end
            server_version = "edgeseg"
            sys_version = ""

            def parse_request(self) -> bool:
                ok = super().parse_request()
                return ok and self.server.started(self.request)  # type: ignore[attr-defined]

            def do_GET(self) -> None:  # noqa: N802 - the http.server hook name
                try:
                    self._get()
                except (BrokenPipeError, ConnectionResetError, TimeoutError, OSError):
                    self.close_connection = True  # the viewer went away or stopped reading

            def _authorized(self) -> tuple[int, bytes, str | None]:
                """(0, b"", cookie) when the client may see this; else the refusal."""
                if not host_ok(self.headers.get("Host")):
                    return 403, b"forbidden: unknown Host header\n", None
                if sink.token is None:
                    return 0, b"", None
                given = parse_qs(urlsplit(self.path).query).get("token", [None])[0]
                auth = self.headers.get("Authorization", "")
                if auth.startswith("Bearer "):
                    given = given or auth[7:].strip()
                for part in self.headers.get("Cookie", "").split(";"):
                    k, _, v = part.strip().partition("=")
                    if k == sink.cookie:
                        given = given or v
                if given is None:
                    return 401, b"unauthorized: open the URL edgeseg printed (it carries ?token=...)\n", None
                if not hmac.compare_digest(given.encode(), sink.token.encode()):
                    return 403, b"forbidden: wrong token\n", None
                return 0, b"", f"{sink.cookie}={sink.token}; HttpOnly; SameSite=Strict; Path=/"

            def _get(self) -> None:
                code, why, cookie = self._authorized()
                if code:
                    self._send(code, "text/plain", why)
                    return
                path = urlsplit(self.path).path
                if path == "/":
                    self._send(200, "text/html", PAGE, cookie)
                elif path == "/status.json":
                    with sink._cond:
                        st = {"state": "ended" if sink._closed else "running", "frames": sink._seq}
                    self._send(200, "application/json", json.dumps(st).encode(), cookie)
                elif path == "/frame.jpg":
                    seq = sink.wait_frame(0, timeout=5.0)
                    if seq is None:
                        self._send(503, "text/plain", b"no frame yet\n")
                    else:
                        self._send(200, "image/jpeg", sink.jpeg(seq), cookie)
                elif path == "/frame.json":
                    seq = sink.wait_frame(0, timeout=5.0)
                    if seq is None:
                        self._send(503, "text/plain", b"no frame yet\n")
                    else:
                        self._send(200, "application/json", sink.record(), cookie)
                elif path == "/stream":
                    with sink._cond:
                        full = sink._viewers >= MAX_VIEWERS
                        sink._viewers += not full
                    if full:
                        self._send(503, "text/plain", f"{MAX_VIEWERS} viewers already; try later\n".encode())
                        return
                    try:
                        self._stream(cookie)
                    finally:
                        with sink._cond:
                            sink._viewers -= 1
                else:
                    self._send(404, "text/plain", b"try / or /stream or /frame.jpg or /frame.json\n")

            def _send(self, code: int, ctype: str, body: bytes, cookie: str | None = None) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                if cookie:
                    self.send_header("Set-Cookie", cookie)
                if code == 401:
                    self.send_header("WWW-Authenticate", "Bearer")
                self.end_headers()
                self.wfile.write(body)

            def _stream(self, cookie: str | None) -> None:
                self.send_response(200)
                self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
                self.send_header("Cache-Control", "no-store")
                if cookie:
                    self.send_header("Set-Cookie", cookie)
                self.end_headers()
                seq = 0
                while True:
                    seq = sink.wait_frame(seq, timeout=None)
                    if seq is None:
                        return
                    data = sink.jpeg(seq)
                    self.wfile.write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                                     f"Content-Length: {len(data)}\r\n\r\n".encode("ascii") + data + b"\r\n")
                    self.wfile.flush()

            def log_message(self, fmt: str, *args: Any) -> None:
                log.debug("%s " + fmt, self.address_string(), *args)

        try:
            self.server = _Server((host, port), Handler)
        except OSError as e:
            fix = ("choose another port" if e.errno == errno.EADDRINUSE else
                   "ports below 1024 need root; choose 8080" if e.errno == errno.EACCES else "check the address")
            raise EdgesegError(f"--serve {address}: {e.strerror}; {fix}") from None
        self.address = self.server.server_address[:2]
        self._thread = threading.Thread(target=self.server.serve_forever, name="edgeseg-mjpeg", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self.address
        shown = socket.gethostname() if host in ("0.0.0.0", "") else host
        return f"http://{shown}:{port}/" + (f"?token={self.token}" if self.token else "")

    def wait_frame(self, after: int, timeout: float | None) -> int | None:
        """The newest frame's number once it is newer than ``after``; None once the server stops
        (or on timeout); a frame already there is returned after the run ended too."""
        with self._cond:
            self._cond.wait_for(lambda: self._stopped or self._seq > after, timeout)
            return None if self._stopped or self._seq <= after else self._seq

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
        rec = result_record(frame, result, frame.name)
        rec["source"] = public_name(str(rec["source"]))  # no absolute paths, no URL credentials
        return json.dumps(rec, separators=(",", ":")).encode()

    def write(self, frame: Frame, result: FrameResult, annotated: np.ndarray | None) -> None:
        assert annotated is not None
        with self._cond:
            self._frame, self._result, self._seq = annotated, (frame, result), self._seq + 1
            self._cond.notify_all()

    def close(self) -> None:
        """The run ended: with ``linger`` the page stays up (``/status.json`` says so) until
        :meth:`shutdown`; without, the server stops now."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if not self.linger:
            self.shutdown()

    def shutdown(self) -> None:
        with self._cond:
            if self._stopped:
                return
            self._closed = self._stopped = True
            self._cond.notify_all()
        self.server.shutdown()
        self.server.server_close()

    def wait_until_interrupted(self) -> None:
        """Keep the page up until Ctrl-C, then stop the server."""
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
        finally:
            self.shutdown()
