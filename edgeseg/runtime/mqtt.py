"""``--mqtt``: each frame's results and the tracking events, published to an MQTT broker (paho-mqtt).

Topics under the URL's path (``mqtt://host/edgeseg/cam1`` -> ``edgeseg/cam1``)::

    <topic>/status   "online" on connect, "offline" as the last will and on a clean stop (retained)
    <topic>/frame    the --json record of each frame, masks left out (QoS 0; not with events only)
    <topic>/events   one message per event: appeared, left, crossed, entered, exited (QoS 1)
    <topic>/counts   the counts whenever they change (retained): classes seen now, line and zone

Events are never dropped while the broker is away: they wait in order (up to ``max_events``)
and go out once it is back, one in flight at a time, so they arrive in order; each carries
``seq``, numbered from 1 per run, for a consumer to drop the repeat QoS 1 allows when an
acknowledgement was lost with the connection. Frame records are only worth their moment: while
disconnected they are dropped (``records_dropped``); while connected but with
MAX_RECORDS_IN_FLIGHT earlier records still unwritten (a link slower than the frame rate) the
new one is skipped (``records_behind``) rather than queued without bound; both are counted and
said at the end. paho reconnects by itself, waiting twice as long after each failure
(``reconnect`` seconds: first and longest wait).

Credentials come from the URL (``mqtt://user:pass@host``) or from EDGESEG_MQTT_USERNAME and
EDGESEG_MQTT_PASSWORD, and are never printed: messages show the URL with the password masked.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

import numpy as np

from ..errors import EdgesegError, ToolchainMissing
from .decode import FrameResult
from .sinks import result_record
from .sources import Frame

log = logging.getLogger(__name__)

MAX_EVENTS = 10_000  # events kept while the broker is away (then the oldest go, counted)
MAX_RECORDS_IN_FLIGHT = 8  # frame records handed to the socket and not yet written: more are dropped
HA_PREFIX = "homeassistant"
_SENDING = -1  # _in_flight while publish() has not yet returned the event's mid (paho mids are 1..65535)


@dataclass
class BrokerUrl:
    tls: bool
    host: str
    port: int
    topic: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca: str | None = None

    def masked(self) -> str:
        who = f"{self.username}:***@" if self.username and self.password else \
            f"{self.username}@" if self.username else ""
        return f"{'mqtts' if self.tls else 'mqtt'}://{who}{self.host}:{self.port}/{self.topic}"


def parse_url(url: str, env: dict[str, str] | None = None) -> BrokerUrl:
    """``mqtt[s]://[user[:pass]@]host[:port][/topic][?ca=/path/ca.pem]``; credentials missing
    from the URL come from EDGESEG_MQTT_USERNAME / EDGESEG_MQTT_PASSWORD."""
    env = os.environ if env is None else env
    parts = urlsplit(url)
    shown = re.sub(r"//([^:/@]*):[^@]*@", r"//\1:***@", url)  # the error must not print a password either
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname or port == -1:
        raise EdgesegError(f"--mqtt {shown}: expected mqtt://[user:pass@]host[:port]/topic (or mqtts:// for TLS), "
                           "e.g. mqtt://192.168.1.10/edgeseg/cam1")
    topic = parts.path.strip("/") or "edgeseg"
    if any(c in topic for c in "+#\0") or "#" in url:
        raise EdgesegError(f"--mqtt {shown}: a topic to publish on cannot hold the wildcards + or #")
    query = parse_qs(parts.query)
    ca = query.get("ca", [None])[0]
    if ca is not None and not os.path.isfile(ca):
        raise EdgesegError(f"--mqtt {shown}: ca={ca} is not a file; give the broker's CA certificate (PEM)")
    tls = parts.scheme == "mqtts"
    username = unquote(parts.username) if parts.username else env.get("EDGESEG_MQTT_USERNAME") or None
    password = unquote(parts.password) if parts.password else env.get("EDGESEG_MQTT_PASSWORD") or None
    return BrokerUrl(tls, parts.hostname, port or (8883 if tls else 1883), topic, username, password, ca)


def _paho():
    try:
        import paho.mqtt.client as mqtt
    except ImportError:
        from ..install import pip_extra

        raise ToolchainMissing(f"--mqtt needs paho-mqtt: {pip_extra('mqtt')}") from None
    return mqtt


class MqttSink:
    """A sink (``write(frame, result, annotated)`` / ``close()``) that publishes to a broker."""

    def __init__(self, url: str, *, events_only: bool = False, ha_discovery: bool = False,
                 names: list[str] | None = None, source: str = "", max_events: int = MAX_EVENTS,
                 reconnect: tuple[float, float] = (1.0, 30.0), keepalive: int = 30, client_id: str | None = None,
                 on_event: Callable[[str], None] | None = None):
        mqtt = _paho()
        self.url = parse_url(url)
        self.events_only, self.ha_discovery, self.names = events_only, ha_discovery, list(names or [])
        self.source = source
        self.on_event = on_event or (lambda msg: log.warning("%s", msg))
        self.topic = self.url.topic
        self.status_topic = f"{self.topic}/status"
        self.stats = {"records_sent": 0, "records_dropped": 0, "records_behind": 0, "events_sent": 0,
                      "events_dropped": 0}
        self._events: deque[bytes] = deque()
        self.max_events = max(2, max_events)
        self._seq = 0
        self._counts: bytes | None = None  # newest counts, published on change and again on reconnect
        self._counts_sent: bytes | None = None
        self._cond = threading.Condition()
        self._connected = False
        self._in_flight: int | None = None  # mid of the event awaiting its PUBACK (_SENDING: being published)
        self._early_acks: set[int] = set()
        self._records_in_flight: deque = deque()  # paho's MQTTMessageInfo of records not yet written
        self._closing = False
        self._was_connected = False
        self._refused: str | None = None

        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or "", protocol=mqtt.MQTTv311)
        c.will_set(self.status_topic, "offline", qos=1, retain=True)
        if self.url.username:
            c.username_pw_set(self.url.username, self.url.password)
        if self.url.tls:
            c.tls_set(ca_certs=self.url.ca)  # the system's CAs unless ?ca= names the broker's own
        c.reconnect_delay_set(min_delay=reconnect[0], max_delay=reconnect[1])  # doubles after each failure
        c.on_connect, c.on_disconnect, c.on_publish = self._on_connect, self._on_disconnect, self._on_publish
        c.on_connect_fail = self._on_connect_fail
        c.max_queued_messages_set(0)
        self.client = c
        try:
            c.connect_async(self.url.host, self.url.port, keepalive)
        except (OSError, ValueError) as e:
            raise EdgesegError(f"--mqtt {self.url.masked()}: {e}") from None
        c.loop_start()  # paho's thread: the socket, retries with back-off
        self._sender = threading.Thread(target=self._send_events, name="edgeseg-mqtt", daemon=True)
        self._sender.start()

    # paho's callbacks (its network thread)
    def _on_connect(self, client, userdata, flags, reason, properties) -> None:
        if reason.is_failure:
            if self._refused != str(reason):
                self._refused = str(reason)
                self.on_event(f"mqtt: {self.url.masked()} refused the connection ({reason}); retrying")
            with self._cond:
                self._cond.notify_all()  # close() waits for the first attempt's outcome
            return
        self._refused = None
        client.publish(self.status_topic, "online", qos=1, retain=True)
        if self.ha_discovery:
            for topic, payload in self.discovery():
                client.publish(topic, payload, qos=1, retain=True)
        self.on_event(f"mqtt: {'reconnected to' if self._was_connected else 'connected to'} {self.url.masked()}")
        with self._cond:
            self._connected = self._was_connected = True
            self._counts_sent = None  # the broker may have restarted without its retained messages
            self._cond.notify_all()

    def _on_connect_fail(self, client, userdata) -> None:
        if self._refused != "unreachable":  # once until it connects, not at every retry
            self._refused = "unreachable"
            self.on_event(f"mqtt: cannot connect to {self.url.masked()} (nothing listening there, an unknown name, "
                          "or TLS refused: check ?ca=); retrying with back-off")
        with self._cond:
            self._cond.notify_all()

    def _on_disconnect(self, client, userdata, flags, reason, properties) -> None:
        with self._cond:
            was, self._connected = self._connected, False
            self._records_in_flight.clear()
            self._cond.notify_all()
        if was and not self._closing:
            self.on_event(f"mqtt: lost {self.url.masked()} ({reason}); reconnecting, frame records are dropped "
                          "meanwhile, events wait")

    def _on_publish(self, client, userdata, mid, reason, properties) -> None:
        with self._cond:
            if mid == self._in_flight:
                self._event_acknowledged()
            elif self._in_flight is _SENDING:  # acknowledged before publish() returned its mid
                self._early_acks.add(mid)

    def _event_acknowledged(self) -> None:  # with self._cond held
        self._in_flight = None
        self._events.popleft()
        self.stats["events_sent"] += 1
        self._cond.notify_all()

    def _send_events(self) -> None:
        """One event in flight at a time: paho sends an unacknowledged one again after a
        reconnect before anything newer, so the order holds across broker restarts."""
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._closing or (self._connected and self._in_flight is None
                                                              and (self._events or self._counts != self._counts_sent)))
                if self._closing and (not self._connected or (not self._events and self._in_flight is None)):
                    return
                if not self._connected or self._in_flight is not None:
                    self._cond.wait(0.05)  # closing: the last event's acknowledgement is on its way
                    continue
                counts = self._counts if self._counts != self._counts_sent else None
                payload = self._events[0] if self._events else None
                if payload is not None:
                    self._in_flight, self._early_acks = _SENDING, set()
            # publish() outside our lock: paho's network thread holds its own lock while it calls
            # _on_publish, which takes ours (holding ours here while publish() took paho's deadlocked)
            if payload is not None:
                info = self.client.publish(f"{self.topic}/events", payload, qos=1)
                with self._cond:
                    if info.mid in self._early_acks:
                        self._event_acknowledged()
                    else:
                        self._in_flight = info.mid
            if counts is not None:
                self.client.publish(f"{self.topic}/counts", counts, qos=0, retain=True)
                with self._cond:
                    self._counts_sent = counts

    def write(self, frame: Frame, result: FrameResult, annotated: np.ndarray | None) -> None:
        events = [json.dumps({"seq": self._seq + k + 1, "source": self.source or frame.name, **e},
                             separators=(",", ":")).encode() for k, e in enumerate(result.events or [])]
        self._seq += len(events)
        with self._cond:
            for e in events:
                if len(self._events) >= self.max_events:
                    # the oldest waiting one goes (bounded on a week-long outage), never the one on the wire
                    del self._events[1 if self._in_flight is not None else 0]
                    self.stats["events_dropped"] += 1
                self._events.append(e)
            if result.counts is not None:
                self._counts = json.dumps(result.counts, separators=(",", ":"), sort_keys=True).encode()
            self._cond.notify_all()
            connected = self._connected
            while self._records_in_flight and self._records_in_flight[0].is_published():
                self._records_in_flight.popleft()
            room = len(self._records_in_flight) < MAX_RECORDS_IN_FLIGHT
        if self.events_only:
            return
        if not connected:
            self.stats["records_dropped"] += 1
            return
        if not room:
            self.stats["records_behind"] += 1
            return
        record = json.dumps(result_record(frame, result, self.source or frame.name, masks=False),
                            separators=(",", ":"))
        info = self.client.publish(f"{self.topic}/frame", record, qos=0)
        if info.rc == 0:
            with self._cond:
                self._records_in_flight.append(info)
            self.stats["records_sent"] += 1
        else:  # the connection went between our check and publish()
            self.stats["records_dropped"] += 1

    def pending(self) -> int:
        """Events not yet acknowledged by the broker."""
        with self._cond:
            return len(self._events)

    def flush(self, timeout: float) -> bool:
        """Wait until every event is acknowledged (True) or ``timeout`` seconds pass."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._events and self._in_flight is None, timeout)

    def discovery(self) -> list[tuple[str, str]]:
        """Home Assistant MQTT discovery: a sensor per class (objects seen now) and, with
        --line, the in and out totals; all under one device, available while we are online."""
        node = re.sub(r"[^a-zA-Z0-9_-]", "_", self.topic)
        device = {"identifiers": [f"edgeseg_{node}"], "name": f"edgeseg {self.topic}", "manufacturer": "edgeseg"}
        common = {"state_topic": f"{self.topic}/counts", "availability_topic": self.status_topic,
                  "payload_available": "online", "payload_not_available": "offline", "device": device}
        out = []
        sensors = [(f"{n}_count", f"{n} count", f"{{{{ value_json.classes.get('{n}', 0) }}}}", "measurement")
                   for n in self.names]
        sensors += [("line_in", "line in", "{{ value_json.line['in'] if value_json.line is defined else 0 }}",
                     "total_increasing"),
                    ("line_out", "line out", "{{ value_json.line['out'] if value_json.line is defined else 0 }}",
                     "total_increasing")]
        for key, name, template, state_class in sensors:
            key = re.sub(r"[^a-zA-Z0-9_-]", "_", key)
            cfg = {"name": name, "unique_id": f"edgeseg_{node}_{key}", "value_template": template,
                   "state_class": state_class, **common}
            out.append((f"{HA_PREFIX}/sensor/edgeseg_{node}/{key}/config", json.dumps(cfg)))
        return out

    def close(self, timeout: float = 5.0) -> None:
        """Send what is waiting (up to ``timeout`` seconds), say "offline", disconnect."""
        with self._cond:
            # a short run (one picture) can end before the connection is made: wait for it while
            # events wait, unless connecting has already failed (then the exit is not delayed)
            self._cond.wait_for(lambda: self._connected or not self._events or self._refused is not None, timeout)
            connected = self._connected
        if connected:
            self.flush(timeout)
        self._closing = True
        with self._cond:
            self._cond.notify_all()
        self._sender.join(timeout=timeout)
        if self._connected:
            info = self.client.publish(self.status_topic, "offline", qos=1, retain=True)
            deadline = time.monotonic() + timeout
            while not info.is_published() and self._connected and time.monotonic() < deadline:
                time.sleep(0.01)
        self.client.disconnect()
        self.client.loop_stop()
        s = self.stats
        unsent = len(self._events)
        if s["records_dropped"] or s["records_behind"] or s["events_dropped"] or unsent:
            self.on_event(f"mqtt: {s['events_sent']} events sent, {unsent} unsent at the end, "
                          f"{s['events_dropped']} dropped (more than {self.max_events} waiting); "
                          f"{s['records_sent']} frame records sent, {s['records_dropped']} dropped while the broker "
                          f"was away, {s['records_behind']} skipped while the link was behind")
