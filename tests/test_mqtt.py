"""``--mqtt`` against a real broker: Mosquitto started here on a free loopback port, stopped and
started again mid-run; a paho subscriber checks that every event arrived once and in order."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import cli

from edgeseg.errors import EdgesegError
from edgeseg.runtime.decode import FrameResult, Instance
from edgeseg.runtime.sources import Frame

mqtt = pytest.importorskip("paho.mqtt.client", reason="--mqtt needs paho-mqtt (pip install paho-mqtt)")
MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.access("/usr/sbin/mosquitto", os.X_OK) else None)
pytestmark = pytest.mark.skipif(MOSQUITTO is None,
                                reason="no Mosquitto broker: apt-get install mosquitto (make test does)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """A Mosquitto process on 127.0.0.1 with its own config and persistence folder (so a
    subscriber's session and its queued messages survive a restart, as on a real install)."""

    def __init__(self, folder: Path, password: tuple[str, str] | None = None, tls: list[str] | None = None):
        self.folder, self.port = folder, free_port()
        conf = [f"listener {self.port} 127.0.0.1", "persistence true", f"persistence_location {folder}/",
                "queue_qos0_messages true",
                "user root" if os.geteuid() == 0 else "", f"log_dest file {folder}/mosquitto.log", *(tls or [])]
        if password:
            pw = folder / "passwd"
            subprocess.run([shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd", "-b", "-c", str(pw),
                            *password], check=True, capture_output=True)
            pw.chmod(0o600)
            conf += ["allow_anonymous false", f"password_file {pw}"]
        else:
            conf += ["allow_anonymous true"]
        (folder / "mosquitto.conf").write_text("\n".join(conf) + "\n")
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.folder / "mosquitto.conf")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"mosquitto exited: {self.proc.stderr.read().decode()}") from None
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not listen within 10 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: it saves its persistence file, like a service restart
            self.proc.wait(timeout=10)
        self.proc = None


@pytest.fixture
def broker(tmp_path):
    b = Broker(tmp_path)
    b.start()
    yield b
    b.stop()


