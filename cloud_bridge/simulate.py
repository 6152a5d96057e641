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
"""

from __future__ import annotations

import math
import random
import threading
import time
import tomllib
import uuid
from collections import Counter
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
