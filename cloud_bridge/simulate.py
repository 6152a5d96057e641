"""`o2o-bridge simulate`: weeks of a shop's door traffic, fed to the bridge as kiosks would.

A new shop's dashboard, insights and Home Assistant device are empty for weeks; a demo,
a trial or a test of the figures needs history. This plans realistic traffic (opening
hours, a weekday pattern, regulars and first-timers, coupon redemptions, pickups,
ratings), deterministic for a seed, and delivers it through the real protocol: event
envelopes on each kiosk's `…/events` topic, logged in with the kiosk's own credentials
from its kiosk file when it has some, `seq` gapless per kiosk after what the bridge
already stored, re-sent until the bridge's `acks` name every event. So what the bridge
stores, counts and tells kiosks is exactly what real traffic would give.

The events are dated in the past (shop time, `config.zone()`): the bridge counts them by
their `ts`. Like events a kiosk kept offline for days, they are listed with `ts_flag`
"behind" (received more than a day after they happened); their `data.simulated` is true,
so they can be told apart from real visits.

`live` is the other mode, for load: many stores' kiosks sending events dated now at a
given rate, each kiosk with the kiosk's own sync discipline (an outbox, batches, at most
`MAX_IN_FLIGHT` unacked, a re-send of what waits `RESEND_S` without an ack), reporting
what was sent, acked and stored, and how long each event waited for its ack.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import threading
import time
import tomllib
import uuid
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from sqlalchemy import func, select

from cloud_bridge.config import BridgeConfig
from cloud_bridge.db import Repository
from cloud_bridge.db.tables import EventRow
from o2o_protocol.config_file import MqttConnection
from o2o_protocol.messages import Event, dumps, parse_ack
from o2o_protocol.mqtt import MqttLink
from o2o_protocol.timeutil import rfc3339
from o2o_protocol.topics import ACKS, EVENTS, kiosk_topic

#: Opening hours by weekday (0 = Monday): closed Mondays, longer at the weekend.
HOURS: dict[int, tuple[int, int]] = {
    1: (8, 18),
    2: (8, 18),
    3: (8, 18),
    4: (8, 19),
    5: (9, 19),
    6: (9, 18),
}
#: Visits per open day, relative to a Thursday: quiet midweek, busy weekend.
WEEKDAY_WEIGHT: dict[int, float] = {1: 0.7, 2: 0.8, 3: 1.0, 4: 1.3, 5: 1.9, 6: 1.5}
#: Visits by hour of the day, relative: the morning coffee, lunch and the way home.
HOUR_WEIGHT: dict[int, float] = {
    8: 1.6, 9: 1.4, 10: 0.8, 11: 1.0, 12: 1.8, 13: 1.5, 14: 0.5,
    15: 0.4, 16: 0.7, 17: 1.2, 18: 0.9,
}  # fmt: skip
#: Counted check-ins on a Thursday.
BASE_VISITS = 30
#: Regular customers (most visits), and the share of visits that are a first time.
REGULARS = 60
FIRST_TIME_SHARE = 0.12
POINTS_PER_VISIT = 10
CAMPAIGNS = (("cp-sim-coffee", "Coffee 2 for 1"), ("cp-sim-cake", "10% off cakes"))
#: Events per message, and how long an unacked message waits before it is sent again.
BATCH = 200
RESEND_S = 10.0


@dataclass
class Summary:
    weeks: int
    kiosks: list[str]
    counts: Counter[str] = field(default_factory=Counter)
    members: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        c = self.counts
        return (
            f"simulated {self.weeks} week(s) at {', '.join(self.kiosks)}: "
            f"{sum(c.values())} events acked ({c['checkin']} check-ins, "
            f"{c['member.joined']} new members, {c['coupon.redeemed']} redemptions, "
            f"{c['pickup.completed']} pickups, {c['review.submitted']} ratings), "
            f"{self.members} members, in {self.seconds:.1f}s"
        )


def _uuid7(ts: datetime, rng: random.Random) -> str:
    """A UUIDv7 of `ts` (ids sort in the order the events happened), its random bits
    from `rng` so a seed gives the same ids."""
    ms = int(ts.timestamp() * 1000)
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76 | rng.getrandbits(12) << 64
    value |= 0b10 << 62 | rng.getrandbits(62)
    return str(uuid.UUID(int=value))


def plan(
    store: str,
    kiosks: Sequence[str],
    *,
    weeks: int,
    seed: int,
    zone: tzinfo,
    now: datetime,
    first_seq: dict[str, int] | None = None,
) -> list[Event]:
    """The events of `weeks` weeks up to `now` (none after it), in time order: check-ins
    of regulars and first-timers (who join first), some with a coupon redemption or a
    rating, and a few locker pickups each day; `seq` gapless per kiosk from `first_seq`."""
    rng = random.Random(seed)
    local_now = now.astimezone(zone)
    first_day = local_now.date() - timedelta(weeks=weeks) + timedelta(days=1)
    # Regulars (known before the history starts) come back at different rates: a few
    # almost daily, many weekly; a first-timer joins, and now and then comes again.
    members: dict[str, dict[str, Any]] = {
        f"sim-r{i:03d}": {
            "visits": 0,
            "points": 0,
            "last": None,
            "fondness": rng.paretovariate(1.3),
        }
        for i in range(1, REGULARS + 1)
    }
    raw: list[tuple[datetime, str, str, dict[str, Any]]] = []
    coupon_no = order_no = 0
    for n in range((local_now.date() - first_day).days + 1):
        day = first_day + timedelta(days=n)
        wd = day.weekday()
        if wd not in HOURS:
            continue
        opens, closes = HOURS[wd]
        hours = list(range(opens, closes))
        weights = [HOUR_WEIGHT.get(h, 0.5) for h in hours]
        visits = _poisson(rng, BASE_VISITS * WEEKDAY_WEIGHT[wd])
        for _ in range(visits):
            hour = rng.choices(hours, weights)[0]
            at = _local(day, hour, rng.randrange(3600), zone)
            kiosk = rng.choice(list(kiosks))
            if rng.random() < FIRST_TIME_SHARE:
                member = f"sim-n{sum(1 for m in members if m.startswith('sim-n')) + 1:04d}"
                members[member] = {"visits": 0, "points": 0, "last": None, "fondness": 0.3}
                raw.append((at, kiosk, "member.joined", {"member_id": member}))
                at += timedelta(seconds=5)
            else:
                ids = list(members)
                member = rng.choices(ids, [members[i]["fondness"] for i in ids])[0]
            m = members[member]
            counted = m["last"] is None or at - m["last"] > timedelta(hours=1)
            m["last"] = at
            if counted:
                m["visits"] += 1
                m["points"] += POINTS_PER_VISIT
            raw.append(
                (
                    at,
                    kiosk,
                    "checkin",
                    {
                        "member_id": member,
                        "visits": m["visits"],
                        "points_earned": POINTS_PER_VISIT if counted else 0,
                        "points": m["points"],
                        "counted": counted,
                    },
                )
            )
            if rng.random() < 0.15:
                coupon_no += 1
                campaign, value = CAMPAIGNS[rng.randrange(len(CAMPAIGNS))]
                raw.append(
                    (
                        at + timedelta(seconds=20),
                        kiosk,
                        "coupon.redeemed",
                        {
                            "coupon_id": f"sim-c{seed}-{coupon_no}",
                            "campaign": campaign,
                            "value": value,
                        },
                    )
                )
            if rng.random() < 0.2:
                raw.append(
                    (
                        at + timedelta(minutes=rng.randint(5, 40)),
                        kiosk,
                        "review.submitted",
                        {
                            "rating": rng.choices([5, 4, 3, 2, 1], [50, 30, 12, 5, 3])[0],
                            "subject": "visit",
                            "member_id": member,
                        },
                    )
                )
        for _ in range(_poisson(rng, 2 * WEEKDAY_WEIGHT[wd])):
            order_no += 1
            kiosk = rng.choice(list(kiosks))
            loaded = _local(day, opens, rng.randrange(3600), zone)
            picked = loaded + timedelta(minutes=rng.randint(10, 60 * (closes - opens - 1)))
            order = {"order": f"SIM{order_no:05d}", "locker": rng.randint(1, 4)}
            raw.append((loaded, kiosk, "locker.loaded", dict(order)))
            raw.append((picked, kiosk, "pickup.completed", dict(order)))
    raw = sorted((r for r in raw if r[0] < now), key=lambda r: r[0])
    seqs = dict(first_seq or {})
    out = []
    for at, kiosk, kind, data in raw:
        seq = seqs.get(kiosk, 1)
        seqs[kiosk] = seq + 1
        out.append(
            Event(
                id=_uuid7(at, rng),
                seq=seq,
                type=kind,
                ts=rfc3339(at.timestamp()),
                store=store,
                kiosk=kiosk,
                data={**data, "simulated": True},
            )
        )
    return out


def _local(day: date, hour: int, second: int, zone: tzinfo) -> datetime:
    local = datetime(day.year, day.month, day.day, hour, tzinfo=zone) + timedelta(seconds=second)
    return local.astimezone(UTC)


def _poisson(rng: random.Random, mean: float) -> int:
    """Knuth's method: fine for the small means of a shop's day."""
    limit, k, p = math.exp(-mean), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def kiosk_connection(config: BridgeConfig, config_path: Path, kiosk: str) -> MqttConnection:
    """The kiosk's own broker login, from `kiosk-{id}.toml` beside bridge.toml (written by
    `init`); without one, the bridge's broker URL and no login."""
    path = config_path.parent / f"kiosk-{kiosk}.toml"
    if path.is_file():
        section = tomllib.loads(path.read_text()).get("mqtt")
        if isinstance(section, dict):
            return MqttConnection.model_validate(section)
    return MqttConnection(url=config.mqtt.url)