class Subscriber:
    """A paho client with a persistent session that keeps what arrives on ``topic/#``.

    It subscribes at QoS 0 (the broker queues QoS 0 for it while it is away: queue_qos0_messages):
    at QoS 1 the broker sends again, after a restart, what this observer had received just before
    it but whose acknowledgement the broker had not stored, a repeat that is not the sink's doing."""

    def __init__(self, port: int, topic: str, auth: tuple[str, str] | None = None):
        self.messages: list[tuple[str, bytes, bool]] = []
        self.connects = self.subacks = 0
        self.cond = threading.Condition()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"edgeseg-test-{port}", clean_session=False)
        if auth:
            c.username_pw_set(*auth)
        c.reconnect_delay_set(0.1, 0.5)

        def on_connect(client, userdata, flags, reason, properties):
            client.subscribe([(f"{topic}/#", 0), ("homeassistant/#", 0)])
            with self.cond:
                self.connects += 1
                self.cond.notify_all()

        def on_subscribe(client, userdata, mid, reason_codes, properties):
            with self.cond:
                self.subacks += 1
                self.cond.notify_all()

        def on_message(client, userdata, msg):
            with self.cond:
                self.messages.append((msg.topic, msg.payload, msg.retain))
                self.cond.notify_all()

        c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
        c.connect("127.0.0.1", port)
        c.loop_start()
        self.client = c
        assert self.wait(lambda: self.subacks >= 1), "no SUBACK from the broker"

    def wait(self, cond, timeout: float = 30.0) -> bool:
        with self.cond:
            return self.cond.wait_for(cond, timeout)

    def on(self, suffix: str) -> list[bytes]:
        with self.cond:
            return [p for t, p, _ in self.messages if t.endswith(suffix)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Said(list):
    """The sink's ``on_event`` messages, waitable."""

    def __init__(self):
        super().__init__()
        self.cond = threading.Condition()

    def append(self, msg: str) -> None:
        with self.cond:
            super().append(msg)
            self.cond.notify_all()

    def wait(self, cond, timeout: float = 30.0) -> bool:
        with self.cond:
            return self.cond.wait_for(cond, timeout)


def frame_with_events(k: int, n_events: int) -> tuple[Frame, FrameResult]:
    inst = Instance(0, "circle", 0.9, np.array([10.0, 10, 50, 50]), track_id=1)
    res = FrameResult(64, 64, [inst])
    res.events = [{"event": "crossed", "track_id": 1, "class_name": "circle", "frame": k, "direction": "in",
                   "n": f"{k}.{j}"} for j in range(n_events)]
    res.counts = {"tracks": 1, "classes": {"circle": 1}, "line": {"in": k, "out": 0}}
    return Frame(k, np.zeros((64, 64, 3), np.uint8), time.time(), "cam"), res


def test_broker_restart_loses_no_event_and_drops_frame_records(broker):
    """Events written before, during and after a broker restart all arrive, once each and in
    order; the frame records written while it was down are dropped and counted, none other.

    While connected the test writes the next frame only once the subscriber has the previous
    record, so none is skipped for the link being behind (that bound has its own test) and the
    counts are exact however loaded the machine is."""
    from edgeseg.runtime.mqtt import MqttSink

    sub = Subscriber(broker.port, "cam")
    said = Said()
    sink = MqttSink(f"mqtt://127.0.0.1:{broker.port}/cam", reconnect=(0.2, 1.0), on_event=said.append)
    assert sub.wait(lambda: b"online" in sub.on("cam/status"))
    sent = []

    def write(k: int, delivered: bool) -> None:
        f, r = frame_with_events(k, 1 + k % 2)
        sent.extend(e["n"] for e in r.events)
        before = len(sub.on("/frame"))
        sink.write(f, r, None)
        if delivered:
            assert sub.wait(lambda: len(sub.on("/frame")) == before + 1), f"frame {k}'s record never arrived"

    for k in range(20):
        write(k, delivered=True)
    assert sink.flush(30)
    # the observer holds every event before the broker goes: nothing of ours is in flight to it
    assert sub.wait(lambda: len(sub.on("/events")) == len(sent))
    broker.stop()
    with sink._cond:
        assert sink._cond.wait_for(lambda: not sink._connected, 30), "the sink did not notice the broker had gone"
    for k in range(20, 40):  # the broker is away: records dropped, events wait
        write(k, delivered=False)
    assert sink.stats["records_dropped"] == 20 and sink.pending() == sum(1 + k % 2 for k in range(20, 40))
    broker.start()
    assert sink.flush(60), "the sink did not reconnect by itself"
    assert sub.wait(lambda: sub.connects >= 2 and sub.subacks >= 2)
    for k in range(40, 50):
        write(k, delivered=True)
    sink.close()

    def closed() -> bool:  # the sink's clean-stop "offline" follows its last event and any repeat of one
        last = max(i for i, (t, _, _) in enumerate(sub.messages) if t == "cam/events")
        return any(t == "cam/status" and p == b"offline" and not r for t, p, r in sub.messages[last + 1:])

    assert sub.wait(closed), "the sink's offline status never came after its last event"
    got = [json.loads(p) for p in sub.on("/events")]
    assert [e["n"] for e in got] == sent  # each once, in order
    assert [e["seq"] for e in got] == list(range(1, len(sent) + 1))
    assert sink.stats["events_sent"] == len(sent) and sink.stats["events_dropped"] == 0
    assert len(sub.on("/frame")) == sink.stats["records_sent"] == 30
    assert sink.stats["records_dropped"] == 20 and sink.stats["records_behind"] == 0
    record = json.loads(sub.on("/frame")[0])
    assert record["instances"][0]["track_id"] == 1 and "mask" not in record["instances"][0]
    assert any("lost mqtt://127.0.0.1" in m for m in said) and any("reconnected" in m for m in said)
    assert any("20 dropped while the broker was away, 0 skipped" in m for m in said), said
    assert json.loads(sub.on("/counts")[-1])["line"]["in"] == 49
    sub.close()


def test_events_wait_in_a_bounded_queue_while_no_broker_is_there():
    """Nothing listens on the port: frame records are dropped at once, events wait, and past
    ``max_events`` the oldest waiting ones go, counted."""
    from edgeseg.runtime.mqtt import MqttSink

    said = Said()
    sink = MqttSink(f"mqtt://127.0.0.1:{free_port()}/none", max_events=5, reconnect=(0.2, 0.5), on_event=said.append)
    for k in range(4):
        sink.write(*frame_with_events(k, 2), None)
    assert sink.pending() == 5 and sink.stats["events_dropped"] == 3 and sink.stats["records_dropped"] == 4
    assert said.wait(lambda: any("cannot connect" in m for m in said))
    sink.close(timeout=1)
    assert any("cannot connect" in m for m in said) and "5 unsent at the end, 3 dropped" in said[-1], said


def test_frame_records_are_skipped_not_queued_while_the_link_is_behind(broker):
    """The broker is frozen (SIGSTOP: connected, reading nothing) so the socket fills: past
    MAX_RECORDS_IN_FLIGHT unwritten records the next ones are skipped and counted, not queued
    without bound; the events written meanwhile all arrive once it reads again, as do the
    records that were sent."""
    from edgeseg.runtime.mqtt import MAX_RECORDS_IN_FLIGHT, MqttSink

    sub = Subscriber(broker.port, "slow")
    said = Said()
    sink = MqttSink(f"mqtt://127.0.0.1:{broker.port}/slow", on_event=said.append)
    assert sub.wait(lambda: b"online" in sub.on("slow/status"))
    f, r = frame_with_events(0, 1)
    many = FrameResult(64, 64, r.instances * 400)  # ~40 kB per record: the socket buffers fill in a few hundred
    broker.proc.send_signal(signal.SIGSTOP)
    written, sent = 0, []
    try:
        while sink.stats["records_behind"] < 5 and written < 3000:
            f, r = frame_with_events(written, 1)
            r.instances = many.instances
            sent.extend(e["n"] for e in r.events)
            sink.write(f, r, None)
            written += 1
            assert len(sink._records_in_flight) <= MAX_RECORDS_IN_FLIGHT
    finally:
        broker.proc.send_signal(signal.SIGCONT)
    s = sink.stats
    assert s["records_behind"] == 5 and s["records_dropped"] == 0 and s["records_sent"] + 5 == written, s
    sink.close(timeout=60)
    assert sub.wait(lambda: sub.on("slow/status")[-1:] == [b"offline"], 60)
    assert [json.loads(p)["n"] for p in sub.on("/events")] == sent
    assert len(sub.on("/frame")) == s["records_sent"]
    assert "5 skipped while the link was behind" in said[-1], said
    sub.close()


def test_a_run_shorter_than_connecting_still_sends_its_events(broker):
    """Written and closed at once, before the connection is made (one picture): close() waits
    for the connection and sends the events; the frame record, written while not connected, is
    dropped and counted."""
    from edgeseg.runtime.mqtt import MqttSink

    sub = Subscriber(broker.port, "short")
    sink = MqttSink(f"mqtt://127.0.0.1:{broker.port}/short")
    sink.write(*frame_with_events(0, 2), None)
    sink.close()
    assert sink.stats["events_sent"] == 2 and sink.pending() == 0
    assert sub.wait(lambda: len(sub.on("/events")) == 2)
    assert sink.stats["records_sent"] + sink.stats["records_dropped"] == 1
    sub.close()


def test_last_will_says_offline_when_the_process_dies(broker):
    sub = Subscriber(broker.port, "cam2")
    code = ("import sys, time\nfrom edgeseg.runtime.mqtt import MqttSink\n"
            "s = MqttSink(sys.argv[1])\nprint('started', flush=True)\ntime.sleep(60)\n")
    p = subprocess.Popen([sys.executable, "-c", code, f"mqtt://127.0.0.1:{broker.port}/cam2"],
                         stdout=subprocess.PIPE, text=True)
    try:
        assert sub.wait(lambda: (b"online" in [x for t, x, _ in sub.messages if t == "cam2/status"]))
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert sub.wait(lambda: sub.on("cam2/status")[-1:] == [b"offline"], 10), sub.messages
    sub.close()


def test_credentials_from_the_environment_and_never_printed(tmp_path, monkeypatch):
    from edgeseg.runtime.mqtt import MqttSink, parse_url

    b = Broker(tmp_path, password=("cam", "s3cret-pw"))
    b.start()
    try:
        said = Said()
        monkeypatch.setenv("EDGESEG_MQTT_USERNAME", "cam")
        monkeypatch.setenv("EDGESEG_MQTT_PASSWORD", "wrong-pw")
        bad = MqttSink(f"mqtt://127.0.0.1:{b.port}/cam3", reconnect=(0.2, 0.5), on_event=said.append)
        said.wait(lambda: said)
        bad.close(timeout=1)
        assert said and "refused" in said[0] and "wrong-pw" not in " ".join(said) and "cam:***@" in said[0], said
        monkeypatch.setenv("EDGESEG_MQTT_PASSWORD", "s3cret-pw")
        sub = Subscriber(b.port, "cam3", auth=("cam", "s3cret-pw"))
        good = MqttSink(f"mqtt://127.0.0.1:{b.port}/cam3", on_event=said.append)
        f, r = frame_with_events(0, 1)
        good.write(f, r, None)
        assert good.flush(10)
        good.close()
        assert sub.wait(lambda: len(sub.on("/events")) == 1)
        assert "s3cret" not in " ".join(said)
        sub.close()
    finally:
        b.stop()
    assert parse_url("mqtt://u:p%40ss@h/x", env={}).password == "p@ss"
    assert "p@ss" not in parse_url("mqtt://u:p%40ss@h/x", env={}).masked()
    with pytest.raises(EdgesegError, match=r"expected mqtt://") as e:
        parse_url("http://u:hidden@h/x", env={})
    assert "hidden" not in str(e.value)
    with pytest.raises(EdgesegError, match="wildcards"):
        parse_url("mqtt://h/a/#", env={})


def test_run_publishes_the_same_events_as_the_json_record(int8_bundle, broker, tmp_path):
    """``edgeseg run --track --line --mqtt --mqtt-ha``: the events on the broker are the events of
    the --json records, in the same order; Home Assistant gets a sensor per class."""
    import cv2
    from test_track import shapes_video

    path = tmp_path / "shapes.mp4"
    wr = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30, (480, 320))
    for img, _ in shapes_video(frames=60):
        wr.write(img)
    wr.release()
    sub = Subscriber(broker.port, "edgeseg/cam")
    js = tmp_path / "r.jsonl"
    r = cli("run", str(int8_bundle.path), "--source", str(path), "--line", "0,0.5,1,0.5", "--json", str(js),
            "--mqtt", f"mqtt://127.0.0.1:{broker.port}/edgeseg/cam", "--mqtt-events-only", "--mqtt-ha")
    assert r.returncode == 0, r.stderr
    events = [e for line in js.read_text().splitlines() for e in json.loads(line)["events"]]
    assert events and sub.wait(lambda: len(sub.on("/events")) >= len(events))
    got = [json.loads(p) for p in sub.on("/events")]
    assert [{k: v for k, v in e.items() if k not in ("seq", "source")} for e in got] == events
    assert not sub.on("/frame")  # events only
    configs = {t: json.loads(p) for t, p, _ in sub.messages if t.startswith("homeassistant/")}
    names = [c["name"] for c in configs.values()]
    assert {"circle count", "star count", "line in", "line out"} <= set(names)
    assert all(c["state_topic"] == "edgeseg/cam/counts" for c in configs.values())
    sub.close()


