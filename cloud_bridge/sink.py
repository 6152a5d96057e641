"""The event sink: kiosk events into the database, acks back only after they are committed.

Delivery is end to end (docs/mqtt.md): a kiosk keeps each event until an ack names it, so
an ack must never run ahead of the commit. The network thread only parses and queues; one
worker thread stores a batch in one transaction, commits, then acks. Incoming MQTT
messages are acknowledged to the broker (PUBACK) only after that, too: with a persistent
MQTT session, whatever the bridge had not finished when it stopped or crashed is
delivered again when it comes back, on top of the kiosk's own re-sends.

Only a database that is down is waited for. Everything else that goes wrong with an
event is about the event itself, and it is quarantined (`rejected_events`, with its reason
and a bounded preview) and acked like the others: retrying it could never succeed and
would hold up every kiosk's events behind it. The shop's input limits (`[limits]`,
docs/limits.md) are applied before anything is stored: a message over `message_bytes` is
refused unparsed; an event too deep, too long, too big, not finite or holding text no
database keeps (NUL, a lone surrogate) is quarantined at once. Any other error the
database step raises (a recursion, an overflow, a driver's encoding error) is told apart
by trying the database with a harmless stand-in: if that goes in, the event is at fault
and quarantined; if not, the database is, and the batch waits for it.

What follows a commit is handed on: the after-stored hooks (the ledger, code pools,
attendance, rules such as passing on a redeemed coupon) to their own thread
(`hooks.py`), so they never hold back the next batch's ack; command re-sends on a
kiosk's status and fresh figures to the hooks the runtime wires in.

Longer than most modules, on purpose: the path from a message taken off the wire to its
ack (check, batch, store or quarantine, ack the kiosk, PUBACK the broker) is one
sequence of guarantees, kept in one place so its order can be read top to bottom;
reading payloads safely is in `payloads.py`.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as mqtt
from pydantic import ValidationError

from cloud_bridge.db import Repository, is_connection_error, one_line
from cloud_bridge.db.errors import json_preview, text_problem
from cloud_bridge.db.repository import RAW_CHARS
from cloud_bridge.hooks import AfterStored, HookRunner
from cloud_bridge.payloads import MAY_HOLD_BAD_TEXT, loads_bounded, surely_within
from o2o_protocol.limits import DEFAULT_LIMITS, Limits, check_json, check_size
from o2o_protocol.messages import (
    Ack,
    Event,
    ProtocolError,
    Status,
    dumps,
)
from o2o_protocol.mqtt import MqttLink
from o2o_protocol.timeutil import parse_rfc3339
from o2o_protocol.topics import ACKS, EVENTS, STATUS, kiosk_topic, parse_kiosk_topic

log = logging.getLogger(__name__)

#: Runs after a kiosk's status is recorded: (kiosk, status).
StatusHook = Callable[[str, Status], None]

_PREVIEW = 200
_STOP = object()
#: Ids this worker stored last (per store): a kiosk re-sends what waited longer than its
#: `resend_after_s` for an ack, most of all while the bridge is behind, and such a copy
#: is acked again without a trip to the database (about 2 MB of ids).
RECENT_IDS = 20_000


def _preview(payload: bytes | bytearray) -> str:
    """A log-safe excerpt of a payload: bad input is logged, but never in full."""
    text = repr(payload[:_PREVIEW])
    return text if len(payload) <= _PREVIEW else f"{text}… ({len(payload)} bytes)"


#: Characters kept of a message refused unparsed (over `message_bytes`).
_MESSAGE_PREVIEW = 1024


@dataclass(frozen=True)
class _Refused:
    """Something from a kiosk that can never be stored: quarantined with its reason."""

    id: str
    kiosk: str
    raw: str
    error: str
    #: An event id the kiosk may drop from its outbox (False: a message refused unparsed).
    ack: bool = True


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
    refused: list[_Refused] = field(default_factory=list)
    retained: bool = False
    received: datetime = field(default_factory=lambda: datetime.now(UTC))
    taken: float = field(default_factory=time.monotonic)
    #: Its place among the messages taken and not yet finished (for /health).
    key: int = 0


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
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self.link = link
        self.limits = limits
        #: Parsed to this depth at most: the batch array, the envelope's levels, and one
        #: more, so whatever is deeper still fails the depth check and is quarantined.
        self._cut_depth = limits.json_depth + 2
        self.repo = repo
        self.store = store
        self.max_batch = max_batch
        self._after_commit = HookRunner(after_stored, then=on_batch)
        self._on_status = list(on_status)
        self._on_batch = on_batch
        self._queue: queue.Queue[Any] = queue.Queue()
        self._stopping = threading.Event()
        self._worker: threading.Thread | None = None
        # For /health: what was taken and not yet finished (insertion order is age order),
        # and since when the database has been failing (None: it is not).
        self._pending: dict[int, float] = {}
        self._pending_lock = threading.Lock()
        self._next_key = 0
        self._db_down_since: float | None = None
        self._db_error = ""
        #: `RECENT_IDS` ids committed by this worker, oldest first (the worker thread's).
        self._recent: dict[str, None] = {}
        link.subscribe(
            [kiosk_topic(store, "+", EVENTS), kiosk_topic(store, "+", STATUS)], self._on_message
        )

    def start(self) -> None:
        self._after_commit.start()
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
        self._after_commit.stop()

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
        payload = msg.payload
        if len(payload) > self.limits.message_bytes:
            # Refused unparsed: parsing it is what it would cost.
            error = f"message: {len(payload)} bytes, more than {self.limits.message_bytes}"
            log.warning("refused a message on %s: %s", msg.topic, error)
            if topic.leaf != EVENTS:
                self.link.ack(msg.mid, msg.qos)
                return
            digest = hashlib.sha256(payload).hexdigest()[:48]
            item.refused.append(
                _Refused(f"message-{digest}", topic.kiosk, _preview_text(payload), error, ack=False)
            )
            self._enqueue(item)
            return
        try:
            if topic.leaf == EVENTS:
                item.events, item.refused = self._parse_events(
                    msg.topic, topic.store, topic.kiosk, payload
                )
            elif topic.leaf == STATUS:
                item.status = self._parse_status(payload)
        except (ProtocolError, ValueError) as exc:
            log.warning("dropped a bad payload on %s: %s: %s", msg.topic, exc, _preview(payload))
            self.link.ack(msg.mid, msg.qos)
            return
        if not item.events and item.status is None and not item.refused:
            self.link.ack(msg.mid, msg.qos)
            return
        self._enqueue(item)

    def _enqueue(self, item: _Message) -> None:
        with self._pending_lock:
            self._next_key += 1
            item.key = self._next_key
            self._pending[item.key] = item.taken
        self._queue.put(item)

    def _parse_status(self, payload: bytes | bytearray) -> Status:
        raw = loads_bounded(payload, self._cut_depth)
        check_json(raw, self.limits, what="status")  # LimitExceeded: dropped, logged
        try:
            return Status.model_validate(raw)
        except ValidationError as exc:
            raise ProtocolError(_first_error(exc)) from None

    def _parse_events(
        self, topic: str, store: str, kiosk: str, payload: bytes | bytearray
    ) -> tuple[list[Event], list[_Refused]]:
        """The valid events of a message, and those to quarantine: an envelope that is
        itself valid (its id, store and kiosk are this kiosk's) but whose data exceeds a
        limit or holds text no database keeps. Anything else invalid is logged, dropped."""
        raw = loads_bounded(payload, self._cut_depth)
        items = raw if isinstance(raw, list) else [raw]
        # Text no database keeps can only come from these bytes: without them (as in
        # every message a kiosk sends), no string needs looking at.
        text_check = MAY_HOLD_BAD_TEXT.search(payload) is not None
        # A message of ordinary shape cannot hold a value over the limits; only a long one
        # needs each envelope's size counted.
        walk = text_check or not surely_within(payload, self.limits)
        count = not walk and len(payload) > self.limits.event_bytes // 2
        good: list[Event] = []
        refused: list[_Refused] = []
        for i, element in enumerate(items):
            if walk:
                problem = self._over_limits(element, text_check=text_check)
            else:
                problem = self._over_size(element) if count else None
            try:
                # With its data set aside, the envelope shows whether it is a real event.
                shell = element if problem is None else {**element, "data": {}}
                event = Event.model_validate(shell)
            except (ValidationError, TypeError, ValueError) as exc:
                why = _first_error(exc) if problem is None else problem
                log.warning("dropped an invalid event on %s: element %d: %s", topic, i, why)
                continue
            if (event.store, event.kiosk) != (store, kiosk):
                # A kiosk may only speak for itself: its credentials cover its own subtree.
                log.warning(
                    "refused event %s on %s: its envelope says store %r kiosk %r",
                    event.id,
                    topic,
                    event.store,
                    event.kiosk,
                )
            elif problem is not None:
                log.warning("quarantining event %s on %s: %s", event.id, topic, problem)
                refused.append(_Refused(event.id, kiosk, json_preview(element, RAW_CHARS), problem))
            else:
                good.append(event)
        return good, refused

    def _over_size(self, element: Any) -> str | None:
        """Why an envelope is too big (`event_bytes`, as compact JSON), or None."""
        if not isinstance(element, dict):
            return None  # not an envelope at all: the model says so
        try:
            check_size(element, self.limits.event_bytes, what="event")
        except ValueError as exc:
            return str(exc)
        return None

    def _over_limits(self, element: Any, *, text_check: bool = True) -> str | None:
        """Why an envelope can never be stored (limits, text), or None."""
        if not isinstance(element, dict):
            return None  # not an envelope at all: the model says so
        try:
            check_json(element, self.limits, what="event", max_bytes=self.limits.event_bytes)
        except (ValueError, RecursionError, OverflowError) as exc:
            # LimitExceeded, or a lone surrogate the size check could not encode.
            text = text_problem(element.get("data"))
            return f"event: data holds {text}" if text else str(exc) or type(exc).__name__
        text = text_problem(element.get("data")) if text_check else None
        return f"event: data holds {text}" if text else None

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
                for item in batch:  # not PUBACKed, but no longer this worker's to wait on
                    self._done(item)

    def _process(self, batch: list[_Message]) -> None:
        if not batch:
            return
        for item in batch:
            if item.status is not None:
                self._store_status(item, item.status)
        events = [e for item in batch for e in item.events]
        refused = [(item.kiosk, r) for item in batch for r in item.refused]
        if events or refused:
            # A re-send of an event this worker has committed is acked again as it is.
            unknown = [e for e in events if e.id not in self._recent]
            new = self._store_events(unknown, refused)
            if new is None:
                return  # gave up while stopping: nothing acked, everything will come again
            log.debug("stored %d new of %d events", len(new), len(events))
            self._remember(e.id for e in unknown)
            self._ack(events, [r for _, r in refused if r.ack])
            self._after_commit.hand_over(unknown, set(new))
        for item in batch:
            self.link.ack(item.mid, item.qos, generation=item.generation)
            self._done(item)
        if self._on_batch is not None:
            self._on_batch()

    def _remember(self, ids: Iterable[str]) -> None:
        """Note ids as done for good (stored now, found stored, or quarantined): a re-send
        of one would be acked again whatever it met. The oldest are forgotten."""
        recent = self._recent
        recent.update(dict.fromkeys(ids))
        for old in list(itertools.islice(recent, max(0, len(recent) - RECENT_IDS))):
            del recent[old]

    def _done(self, item: _Message) -> None:
        with self._pending_lock:
            self._pending.pop(item.key, None)

    def _ack(self, events: list[Event], refused: Sequence[_Refused] = ()) -> None:
        """Tell each kiosk which of its events are stored or quarantined (each id once)."""
        acks: dict[str, dict[str, None]] = {}
        for e in events:
            acks.setdefault(e.kiosk, {})[e.id] = None
        for r in refused:
            acks.setdefault(r.kiosk, {})[r.id] = None
        for kiosk, ids in acks.items():
            self.link.publish(
                kiosk_topic(self.store, kiosk, ACKS), dumps(Ack(ids=list(ids))), qos=1
            )

    def _store_events(
        self, events: list[Event], refused: Sequence[tuple[str, _Refused]] = ()
    ) -> list[str] | None:
        """Store a batch; the new ids. Waits out a database that is down (None if it gives
        up while stopping); quarantines what can never be stored."""
        delay, attempts = 0.5, 0
        while True:
            try:
                for kiosk, r in refused:
                    if self.repo.reject(r.id, self.store, kiosk, r.raw, r.error):
                        log.error("quarantined %s from %s/%s: %s", r.id, self.store, kiosk, r.error)
                new = self._store_or_quarantine(events)
            except Exception as exc:
                attempts += 1
                if self._db_down_since is None:
                    self._db_down_since = time.monotonic()
                self._db_error = type(getattr(exc, "orig", None) or exc).__name__
                if self._stopping.is_set() and attempts >= 3:
                    log.error("could not store %d events while stopping: %s", len(events), exc)
                    return None
                log.error("database error, retrying in %.1fs: %s", delay, one_line(exc))
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
            else:
                self._db_down_since = None
                return new

    def _store_or_quarantine(self, events: list[Event]) -> list[str]:
        """Raises only when the database is at fault (down, or refusing anything)."""
        if not events:
            return []
        try:
            return self.repo.add_events(events)
        except Exception as exc:
            if is_connection_error(exc):
                raise
            log.warning("the database refused a batch of %d events: %s", len(events), one_line(exc))
        # Find the culprit(s): one event per transaction, the refused ones to quarantine.
        new: list[str] = []
        for e in events:
            try:
                new.extend(self.repo.add_events([e]))
            except Exception as exc:
                if is_connection_error(exc):
                    raise
                # The event or the database? A harmless stand-in tells: if it goes in,
                # the event is at fault. If it does not, this raises and the batch waits.
                self.repo.check_writable(e.store, e.kiosk)
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

    # -- health ---------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """How the ingest is doing, for /health: no data, only ages and counts."""
        now = time.monotonic()
        with self._pending_lock:
            oldest = next(iter(self._pending.values()), None)
            pending = len(self._pending)
        down = self._db_down_since
        worker = self._worker
        after = self._after_commit.health()
        late = after["after_commit_oldest_s"]
        return {
            "running": worker is not None and worker.is_alive(),
            "stopping": self._stopping.is_set(),
            "pending": pending,
            "oldest_pending_s": None if oldest is None else round(now - oldest, 1),
            "database_down_s": None if down is None else round(now - down, 1),
            "database_error": self._db_error if down is not None else None,
            "after_commit_waiting": after["after_commit_waiting"],
            "after_commit_oldest_s": None if late is None else round(late, 1),
        }

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


def _preview_text(payload: bytes | bytearray) -> str:
    """The start of a payload refused unparsed, as text (bad UTF-8 replaced)."""
    head = bytes(payload[:_MESSAGE_PREVIEW]).decode("utf-8", "replace")
    return f"{head}… ({len(payload)} bytes)"


def _first_error(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        return f"{loc}: {err['msg']}"
    return f"{type(exc).__name__}: {exc}"
