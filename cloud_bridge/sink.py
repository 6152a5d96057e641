"""The event sink: kiosk events into the database, acks back only after they are committed.

Delivery is end to end (docs/mqtt.md): a kiosk keeps each event until an ack names it, so
an ack must never run ahead of the commit. The network thread only parses and queues; one
worker thread stores a batch in one transaction, commits, then acks. Incoming MQTT
messages are acknowledged to the broker (PUBACK) only after that, too: with a persistent
MQTT session, whatever the bridge had not finished when it stopped or crashed is
delivered again when it comes back, on top of the kiosk's own re-sends.

Only a database that is unreachable is waited for. An event the database refuses is
quarantined (`rejected_events`) and acked like the others: retrying it could never
succeed and would hold up every kiosk's events behind it.

What follows a commit (rules such as passing on a redeemed coupon, command re-sends on a
kiosk's status, fresh figures) is handed to the hooks the runtime wires in.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as mqtt

from cloud_bridge.db import Repository, is_connection_error, one_line, refused_data
from o2o_protocol.messages import (
    Ack,
    Event,
    ProtocolError,
    Status,
    dumps,
    parse_events,
    parse_status,
)
from o2o_protocol.mqtt import MqttLink
from o2o_protocol.timeutil import parse_rfc3339
from o2o_protocol.topics import ACKS, EVENTS, STATUS, kiosk_topic, parse_kiosk_topic

log = logging.getLogger(__name__)

#: Runs after a batch is committed and acked: (every event of the batch, the new ids).
AfterStored = Callable[[list[Event], set[str]], None]
#: Runs after a kiosk's status is recorded: (kiosk, status).
StatusHook = Callable[[str, Status], None]

_PREVIEW = 200
_STOP = object()


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


class EventSink:
    """Takes the store's events and statuses off the wire and stores them once.

    Subscribes through `link` when built; `start()` runs the worker; `stop()` stops taking
    messages, stores and acks what was taken, and returns (the link stays up for that).
    """

    def __init__(
        self,
        link: MqttLink,
        repo: Repository,
        store: str,
        *,
        after_stored: Sequence[AfterStored] = (),
        on_status: Sequence[StatusHook] = (),
        on_batch: Callable[[], None] | None = None,
        max_batch: int = 500,
    ) -> None:
        self.link = link
        self.repo = repo
        self.store = store
        self.max_batch = max_batch
        self._after_stored = list(after_stored)
        self._on_status = list(on_status)
        self._on_batch = on_batch
        self._queue: queue.Queue[Any] = queue.Queue()
        self._stopping = threading.Event()
        self._worker: threading.Thread | None = None
        link.subscribe(
            [kiosk_topic(store, "+", EVENTS), kiosk_topic(store, "+", STATUS)], self._on_message
        )

    def start(self) -> None:
        self._worker = threading.Thread(target=self._work, name="bridge-ingest", daemon=True)
        self._worker.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop taking messages; store and ack what was taken."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._queue.put(_STOP)
        if self._worker is not None:
            self._worker.join(timeout)
            if self._worker.is_alive():
                log.warning("ingest worker did not finish within %.0fs", timeout)

    # -- network thread -----------------------------------------------------------------

    def _on_message(self, msg: mqtt.MQTTMessage) -> None:
        # Nothing may raise into paho's network thread.
        try:
            self._take(msg)
        except Exception:
            log.exception("dropped a message on %s: %s", msg.topic, _preview(msg.payload))
            self.link.ack(msg.mid, msg.qos)

    def _take(self, msg: mqtt.MQTTMessage) -> None:
        if self._stopping.is_set():
            return  # not PUBACKed: the broker keeps it for this session's return
        topic = parse_kiosk_topic(msg.topic)
        if topic is None or topic.store != self.store:
            log.warning("ignored a message on unexpected topic %s", msg.topic)
            self.link.ack(msg.mid, msg.qos)
            return
        item = _Message(topic.store, topic.kiosk, msg.mid, msg.qos, self.link.generation)
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
            self.link.ack(msg.mid, msg.qos)
            return
        if not item.events and item.status is None:
            self.link.ack(msg.mid, msg.qos)
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
                item = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            batch: list[_Message] = []
            n_events = 0
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

    def _process(self, batch: list[_Message]) -> None:
        if not batch:
            return
        for item in batch:
            if item.status is not None:
                self._store_status(item, item.status)
        events = [e for item in batch for e in item.events]
        if events:
            new = self._store_events(events)
            if new is None:
                return  # gave up while stopping: nothing acked, everything will come again
            log.debug("stored %d new of %d events", len(new), len(events))
            self._ack(events)
            for hook in self._after_stored:
                _run_hook(hook, events, set(new))
        for item in batch:
            self.link.ack(item.mid, item.qos, generation=item.generation)
        if self._on_batch is not None:
            self._on_batch()

    def _ack(self, events: list[Event]) -> None:
        """Tell each kiosk which of its events are stored (each id once)."""
        acks: dict[str, dict[str, None]] = {}
        for e in events:
            acks.setdefault(e.kiosk, {})[e.id] = None
        for kiosk, ids in acks.items():
            self.link.publish(
                kiosk_topic(self.store, kiosk, ACKS), dumps(Ack(ids=list(ids))), qos=1
            )

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
                log.error("database error, retrying in %.1fs: %s", delay, one_line(exc))
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _store_or_quarantine(self, events: list[Event]) -> list[str]:
        try:
            return self.repo.add_events(events)
        except Exception as exc:
            if is_connection_error(exc) or not refused_data(exc):
                raise
            log.warning("the database refused a batch of %d events: %s", len(events), one_line(exc))
        # Find the culprit(s): one event per transaction, the refused ones to quarantine.
        new: list[str] = []
        for e in events:
            try:
                new.extend(self.repo.add_events([e]))
            except Exception as exc:
                if is_connection_error(exc) or not refused_data(exc):
                    raise
                error = one_line(exc)
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

    def _store_status(self, item: _Message, status: Status) -> None:
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
        for hook in self._on_status:
            _run_hook(hook, item.kiosk, status)


def _run_hook(hook: Callable[..., None], *args: Any) -> None:
    """A hook that fails costs its own work only: the batch is stored and acked."""
    try:
        hook(*args)
    except Exception:
        log.exception("%s failed", getattr(hook, "__qualname__", hook))