def test_run_takes_credentials_from_the_environment_and_never_prints_them(int8_bundle, tmp_path, monkeypatch):
    """``edgeseg run --mqtt`` with the user and password only in the environment: it publishes
    (the broker refuses anonymous clients) and neither its output nor its errors hold the password;
    with a wrong one nothing is published and the wrong password is not printed either."""
    from conftest import VAL_IMAGES

    b = Broker(tmp_path, password=("cam", "s3cret-pw"))
    b.start()
    try:
        sub = Subscriber(b.port, "clicam", auth=("cam", "s3cret-pw"))
        image = str(sorted(VAL_IMAGES.iterdir())[0])
        url = f"mqtt://127.0.0.1:{b.port}/clicam"
        monkeypatch.setenv("EDGESEG_MQTT_USERNAME", "cam")
        monkeypatch.setenv("EDGESEG_MQTT_PASSWORD", "wrong-pw")
        bad = cli("run", str(int8_bundle.path), "--source", image, "--track", "--mqtt", url)
        assert "wrong-pw" not in bad.stdout + bad.stderr and "cam:***@" in bad.stderr, bad.stderr
        monkeypatch.setenv("EDGESEG_MQTT_PASSWORD", "s3cret-pw")
        good = cli("run", str(int8_bundle.path), "--source", image, "--track", "--mqtt", url)
        assert good.returncode == 0, good.stderr
        assert "s3cret" not in good.stdout + good.stderr
        assert sub.wait(lambda: sub.on("clicam/status")[-1:] == [b"offline"] and sub.on("/events"))
        assert [json.loads(p)["event"] for p in sub.on("/events")] == ["appeared"] * len(sub.on("/events"))
        sub.close()
    finally:
        b.stop()


