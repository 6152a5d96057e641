"""Sync with the cloud bridge over MQTT: the outbox drains, acks empty it, commands arrive.

Delivery is end to end: an event leaves the outbox only when the bridge's `acks` names
it, so a broker that drops queued messages, restarts or vanishes for a day loses nothing.
The connection itself (reconnects, MQTT version, login, TLS, Last Will) is the shared
`o2o_protocol.mqtt.MqttLink`; one worker thread here publishes batches and applies acks
and commands, so the network thread never waits on the disk.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode

from kiosk import ha
from kiosk.commands import apply_command
from kiosk.config import MqttSection
from kiosk.localdb import KioskDB
from o2o_protocol import topics
from o2o_protocol.messages import (
    Command,
    ProtocolError,
    dumps,
    parse_ack,
    parse_command,
)
from o2o_protocol.mqtt import MqttLink, Will
from o2o_protocol.timeutil import rfc3339

log = logging.getLogger(__name__)

#: At most this many events are in flight (published, not yet acked) at once.
MAX_IN_FLIGHT = 2000
STATUS_EVERY_S = 30.0

T = TypeVar("T")


class Sync:
    """Owns the kiosk's MQTT connection. Start once; `notify()` after each recorded event."""

    def __init__(
        self,
        cfg: MqttSection,
        db: KioskDB,
        *,
        version: str,
        telemetry: Callable[[], dict[str, Any]] = dict,
        on_command: Callable[[Command], None] | None = None,
    ) -> None:
        self.cfg, self.db, self.version = cfg, db, version
        self._telemetry, self._on_command = telemetry, on_command
        s, k = db.store_id, db.kiosk_id
        self._t_events = topics.kiosk_topic(s, k, topics.EVENTS)
        self._t_acks = topics.kiosk_topic(s, k, topics.ACKS)
        self._t_cmd = topics.kiosk_topic(s, k, topics.CMD)
        self._t_status = topics.kiosk_topic(s, k, topics.STATUS)
        self._wake = threading.Condition()
        self._acks: deque[list[str]] = deque()
        self._commands: deque[Command] = deque()
        #: Event id -> when it was last published. The worker's alone: the network thread
        #: only raises `_resend_all`, so nobody mutates it while the worker iterates it.
        self._in_flight: dict[str, float] = {}
        self._resend_all = False
        self._stopping = threading.Event()
        self._status_due = True
        self._refusal_logged = False
        self._worker = threading.Thread(target=self._run, name="sync", daemon=True)
        self._link = MqttLink(
            cfg,
            client_id=f"o2o-kiosk-{s}-{k}",
            will=Will(self._t_status, dumps({"online": False})),
            on_connect=self._on_connect,
            on_publish=self._on_publish,
            unreachable_note="outcomes stay queued, retrying",
        )
        self._link.subscribe([self._t_acks], self._on_ack)
        self._link.subscribe([self._t_cmd], self._on_cmd)
        self._link.subscribe([topics.HA_STATUS], self._on_ha_status)

    @property
    def client(self) -> mqtt.Client:
        """The current paho client (a new one after a switch to MQTT 3.1.1)."""
        return self._link.client

    @property
    def protocol(self) -> int:
        return int(self._link.protocol)

    def start(self) -> None:
        """Connect in the background: a broker that is down at boot stops nothing."""
        self._link.start()
        self._worker.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Say goodbye (offline status), then stop the worker and the network loop."""
        self._stopping.set()
        self.notify()
        self._worker.join(timeout)
        if self._link.connected:
            info = self._link.publish(
                self._t_status, dumps(self._status(online=False)), qos=1, retain=True
            )
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(timeout=2.0)
        self._link.stop()

    # --- what others call ------------------------------------------------------------

    def notify(self) -> None:
        """Something new to send (or to stop for): wake the worker now."""
        with self._wake:
            self._wake.notify()

    @property
    def connected(self) -> bool:
        return self._link.connected

    def wait_connected(self, timeout: float) -> bool:
        return self._link.wait_connected(timeout)

    def wait_subscribed(self, timeout: float) -> bool:
        """Connected and subscribed: acks and commands published from now on reach it."""
        return self._link.wait_subscribed(timeout)

    def wait_drained(self, timeout: float) -> bool:
        """Block until every event in the outbox is acked, or the timeout passes."""
        deadline = time.monotonic() + timeout
        while self.db.outbox_size() > 0:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    # --- MQTT callbacks (network thread: parse, queue, return) -----------------------

    def _on_connect(self) -> None:
        self._refusal_logged = False
        self._publish_discovery()
        with self._wake:
            self._resend_all = True  # whatever was in flight is re-sent on this connection
            self._status_due = True
            self._wake.notify()

    def _on_publish(self, reason_code: ReasonCode) -> None:
        """A broker's ACL drops a refused publish silently unless we listen (MQTT v5 PUBACK):
        a kiosk whose login does not match its ids would otherwise retry forever, unseen."""
        if reason_code.is_failure and not self._refusal_logged:
            self._refusal_logged = True
            log.error(
                "the broker refused a publish (%s): does MQTT user %r match store/kiosk %s/%s?",
                reason_code,
                self.cfg.username,
                self.db.store_id,
                self.db.kiosk_id,
            )

    def _on_ack(self, msg: mqtt.MQTTMessage) -> None:
        if (ack := _parsed(msg, "ack", parse_ack)) is not None:
            with self._wake:
                self._acks.append(ack.ids)
                self._wake.notify()

    def _on_cmd(self, msg: mqtt.MQTTMessage) -> None:
        if (cmd := _parsed(msg, "command", parse_command)) is not None:
            with self._wake:
                self._commands.append(cmd)
                self._wake.notify()

    def _on_ha_status(self, msg: mqtt.MQTTMessage) -> None:
        """Home Assistant came (back) online: it forgets devices, so tell it again."""
        if msg.payload.strip() == b"online":
            self._publish_discovery()

    def _publish_discovery(self) -> None:
        topic, payload = ha.discovery(self.db.store_id, self.db.kiosk_id, self.version)
        self._link.publish(topic, dumps(payload), qos=1, retain=True)

    # --- the worker ------------------------------------------------------------------

    def _run(self) -> None:
        last_status = 0.0
        while not self._stopping.is_set():
            with self._wake:
                status_due = self._status_due and self._link.connected
                if not (self._acks or self._commands or status_due):
                    self._wake.wait(timeout=0.5)
                acks = list(self._acks)
                self._acks.clear()
                commands = list(self._commands)
                self._commands.clear()
                if self._resend_all:
                    self._resend_all = False
                    self._in_flight.clear()
            try:
                self._apply_acks(acks)
                self._apply_commands(commands)
                if self._link.connected:
                    self._publish_pending()
                    if self._status_due or time.monotonic() - last_status > STATUS_EVERY_S:
                        self._status_due = False
                        last_status = time.monotonic()
                        self._link.publish(
                            self._t_status, dumps(self._status(online=True)), qos=1, retain=True
                        )
            except Exception:  # the worker must outlive any one bad moment
                log.exception("sync worker error; retrying")
                time.sleep(1.0)

    def _apply_acks(self, acks: list[list[str]]) -> None:
        ids = [i for batch in acks for i in batch]
        if not ids:
            return
        removed = self.db.ack(ids)
        for i in ids:
            self._in_flight.pop(i, None)
        log.debug("bridge acked %d events (%d left the outbox)", len(ids), removed)

    def _apply_commands(self, commands: list[Command]) -> None:
        for cmd in sorted(commands, key=lambda c: c.seq):
            if cmd.seq <= self.db.last_cmd_seq:
                # A repeat (the bridge re-sent what was already on its way): nothing to do
                # and nothing to report, or every repeat would ask for the next re-send.
                log.debug(
                    "ignored command seq %d (applied up to %d)", cmd.seq, self.db.last_cmd_seq
                )
                continue
            self._status_due = True  # applied, or ahead of a gap: say where this kiosk is
            if apply_command(self.db, cmd):
                log.info("applied command %s (seq %d)", cmd.name, cmd.seq)
                if self._on_command is not None:
                    try:
                        self._on_command(cmd)
                    except Exception:
                        # Its data is applied and its seq recorded; a failed device action
                        # must not cost the commands after it their turn.
                        log.exception("command %s (seq %d) failed", cmd.name, cmd.seq)
            else:
                log.debug("command seq %d waits for %d", cmd.seq, self.db.last_cmd_seq + 1)

    def _publish_pending(self) -> None:
        now = time.monotonic()
        stale = now - self.cfg.resend_after_s
        room = MAX_IN_FLIGHT - sum(1 for t in self._in_flight.values() if t > stale)
        if room <= 0:
            return
        batch: list[dict[str, Any]] = []
        size = min(self.cfg.batch_size, room)
        for event in self.db.pending_raw(limit=MAX_IN_FLIGHT):
            sent = self._in_flight.get(event["id"])
            if sent is not None and sent > stale:
                continue
            batch.append(event)
            if len(batch) >= size:
                self._send(batch, now)
                room -= len(batch)
                batch = []
                if room <= 0:
                    return
                size = min(self.cfg.batch_size, room)
        if batch:
            self._send(batch, now)

    def _send(self, batch: list[dict[str, Any]], now: float) -> None:
        # ASCII-escaped JSON is still UTF-8 JSON, and any text at all can be sent in it.
        payload = json.dumps(batch, separators=(",", ":")).encode()
        info = self._link.publish(self._t_events, payload, qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return  # not connected after all; the next connection sends them
        for event in batch:
            self._in_flight[event["id"]] = now

    def _status(self, *, online: bool) -> dict[str, Any]:
        return {
            "online": online,
            "ts": rfc3339(time.time()),
            "version": self.version,
            "last_cmd_seq": self.db.last_cmd_seq,
            "outbox": self.db.outbox_size(),
            **self._telemetry(),
        }


def _parsed(msg: mqtt.MQTTMessage, what: str, parse: Callable[[bytes | bytearray], T]) -> T | None:
    """The message's payload parsed; a bad one is logged and dropped (None)."""
    try:
        return parse(msg.payload)
    except ProtocolError as exc:
        log.warning("dropped a bad %s on %s: %s (%.200r)", what, msg.topic, exc, msg.payload)
        return None
