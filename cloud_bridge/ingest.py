"""MQTT ingest: kiosk events into the database, acks back only after they are committed.

Delivery is end to end (DESIGN §4): a kiosk keeps each event until an ack names it, so an
ack must never run ahead of the commit. The network thread only parses and queues; one
worker thread stores a batch in one transaction, commits, then acks. Incoming MQTT
messages are acknowledged to the broker (PUBACK) only after that, too: with a persistent
MQTT v5 session, whatever the bridge had not finished when it stopped or crashed is
delivered again when it comes back, on top of the kiosk's own re-sends.

Only a database that is unreachable is waited for. An event the database refuses is
quarantined (`rejected_events`) and acked like the others: retrying it could never
succeed and would hold up every kiosk's events behind it.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, StatementError

from cloud_bridge.commands import checked_command
from cloud_bridge.config import BridgeConfig
from cloud_bridge.db import Repository, is_connection_error
from o2o_protocol.messages import (
    Ack,
    Command,
    CommandName,
    Event,
    EventType,
    ProtocolError,
    Status,
    dumps,
    parse_events,
    parse_status,
)
from o2o_protocol.timeutil import parse_rfc3339
from o2o_protocol.topics import (
    ACKS,
    CMD,
    EVENTS,
    STATUS,
    kiosk_topic,
    parse_kiosk_topic,
    shared,
    stats_topic,
)

log = logging.getLogger(__name__)

_PREVIEW = 200


def _preview(payload: bytes | bytearray) -> str:
    """A log-safe excerpt of a payload: bad input is logged, but never in full."""
    text = repr(payload[:_PREVIEW])
    return text if len(payload) <= _PREVIEW else f"{text}… ({len(payload)} bytes)"


@dataclass
class _Message:
    """One accepted MQTT message, waiting for the worker."""

    store: str
    kiosk: str
    mid: int
    qos: int
    generation: int
    events: list[Event] = field(default_factory=list)
    status: Status | None = None
    retained: bool = False
    received: datetime = field(default_factory=lambda: datetime.now(UTC))


_STOP = object()


class Ingest:
    """Subscribes to the store's kiosks, stores their events once, acks, publishes stats.

    `start()` returns at once (a broker that is down is retried in the background);
    `wait_ready()` tells when the subscriptions are in place; `stop()` stops taking
    messages, drains what was taken, then disconnects.
    """

    def __init__(
        self,
        config: BridgeConfig,
        repo: Repository,
        *,
        max_batch: int = 500,
        stats_interval_s: float = 1.0,
        stats_refresh_s: float = 60.0,
    ) -> None:
        self.config = config
        self.repo = repo
        self.store = config.store
        self.max_batch = max_batch
        self.stats_interval_s = stats_interval_s
        self.stats_refresh_s = stats_refresh_s
        self._queue: queue.Queue[Any] = queue.Queue()
        self._ready = threading.Event()
        self._stopping = threading.Event()
        self._generation = 0
        self._sub_mid: int | None = None
        self._worker: threading.Thread | None = None
        self._stats_dirty = True
        self._stats_last = 0.0
        self._unreachable_logged = False
        self._downgrading = False
        self._downgrader: threading.Thread | None = None
        self._client_lock = threading.Lock()  # stop() and a downgrade never overlap
        #: MQTT v5 first; a broker that only speaks 3.1.1 gets 3.1.1 (persistent session
        #: via clean_session false; no shared subscriptions there).
        self._protocol = (
            MQTTProtocolVersion.MQTTv311
            if config.mqtt.protocol == "3.1.1"
            else MQTTProtocolVersion.MQTTv5
        )
        self._client = self._make_client()

    # -- set-up -----------------------------------------------------------------------

    def _make_client(self) -> mqtt.Client:
        m = self.config.mqtt
        v5 = self._protocol == MQTTProtocolVersion.MQTTv5
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.config.client_id(),
            protocol=self._protocol,
            clean_session=None if v5 else False,
        )
        client.manual_ack_set(True)
        if m.username:
            client.username_pw_set(
                m.username, m.password.get_secret_value() if m.password else None
            )
        if m.tls:
            client.tls_set(ca_certs=str(m.ca_file) if m.ca_file else None)
        client.reconnect_delay_set(1, 30)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        return client

    def topics(self) -> list[str]:
        """The subscriptions: every kiosk of this store, shared when a group is set."""
        plain = [kiosk_topic(self.store, "+", EVENTS), kiosk_topic(self.store, "+", STATUS)]
        group = self.config.mqtt.shared_group
        if group and self._protocol == MQTTProtocolVersion.MQTTv5:
            return [shared(t, group) for t in plain]
        return plain

    def start(self) -> None:
        self._connect()
        self._worker = threading.Thread(target=self._work, name="bridge-ingest", daemon=True)
        self._worker.start()
        self._client.loop_start()

    def _connect(self) -> None:
        m = self.config.mqtt
        if self._protocol == MQTTProtocolVersion.MQTTv5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = m.session_expiry_s
            self._client.connect_async(
                m.host, m.port, keepalive=m.keepalive_s, clean_start=False, properties=props
            )
        else:
            self._client.connect_async(m.host, m.port, keepalive=m.keepalive_s)

    def _downgrade(self) -> None:
        """Reconnect with MQTT 3.1.1 (off the network thread, which is being replaced)."""
        with self._client_lock:
            if self._stopping.is_set():
                return
            old = self._client
            with contextlib.suppress(Exception):
                old.disconnect()
            old.loop_stop()
            self._protocol = MQTTProtocolVersion.MQTTv311
            if self.config.mqtt.shared_group:
                log.warning("MQTT 3.1.1 has no shared subscriptions: this worker takes all")
            self._client = self._make_client()
            self._connect()
            self._client.loop_start()
            self._downgrading = False

    def wait_ready(self, timeout: float | None = None) -> bool:
        """True once connected and subscribed (tests and start-up logging wait on this)."""
        return self._ready.wait(timeout)

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop taking messages, store and ack what was taken, then disconnect."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._queue.put(_STOP)
        if self._worker is not None:
            self._worker.join(timeout)
            if self._worker.is_alive():
                log.warning("ingest worker did not finish within %.0fs", timeout)
        with self._client_lock:  # a downgrade in progress finishes first, or never starts
            self._client.disconnect()
            self._client.loop_stop()
        self._ready.clear()

    # -- network thread -----------------------------------------------------------------

    def _on_connect_fail(self, client: mqtt.Client, _userdata: Any) -> None:
        if not self._unreachable_logged:  # once per outage, not once per retry
            self._unreachable_logged = True
            log.warning("cannot reach the broker at %s; retrying", self.config.mqtt.url)

    def _on_connect(
        self,
        client: mqtt.Client,
        _userdata: Any,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        _props: Properties | None,
    ) -> None:
        if reason.is_failure:
            v5_refused = reason.value == 132 and self.config.mqtt.protocol == "auto"
            if v5_refused and self._protocol == MQTTProtocolVersion.MQTTv5:
                with self._client_lock:
                    if self._downgrading or self._stopping.is_set():
                        return
                    self._downgrading = True
                log.info("the broker does not speak MQTT v5; switching to MQTT 3.1.1")
                self._downgrader = threading.Thread(
                    target=self._downgrade, name="mqtt-downgrade", daemon=True
                )
                self._downgrader.start()
                return
            log.error("broker %s refused the connection: %s", self.config.mqtt.url, reason)
            return
        self._unreachable_logged = False
        log.info(
            "connected to %s as %s (session %s)",
            self.config.mqtt.url,
            self.config.client_id(),
            "resumed" if flags.session_present else "new",
        )
        if self._protocol == MQTTProtocolVersion.MQTTv5:
            _, self._sub_mid = client.subscribe(
                [(t, SubscribeOptions(qos=1)) for t in self.topics()]
            )
        else:  # 3.1.1 takes a plain QoS
            _, self._sub_mid = client.subscribe([(t, 1) for t in self.topics()])

    def _on_subscribe(
        self,
        _client: mqtt.Client,
        _userdata: Any,
        mid: int,
        reasons: list[ReasonCode],
        _props: Properties | None,
    ) -> None:
        failed = [str(r) for r in reasons if r.is_failure]
        if failed:
            log.error("broker refused the subscriptions %s: %s", self.topics(), ", ".join(failed))
            return
        self._ready.set()

    def _on_disconnect(
        self,
        _client: mqtt.Client,
        _userdata: Any,
        _flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        _props: Properties | None,
    ) -> None:
        self._ready.clear()
        # Messages of the old connection are not PUBACKed on the new one: the resumed
        # session delivers them again.
        self._generation += 1
        if not (self._stopping.is_set() or self._downgrading):
            log.warning("disconnected from %s (%s); reconnecting", self.config.mqtt.url, reason)

    def _on_message(self, client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        # Nothing may raise into paho's network thread.
        try:
            self._take(client, msg)
        except Exception:
            log.exception("dropped a message on %s: %s", msg.topic, _preview(msg.payload))
            client.ack(msg.mid, msg.qos)

    def _take(self, client: mqtt.Client, msg: mqtt.MQTTMessage) -> None:
        if self._stopping.is_set():
            return  # not PUBACKed: the broker keeps it for this session's return
        topic = parse_kiosk_topic(msg.topic)
        if topic is None or topic.store != self.store:
            log.warning("ignored a message on unexpected topic %s", msg.topic)
            client.ack(msg.mid, msg.qos)
            return
        item = _Message(topic.store, topic.kiosk, msg.mid, msg.qos, self._generation)
        item.retained = bool(msg.retain)
        try:
            if topic.leaf == EVENTS:
                item.events = self._parse_events(msg.topic, topic.store, topic.kiosk, msg.payload)
            elif topic.leaf == STATUS:
                item.status = parse_status(bytes(msg.payload))
        except ProtocolError as exc:
            log.warning(
                "dropped a bad payload on %s: %s: %s", msg.topic, exc, _preview(msg.payload)
            )
            client.ack(msg.mid, msg.qos)
            return
        if not item.events and item.status is None:
            client.ack(msg.mid, msg.qos)
            return
        self._queue.put(item)

    @staticmethod
    def _parse_events(
        topic: str, store: str, kiosk: str, payload: bytes | bytearray
    ) -> list[Event]:
        events, errors = parse_events(bytes(payload))
        for err in errors:
            log.warning("dropped an invalid event on %s: %s: %s", topic, err, _preview(payload))
        good = []
        for e in events:
            if (e.store, e.kiosk) != (store, kiosk):
                # A kiosk may only speak for itself: its credentials cover its own subtree.
                log.warning(
                    "refused event %s on %s: its envelope says store %r kiosk %r",
                    e.id,
                    topic,
                    e.store,
                    e.kiosk,
                )
            else:
                good.append(e)
        return good

    # -- worker thread -------------------------------------------------------------------

    def _work(self) -> None:
        stopping = False
        while not stopping:
            try:
                first = self._queue.get(timeout=self._stats_wait())
            except queue.Empty:
                self._maybe_publish_stats()
                continue
            batch: list[_Message] = []
            n_events = 0
            item = first
            while True:
                if item is _STOP:
                    stopping = True  # finish what is queued, then leave
                else:
                    batch.append(item)
                    n_events += len(item.events)
                if n_events >= self.max_batch:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            try:
                self._process(batch)
            except Exception:
                log.exception("ingest batch failed; the kiosks will re-send")
            self._maybe_publish_stats()
        self._maybe_publish_stats(force=True)

    def _stats_wait(self) -> float:
        if self._stats_dirty:
            return max(0.05, self._stats_last + self.stats_interval_s - time.monotonic())
        return 0.5

    def _process(self, batch: list[_Message]) -> None:
        if not batch:
            return
        for item in batch:
            if item.status is not None:
                self._store_status(item)
        events = [e for item in batch for e in item.events]
        if events:
            new = self._store_events(events)
            if new is None:
                return  # gave up while stopping: nothing acked, everything will come again
            log.debug("stored %d new of %d events", len(new), len(events))
            acks: dict[str, list[str]] = {}
            for e in events:
                ids = acks.setdefault(e.kiosk, [])
                if e.id not in ids:
                    ids.append(e.id)
            for kiosk, ids in acks.items():
                self._client.publish(
                    kiosk_topic(self.store, kiosk, ACKS), dumps(Ack(ids=ids)), qos=1
                )
            self._after_stored(events, set(new))
        generation = self._generation
        for item in batch:
            if item.generation == generation:
                self._client.ack(item.mid, item.qos)
        self._stats_dirty = True

    def _store_events(self, events: list[Event]) -> list[str] | None:
        """Store a batch; the new ids. Waits out a database that is down (None if it gives
        up while stopping); quarantines what the database refuses."""
        delay, attempts = 0.5, 0
        while True:
            try:
                return self._store_or_quarantine(events)
            except Exception as exc:
                attempts += 1
                if self._stopping.is_set() and attempts >= 3:
                    log.error("could not store %d events while stopping: %s", len(events), exc)
                    return None
                log.error("database error, retrying in %.1fs: %s", delay, _one_line(exc))
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _store_or_quarantine(self, events: list[Event]) -> list[str]:
        try:
            return self.repo.add_events(events)
        except Exception as exc:
            if is_connection_error(exc) or not _refused_data(exc):
                raise
            log.warning(
                "the database refused a batch of %d events: %s", len(events), _one_line(exc)
            )
        # Find the culprit(s): one event per transaction, the refused ones to quarantine.
        new: list[str] = []
        for e in events:
            try:
                new.extend(self.repo.add_events([e]))
            except Exception as exc:
                if is_connection_error(exc) or not _refused_data(exc):
                    raise
                error = _one_line(exc)
                if self.repo.reject_event(e, error):
                    log.error(
                        "quarantined event %s (%s) from %s/%s: %s",
                        e.id,
                        e.type,
                        e.store,
                        e.kiosk,
                        error,
                    )
        return new

    # -- coupons: single use per store ----------------------------------------------

    def _after_stored(self, events: list[Event], new: set[str]) -> None:
        """Tell the other kiosks about each newly stored redemption (DESIGN §3: coupons are
        single use per store, and each kiosk checks offline against its own store)."""
        seen: set[str] = set()
        for e in events:
            if e.id in seen or e.id not in new or e.type != EventType.COUPON_REDEEMED:
                continue
            seen.add(e.id)
            coupon = e.data.get("coupon_id")
            if not isinstance(coupon, str) or not coupon:
                continue
            try:
                self._coupon_redeemed(e, coupon)
            except Exception:
                log.exception("could not pass on the redemption of coupon %s", coupon)

    def _coupon_redeemed(self, event: Event, coupon: str) -> None:
        redemptions = self.repo.redemptions(self.store, coupon)
        if redemptions and redemptions[0].id != event.id:
            first = redemptions[0]
            log.warning(
                "coupon %s redeemed twice: event %s at kiosk %s (%s), already event %s at"
                " kiosk %s (%s)",
                coupon,
                event.id,
                event.kiosk,
                event.ts,
                first.id,
                first.kiosk,
                first.envelope()["ts"],
            )
        kiosks = dict.fromkeys([*self.config.kiosks, *self.repo.kiosk_names(self.store)])
        data = {"id": coupon, "at": event.ts, "kiosk": event.kiosk}
        for kiosk in kiosks:
            if kiosk != event.kiosk:
                self.send_command(kiosk, CommandName.COUPON_USED.value, data)

    def _store_status(self, item: _Message) -> None:
        assert item.status is not None
        status = item.status
        seen: datetime | None = item.received
        if item.retained:
            # A retained status replayed at subscribe time is old news: trust its own ts.
            seen = None
            if status.ts:
                try:
                    seen = parse_rfc3339(status.ts)
                except ValueError:
                    seen = None
        try:
            self.repo.set_status(item.store, item.kiosk, status, seen=seen)
        except Exception:
            log.exception("could not record the status of %s/%s", item.store, item.kiosk)
        if status.online and status.last_cmd_seq is not None:
            # The status says how far the kiosk got: send again whatever it has not applied.
            self._push_commands(item.kiosk, status.last_cmd_seq)

    def _push_commands(self, kiosk: str, after_seq: int) -> None:
        try:
            pending = self.repo.commands_after(self.store, kiosk, after_seq)
        except Exception:
            log.exception("could not read the commands for %s", kiosk)
            return
        for cmd in pending:
            self._client.publish(kiosk_topic(self.store, kiosk, CMD), dumps(cmd), qos=1)
        if pending:
            log.info("sent %d command(s) to %s from seq %d", len(pending), kiosk, pending[0].seq)

    def send_command(self, kiosk: str, name: str, data: dict[str, Any]) -> Command:
        """Queue a command for a kiosk and publish it now; it is re-sent, from the kiosk's
        reported `last_cmd_seq`, each time the kiosk's status shows it has not applied it.

        Raises ValueError for an unknown command or bad data (nothing is queued).
        """
        data = checked_command(name, data)
        cmd = self.repo.add_command(self.store, kiosk, name, data)
        self._client.publish(kiosk_topic(self.store, kiosk, CMD), dumps(cmd), qos=1)
        return cmd

    def _maybe_publish_stats(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if now - self._stats_last >= self.stats_refresh_s:
            self._stats_dirty = True  # also rolls the figures over at midnight
        if not self._stats_dirty or (not force and now - self._stats_last < self.stats_interval_s):
            return
        self.publish_stats()

    def publish_stats(self) -> None:
        """Publish today's figures, retained, on `o2o/v1/{store}/stats`."""
        self._stats_last = time.monotonic()
        self._stats_dirty = False
        try:
            stats = self.repo.today_stats(self.store)
        except Exception:
            log.exception("could not compute today's figures")
            return
        self._client.publish(stats_topic(self.store), dumps(stats), qos=1, retain=True)


def _refused_data(exc: BaseException) -> bool:
    """An error about the rows themselves (a value the database or driver refuses), as
    opposed to the schema or server (missing table, permissions): only the former is
    quarantined; the latter is the operator's to fix, so it is retried."""
    if isinstance(exc, DataError | IntegrityError):
        return True
    if isinstance(exc, DBAPIError):
        return False
    return isinstance(exc, StatementError | ValueError | TypeError | OverflowError)


def _one_line(exc: BaseException) -> str:
    """The driver's message, first line only: no SQL, no parameters in logs or tables."""
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(orig).__name__}: {first}" if first else type(orig).__name__