def next_seqs(repo: Repository, store: str, kiosks: Sequence[str]) -> dict[str, int]:
    """Each kiosk's next `seq`: one after the highest the bridge stored."""
    with repo.engine.connect() as conn:
        rows = conn.execute(
            select(EventRow.kiosk, func.max(EventRow.seq))
            .where(EventRow.store == store, EventRow.kiosk.in_(list(kiosks)))
            .group_by(EventRow.kiosk)
        )
        return {k: int(s or 0) + 1 for k, s in rows}


class _Door:
    """One simulated kiosk's connection: publishes batches, collects the bridge's acks."""

    def __init__(self, store: str, kiosk: str, cfg: MqttConnection) -> None:
        self.topic = kiosk_topic(store, kiosk, EVENTS)
        self.acked: set[str] = set()
        self._cond = threading.Condition()
        self.link = MqttLink(cfg, client_id=f"sim-{store}-{kiosk}-{uuid.uuid4().hex[:6]}")
        self.link.subscribe([kiosk_topic(store, kiosk, ACKS)], self._on_ack)

    def _on_ack(self, msg: mqtt.MQTTMessage) -> None:
        try:
            ids = parse_ack(msg.payload).ids
        except Exception:
            return
        with self._cond:
            self.acked.update(ids)
            self._cond.notify_all()

    def send(
        self, events: Sequence[Event], rate: float | None, timeout: float, first_ack_s: float
    ) -> None:
        """Publish in batches, each once acked before the next; re-send what waits too long.
        No ack at all within `first_ack_s`: no bridge is listening, say so soon."""
        started = time.monotonic()
        deadline = started + timeout
        for i in range(0, len(events), BATCH):
            batch = events[i : i + BATCH]
            ids = {e.id for e in batch}
            while True:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the bridge did not ack {self.topic} within {timeout:.0f}s")
                self.link.publish(self.topic, dumps(list(batch)), qos=1)
                until = time.monotonic() + RESEND_S
                with self._cond:
                    while not ids <= self.acked and time.monotonic() < until:
                        self._cond.wait(0.5)
                        if not self.acked and time.monotonic() - started > first_ack_s:
                            raise TimeoutError(
                                f"no ack on {self.topic} within {first_ack_s:.0f}s:"
                                " is `o2o-bridge run` up, on the same broker?"
                            )
                    if ids <= self.acked:
                        break
            if rate:
                time.sleep(len(batch) / rate)  # a paced run, as asked (`--speed N`)


