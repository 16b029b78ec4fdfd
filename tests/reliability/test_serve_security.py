"""The ``--serve`` viewer under attack: real sockets, loopback only (no test server listens beyond it).

A bind beyond loopback is simulated by telling the sink its loopback address is not loopback (the
one fake here: the test machine's other interfaces must not be exposed); the credential, Host
check, timeouts and caps are the real code paths.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import cv2
import numpy as np
import pytest
from conftest import VAL_IMAGES

from edgeseg.runtime import mjpeg
from edgeseg.runtime.decode import FrameResult
from edgeseg.runtime.sources import Frame


def _get(url: str, headers: dict | None = None, timeout: float = 10) -> tuple[int, bytes, dict]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def _frame(sink, name="/home/someone/secret/place/photo.jpg"):
    img = np.full((48, 64, 3), 90, np.uint8)
    sink.write(Frame(3, img, time.time(), name), FrameResult(64, 48), img)


@pytest.fixture
def sink():
    made = []

    def make(*a, **kw):
        made.append(mjpeg.MjpegSink(*a, **kw))
        return made[-1]

    yield make
    for s in made:
        s.shutdown()


def test_port_alone_binds_loopback(sink):
    assert mjpeg.parse_address("8080") == ("127.0.0.1", 8080)
    assert mjpeg.parse_address(":8080") == ("127.0.0.1", 8080)
    s = sink("0")
    assert s.address[0] == "127.0.0.1" and s.token is None


def test_beyond_loopback_needs_the_generated_token(sink, monkeypatch):
    monkeypatch.setattr(mjpeg, "is_loopback", lambda host: False)  # as if bound to a LAN address
    monkeypatch.delenv(mjpeg.TOKEN_ENV, raising=False)
    s = sink("127.0.0.1:0")
    _frame(s)
    assert s.token and len(s.token) >= 24 and f"?token={s.token}" in s.url
    base = f"http://127.0.0.1:{s.address[1]}/"
    for path in ("", "frame.jpg", "frame.json", "stream", "status.json"):
        assert _get(base + path)[0] == 401, path
        assert _get(base + path + "?token=wrong")[0] == 403, path
        assert _get(base + path, {"Authorization": "Bearer wrong"})[0] == 403, path
    code, body, headers = _get(base + f"?token={s.token}")
    assert code == 200 and b"/stream" in body
    cookie = headers["Set-Cookie"].split(";")[0]
    assert "HttpOnly" in headers["Set-Cookie"] and s.token in cookie
    # after the first visit the browser's cookie is enough (the page's <img src=/stream> carries no token)
    code, body, _ = _get(base + "frame.jpg", {"Cookie": cookie})
    assert code == 200 and cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR).shape == (48, 64, 3)
    assert _get(base + "frame.json", {"Authorization": f"Bearer {s.token}"})[0] == 200


def test_a_token_given_by_the_user_is_required_on_loopback_too(sink, monkeypatch):
    monkeypatch.setenv(mjpeg.TOKEN_ENV, "from-the-environment")
    s = sink("127.0.0.1:0")
    base = f"http://127.0.0.1:{s.address[1]}/"
    assert _get(base)[0] == 401 and _get(base + "?token=from-the-environment")[0] == 200
    s2 = sink("127.0.0.1:0", token="given")
    assert _get(f"http://127.0.0.1:{s2.address[1]}/?token=given")[0] == 200


def test_foreign_host_header_is_refused(sink):
    """DNS rebinding: a page of evil.example whose name now resolves to 127.0.0.1 sends its own Host."""
    s = sink("127.0.0.1:0")
    port = s.address[1]
    base = f"http://127.0.0.1:{port}/"
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example", "localhost.evil.example:80"):
        assert _get(base, {"Host": host})[0] == 403, host
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", "localhost", f"[::1]:{port}"):
        assert _get(base, {"Host": host})[0] == 200, host
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    raw.sendall(b"GET / HTTP/1.0\r\n\r\n")  # no Host at all
    assert raw.recv(100).startswith(b"HTTP/1.0 403"), "a request without Host is refused"
    raw.close()


def test_explicit_host_names_are_allowed(sink, monkeypatch):
    monkeypatch.setenv(mjpeg.HOSTS_ENV, "board.lan, camera-box")
    s = sink("127.0.0.1:0")
    base = f"http://127.0.0.1:{s.address[1]}/"
    assert _get(base, {"Host": "board.lan:8080"})[0] == 200 and _get(base, {"Host": "camera-box"})[0] == 200
    assert _get(base, {"Host": "other.lan"})[0] == 403


def test_frame_json_carries_no_absolute_path_or_url_credentials(sink):
    s = sink("127.0.0.1:0")
    _frame(s)
    rec = json.loads(_get(f"http://127.0.0.1:{s.address[1]}/frame.json")[1])
    assert rec["source"] == "photo.jpg" and rec["frame"] == 3
    _frame(s, "rtsp://admin:hunter2@10.0.0.7:554/live")
    rec = json.loads(_get(f"http://127.0.0.1:{s.address[1]}/frame.json")[1])
    assert rec["source"] == "rtsp://10.0.0.7:554/live"


def _threads() -> int:
    return threading.active_count()


def test_idle_connections_neither_stop_a_viewer_nor_grow_threads(sink):
    s = sink("127.0.0.1:0")
    _frame(s)
    port = s.address[1]
    before = _threads()
    idle = []
    for _ in range(100):
        c = socket.create_connection(("127.0.0.1", port), timeout=5)
        c.sendall(b"GET /frame.jpg HTTP/1.1\r\nHost: localhost\r\n")  # never finishes its headers
        idle.append(c)
    time.sleep(0.5)
    peak = _threads() - before
    assert peak <= mjpeg.MAX_CONNECTIONS + 2, f"{peak} threads for 100 idle connections"
    assert s.server.connections() <= mjpeg.MAX_CONNECTIONS
    t0 = time.monotonic()
    code, body, _ = _get(f"http://127.0.0.1:{port}/frame.jpg", timeout=5)
    assert code == 200 and body[:2] == b"\xff\xd8" and time.monotonic() - t0 < 3
    for c in idle:
        c.close()


def test_idle_and_slow_clients_time_out(sink, monkeypatch):
    monkeypatch.setattr(mjpeg, "CLIENT_TIMEOUT_S", 0.5)
    s = sink("127.0.0.1:0")
    c = socket.create_connection(("127.0.0.1", s.address[1]), timeout=5)
    t0 = time.monotonic()
    assert c.recv(100) == b"" and time.monotonic() - t0 < 3  # the server hung up on a silent client
    c.close()
    assert s.server.connections() == 0


def test_viewers_are_capped(sink):
    s = sink("127.0.0.1:0")
    _frame(s)
    base = f"http://127.0.0.1:{s.address[1]}/"
    streams = [urllib.request.urlopen(base + "stream", timeout=10) for _ in range(mjpeg.MAX_VIEWERS)]
    for r in streams:
        assert r.readline().startswith(b"--edgesegframe")
    code, body, _ = _get(base + "stream")
    assert code == 503 and b"viewers" in body
    streams.pop().close()
    deadline = time.monotonic() + 5
    while s._viewers >= mjpeg.MAX_VIEWERS and time.monotonic() < deadline:
        _frame(s)  # the closed viewer's thread notices on its next write
        time.sleep(0.1)
    streams.append(urllib.request.urlopen(base + "stream", timeout=10))
    assert streams[-1].readline().startswith(b"--edgesegframe"), "a freed viewer slot is available again"
    for r in streams:
        r.close()


def test_clients_that_go_away_print_no_traceback(sink, capfd):
    s = sink("127.0.0.1:0")
    _frame(s)
    port = s.address[1]
    for request in (b"GET /stream HTTP/1.1\r\nHost: localhost\r\n\r\n", b"GET / HTTP/1.1\r\nHost: loc",
                    b"GET /frame.jpg HTTP/1.1\r\nHost: localhost\r\n\r\n"):
        c = socket.create_connection(("127.0.0.1", port), timeout=5)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # close with RST
        c.sendall(request)
        time.sleep(0.1)
        c.close()
        for _ in range(5):
            _frame(s)
            time.sleep(0.05)
    time.sleep(0.3)
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Exception" not in err, err


def _video(path, n: int, fps: float) -> str:
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (160, 120))
    frames = [cv2.resize(cv2.imread(str(f)), (160, 120)) for f in sorted(VAL_IMAGES.iterdir())[:5]]
    for i in range(n):
        w.write(frames[i % len(frames)])
    w.release()
    return str(path)


def _serve(bundle, *args) -> tuple[subprocess.Popen, str]:
    p = subprocess.Popen([sys.executable, "-m", "edgeseg", "run", str(bundle), *args],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    for _ in range(20):
        line = p.stderr.readline()
        if "streaming annotated frames at" in line:
            return p, line.split(" at ")[1].split()[0]
        assert line, p.stderr.read()
    raise AssertionError("no URL printed")


def test_serve_paces_a_video_at_its_frame_rate(fp32_bundle, tmp_path):
    video = _video(tmp_path / "v.mp4", 20, 10.0)
    t0 = time.monotonic()
    p, url = _serve(fp32_bundle.path, "--source", video, "--serve", "127.0.0.1:0", "--max-frames", "20")
    out, err = p.communicate(timeout=120)
    took = time.monotonic() - t0
    assert p.returncode == 0 and "20 frames" in out, err
    assert took >= 1.8, f"20 frames of a 10 fps video served in {took:.1f} s: not paced"
    t0 = time.monotonic()
    p, url = _serve(fp32_bundle.path, "--source", video, "--serve", "127.0.0.1:0", "--max-frames", "20",
                    "--no-realtime")
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0 and "20 frames" in out, err


def test_serve_keeps_the_page_up_after_the_run_until_ctrl_c(fp32_bundle, tmp_path):
    video = _video(tmp_path / "v.mp4", 5, 25.0)
    p, url = _serve(fp32_bundle.path, "--source", video, "--serve", "127.0.0.1:0")
    try:
        deadline = time.monotonic() + 60
        st = {}
        while time.monotonic() < deadline:
            st = json.loads(_get(url + "status.json")[1])
            if st["state"] == "ended":
                break
            time.sleep(0.2)
        assert st == {"state": "ended", "frames": 5}, st
        assert p.poll() is None and _get(url + "frame.jpg")[0] == 200  # the last frame is still there
        assert b"run ended" in _get(url)[1]
        os.killpg(p.pid, signal.SIGINT)
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode == 0 and "5 frames" in out and "Traceback" not in err, err
    assert "run ended" in err and "Ctrl-C" in err