def test_mqtts_verifies_the_broker_with_the_given_ca(tmp_path):
    """mqtts:// with ?ca=: TLS to a broker whose certificate a private CA signed; without the CA
    the connection is refused and the run says so once."""
    from edgeseg.runtime.mqtt import MqttSink

    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("no openssl command to make test certificates")

    def ssl(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, cwd=tmp_path)

    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
        "-subj", "/CN=edgeseg test CA")
    ssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
    (tmp_path / "ext.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    ssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out",
        "server.pem", "-days", "1", "-extfile", "ext.cnf")
    b = Broker(tmp_path, tls=[f"cafile {tmp_path / 'ca.pem'}", f"certfile {tmp_path / 'server.pem'}",
                              f"keyfile {tmp_path / 'server.key'}"])
    b.start()
    try:
        said = Said()
        sink = MqttSink(f"mqtts://localhost:{b.port}/tls?ca={tmp_path / 'ca.pem'}", on_event=said.append)
        f, r = frame_with_events(0, 2)
        sink.write(f, r, None)
        assert sink.flush(10) and sink.stats["events_sent"] == 2
        sink.close()
        untrusted = Said()
        sink = MqttSink(f"mqtts://localhost:{b.port}/tls", reconnect=(0.2, 0.5), on_event=untrusted.append)
        untrusted.wait(lambda: untrusted)
        sink.close(timeout=1)
        assert untrusted and "cannot connect to mqtts://localhost" in untrusted[0] and len(untrusted) == 1, untrusted
    finally:
        b.stop()