def simulate(
    config: BridgeConfig,
    config_path: Path,
    *,
    weeks: int = 4,
    kiosks: Sequence[str] | None = None,
    seed: int = 1,
    rate: float | None = None,
    now: datetime | None = None,
    timeout: float = 600.0,
    first_ack_s: float = 30.0,
) -> Summary:
    """Plan and deliver the traffic; returns once the bridge acked every event. Raises
    TimeoutError when the bridge acks nothing within `first_ack_s`, or not everything
    within `timeout`; ConnectionError when the broker cannot be reached."""
    started = time.monotonic()
    doors_ids = list(kiosks or config.kiosks or ["door1"])
    repo = Repository.from_url(config.db.url)
    try:
        repo.migrate()
        first = next_seqs(repo, config.store, doors_ids)
    finally:
        repo.close()
    events = plan(
        config.store,
        doors_ids,
        weeks=weeks,
        seed=seed,
        zone=config.zone(),
        now=now or datetime.now(UTC),
        first_seq=first,
    )
    summary = Summary(weeks, doors_ids)
    doors = {k: _Door(config.store, k, kiosk_connection(config, config_path, k)) for k in doors_ids}
    try:
        for d in doors.values():
            d.link.start()
        for k, d in doors.items():
            if not d.link.wait_subscribed(30):
                raise ConnectionError(f"kiosk {k}: cannot reach the broker at {d.link.cfg.url}")
        senders = []
        failures: list[BaseException] = []
        for k, d in doors.items():
            mine = [e for e in events if e.kiosk == k]

            def run(d: _Door = d, mine: list[Event] = mine) -> None:
                try:
                    d.send(mine, rate / len(doors) if rate else None, timeout, first_ack_s)
                except BaseException as exc:  # reported by the caller's thread
                    failures.append(exc)

            t = threading.Thread(target=run, name=f"simulate-{k}", daemon=True)
            t.start()
            senders.append(t)
        for t in senders:
            t.join()
        if failures:
            raise failures[0]
    finally:
        for d in doors.values():
            d.link.stop()
    summary.counts.update(e.type for e in events)
    summary.members = len({e.data["member_id"] for e in events if e.type == "checkin"})
    summary.seconds = time.monotonic() - started
    return summary


# -- live: load through the real protocol ----------------------------------------------

#: As a kiosk's sync (kiosk/sync.py, kiosk/config.py): events per message, most unacked.
LIVE_BATCH = 500
MAX_IN_FLIGHT = 2000
#: How often the pacing loop makes the events that fell due and publishes them.
TICK_S = 0.01
#: Regular members per store in a live run: enough that a busy run still counts visits.
LIVE_REGULARS = 2000


@dataclass
class LiveReport:
    """What a live run did. `stored` counts this run's acked events the database holds
    (one row per id); `stored_twice` rows beyond one per id; latencies in milliseconds,
    from when the door recorded the event to the ack that named it."""

    stores: list[str]
    kiosks: int
    rate: float
    seconds: float
    sent: int = 0
    acked: int = 0
    stored: int = 0
    stored_twice: int = 0
    resent: int = 0
    #: Events still not acked when the drain gave up (0: every one acked).
    unacked: int = 0
    #: From the first event to the last ack.
    elapsed_s: float = 0.0
    acked_by_store: dict[str, int] = field(default_factory=dict)
    stored_by_store: dict[str, int] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list, repr=False)

    @property
    def sent_per_s(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0

    @property
    def acked_per_s(self) -> float:
        return self.acked / self.elapsed_s if self.elapsed_s else 0.0

    def latency_ms(self, q: float) -> float | None:
        if not self.latencies_ms:
            return None
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    def as_dict(self) -> dict[str, Any]:
        return {
            "stores": self.stores,
            "kiosks": self.kiosks,
            "rate": self.rate,
            "seconds": self.seconds,
            "sent": self.sent,
            "acked": self.acked,
            "stored": self.stored,
            "stored_twice": self.stored_twice,
            "resent": self.resent,
            "unacked": self.unacked,
            "elapsed_s": round(self.elapsed_s, 3),
            "sent_per_s": round(self.sent_per_s, 1),
            "acked_per_s": round(self.acked_per_s, 1),
            "acked_by_store": self.acked_by_store,
            "stored_by_store": self.stored_by_store,
            "counts": dict(self.counts),
            "latency_ms": {
                f"p{int(q * 100)}": None if (v := self.latency_ms(q)) is None else round(v, 2)
                for q in (0.5, 0.95, 0.99)
            },
        }

    def line(self) -> str:
        lat = " / ".join(
            "-" if (v := self.latency_ms(q)) is None else f"{v:.0f}" for q in (0.5, 0.95, 0.99)
        )
        return (
            f"live: {len(self.stores)} store(s), {self.kiosks} kiosks, {self.seconds:g}s at "
            f"{self.rate:g}/s: sent {self.sent} ({self.sent_per_s:.0f}/s), acked {self.acked} "
            f"({self.acked_per_s:.0f}/s), stored {self.stored} (twice {self.stored_twice}), "
            f"re-sent {self.resent}, not acked {self.unacked}; ack latency p50/p95/p99 {lat} ms"
        )


class _Mix:
    """A store's visits as simulate's history has them (regulars by fondness, first-timers
    who join first, some redemptions and ratings), dated now; deterministic for a seed."""

    def __init__(self, store: str, seed: int, run: str) -> None:
        self.store, self.run = store, run
        self.rng = random.Random(f"{seed}/{store}")
        self.members: dict[str, dict[str, Any]] = {
            f"sim-r{i:04d}": {"visits": 0, "points": 0, "last": None}
            for i in range(1, LIVE_REGULARS + 1)
        }
        self.ids = list(self.members)
        self.cum_weights = list(itertools.accumulate(self.rng.paretovariate(1.3) for _ in self.ids))
        self.joined = self.coupons = 0

    def visit(self, now: float) -> list[tuple[str, dict[str, Any]]]:
        rng = self.rng
        out: list[tuple[str, dict[str, Any]]] = []
        if rng.random() < FIRST_TIME_SHARE:
            self.joined += 1
            member = f"sim-{self.run}-{self.store}-n{self.joined}"
            self.members[member] = {"visits": 0, "points": 0, "last": None}
            out.append(("member.joined", {"member_id": member}))
        else:
            member = rng.choices(self.ids, cum_weights=self.cum_weights)[0]
        m = self.members[member]
        counted = m["last"] is None or now - m["last"] > 3600
        m["last"] = now
        if counted:
            m["visits"] += 1
            m["points"] += POINTS_PER_VISIT
        out.append(
            (
                "checkin",
                {
                    "member_id": member,
                    "visits": m["visits"],
                    "points_earned": POINTS_PER_VISIT if counted else 0,
                    "points": m["points"],
                    "counted": counted,
                },
            )
        )
        if rng.random() < 0.15:
            self.coupons += 1
            campaign, value = CAMPAIGNS[rng.randrange(len(CAMPAIGNS))]
            coupon = f"sim-c{self.run}-{self.store}-{self.coupons}"
            out.append(
                ("coupon.redeemed", {"coupon_id": coupon, "campaign": campaign, "value": value})
            )
        if rng.random() < 0.2:
            rating = rng.choices([5, 4, 3, 2, 1], [50, 30, 12, 5, 3])[0]
            out.append(
                ("review.submitted", {"rating": rating, "subject": "visit", "member_id": member})
            )
        return out


class _LiveKiosk:
    """One simulated kiosk: an outbox of envelopes, published in batches, removed when
    an ack names them, re-sent when one waited `RESEND_S` (as kiosk/sync.py does)."""

    def __init__(self, store: str, kiosk: str, cfg: MqttConnection, first_seq: int) -> None:
        self.store, self.kiosk = store, kiosk
        self.topic = kiosk_topic(store, kiosk, EVENTS)
        self.seq = first_seq
        self.first_seq = first_seq
        self.made = 0
        self.resent = 0
        self.rng = random.Random()  # seeded by `live`
        self.waiting: deque[tuple[dict[str, Any], float]] = deque()  # not yet published
        #: id -> (envelope, recorded at, last published at): published, not acked.
        self.in_flight: dict[str, tuple[dict[str, Any], float, float]] = {}
        #: None of `in_flight` is due for a re-send before this: most ticks skip the look.
        self.next_due = float("inf")
        self.latencies: list[float] = []
        self.acked = 0
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self.link = MqttLink(cfg, client_id=f"sim-{store}-{kiosk}-{uuid.uuid4().hex[:6]}")
        self.link.subscribe([kiosk_topic(store, kiosk, ACKS)], self._on_ack)
        self.last_ack = 0.0

    def _on_ack(self, msg: mqtt.MQTTMessage) -> None:
        try:
            ids = parse_ack(msg.payload).ids
        except Exception:
            return
        now = time.monotonic()
        with self._lock:
            for i in ids:
                entry = self.in_flight.pop(i, None)
                if entry is not None:
                    self.acked += 1
                    self.latencies.append((now - entry[1]) * 1000)
                    self.last_ack = now

    def record(self, kind: str, data: dict[str, Any], wall: float, now: float) -> None:
        envelope = {
            "id": _uuid7(datetime.fromtimestamp(wall, UTC), self.rng),
            "seq": self.seq,
            "type": kind,
            "ts": rfc3339(wall),
            "store": self.store,
            "kiosk": self.kiosk,
            "data": {**data, "simulated": True},
        }
        self.seq += 1
        self.made += 1
        self.counts[kind] += 1
        self.waiting.append((envelope, now))

    def pump(self, now: float) -> None:
        """Publish what waits, as room allows, and re-send what waited too long unacked."""
        with self._lock:
            stale = []
            if scan := now >= self.next_due:
                stale = [(i, e) for i, e in self.in_flight.items() if now - e[2] > RESEND_S]
            room = MAX_IN_FLIGHT - len(self.in_flight)
            fresh = []
            while self.waiting and room > 0:
                envelope, recorded = self.waiting.popleft()
                self.in_flight[envelope["id"]] = (envelope, recorded, now)
                fresh.append(envelope)
                room -= 1
            for event_id, (envelope, recorded, _) in stale:
                self.in_flight[event_id] = (envelope, recorded, now)
            if scan:
                oldest = min((e[2] for e in self.in_flight.values()), default=float("inf"))
                self.next_due = oldest + RESEND_S
            elif fresh:
                self.next_due = min(self.next_due, now + RESEND_S)
        self.resent += len(stale)
        batch = [e for _, (e, _r, _s) in stale] + fresh
        for i in range(0, len(batch), LIVE_BATCH):
            payload = json.dumps(batch[i : i + LIVE_BATCH], separators=(",", ":")).encode()
            self.link.publish(self.topic, payload, qos=1)

    @property
    def outstanding(self) -> int:
        with self._lock:
            return len(self.waiting) + len(self.in_flight)


def live(
    config: BridgeConfig,
    config_path: Path,
    *,
    stores: Sequence[str] | None = None,
    kiosks_per_store: int | None = None,
    rate: float = 100.0,
    seconds: float = 10.0,
    seed: int = 1,
    drain_timeout: float = 120.0,
    first_ack_s: float = 30.0,
) -> LiveReport:
    """Send `rate` events a second, dated now, from every store's kiosks for `seconds`,
    then wait (up to `drain_timeout`) until every one is acked (those that are not are
    the report's `unacked`); count what was stored.

    The kiosks are each store's configured ones (`kiosks_per_store` of them; more than
    configured adds `<store>-sim<n>`, without a kiosk file: the service's broker URL, no
    login). Raises TimeoutError when nothing is acked within `first_ack_s`;
    ConnectionError when the broker cannot be reached; KeyError for a store the service
    does not have."""
    chosen = list(stores or config.store_ids())
    doors: list[_LiveKiosk] = []
    repo = Repository.from_url(config.db.url)
    try:
        repo.migrate()
        for store in chosen:
            own = list(config.for_store(store).kiosks)
            n = len(own) if kiosks_per_store is None else kiosks_per_store
            ids = own[:n] + [f"{store}-sim{i}" for i in range(len(own) + 1, n + 1)]
            first = next_seqs(repo, store, ids)
            for k in ids:
                doors.append(
                    _LiveKiosk(store, k, kiosk_connection(config, config_path, k), first.get(k, 1))
                )
    finally:
        repo.close()
    if not doors:
        raise ValueError("no kiosks to simulate")
    run = uuid.uuid4().hex[:6]
    mixes = {s: _Mix(s, seed, run) for s in chosen}
    for d in doors:
        d.rng.seed(f"{seed}/{d.store}/{d.kiosk}")
    report = LiveReport(stores=chosen, kiosks=len(doors), rate=rate, seconds=seconds)
    per_kiosk = rate / len(doors)
    try:
        for d in doors:
            d.link.start()
        for d in doors:
            if not d.link.wait_subscribed(30):
                url = d.link.cfg.url
                raise ConnectionError(f"kiosk {d.kiosk}: cannot reach the broker at {url}")
        started = time.monotonic()
        end = started + seconds
        next_tick = started
        while True:
            now = time.monotonic()
            if now >= end:
                break
            wall = time.time()
            for d in doors:
                due = int(per_kiosk * (now - started)) - d.made
                while due > 0:
                    for kind, data in mixes[d.store].visit(wall):
                        d.record(kind, data, wall, now)
                        due -= 1
                d.pump(now)
            if now - started > first_ack_s and not any(d.acked for d in doors):
                raise TimeoutError(
                    f"no ack within {first_ack_s:.0f}s: is `o2o-bridge run` up, on the same broker?"
                )
            next_tick += TICK_S
            time.sleep(max(0.0, next_tick - time.monotonic()))
        deadline = time.monotonic() + drain_timeout
        while any(d.outstanding for d in doors) and time.monotonic() < deadline:
            now = time.monotonic()
            for d in doors:
                d.pump(now)
            time.sleep(0.05)
        report.unacked = sum(d.outstanding for d in doors)
        report.elapsed_s = max(d.last_ack for d in doors) - started
    finally:
        for d in doors:
            d.link.stop()
    for d in doors:
        report.sent += d.made
        report.acked += d.acked
        report.resent += d.resent
        report.counts.update(d.counts)
        report.latencies_ms.extend(d.latencies)
        report.acked_by_store[d.store] = report.acked_by_store.get(d.store, 0) + d.acked
    _count_stored(config, doors, report)
    return report


def _count_stored(config: BridgeConfig, doors: Sequence[_LiveKiosk], report: LiveReport) -> None:
    """This run's rows in the database, each kiosk's seqs from its first to its last
    (`stored` counts distinct seqs: an event stored twice would add a row, not a seq)."""
    repo = Repository.from_url(config.db.url)
    try:
        with repo.engine.connect() as conn:
            for d in doors:
                rows, distinct = conn.execute(
                    select(func.count(), func.count(func.distinct(EventRow.seq))).where(
                        EventRow.store == d.store,
                        EventRow.kiosk == d.kiosk,
                        EventRow.seq >= d.first_seq,
                        EventRow.seq < d.seq,
                    )
                ).one()
                report.stored += int(distinct)
                report.stored_twice += int(rows) - int(distinct)
                by = report.stored_by_store
                by[d.store] = by.get(d.store, 0) + int(distinct)
    finally:
        repo.close()
