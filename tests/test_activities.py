"""Activities where they must be exact: the last places taken by many at once (SQLite and
PostgreSQL), a cancellation raced against itself, and attendance as a door reports it
over a real Mosquitto."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient

from cloud_bridge.activities import ActivityError, ActivityService
from cloud_bridge.api import create_app
from cloud_bridge.commands import CommandService
from cloud_bridge.config import BridgeConfig
from cloud_bridge.db import Repository
from cloud_bridge.runtime import BridgeRuntime
from o2o_protocol.config_file import validate_config
from o2o_protocol.messages import Event, dumps, new_event_id
from o2o_protocol.timeutil import parse_rfc3339, rfc3339
from o2o_protocol.topics import kiosk_topic
from tests.support import MosquittoBroker, all_at_once
from tests.test_bridge_ingest import STORE, Peer, make_config

KEY = Ed25519PrivateKey.generate()
TOKEN = "t0ken-for-tests-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _service(tmp_path: Path, repo: Repository, **kw: Any) -> ActivityService:
    raw = {"store": STORE, "kiosks": ["k1"], "timezone": "Asia/Shanghai"}
    config = validate_config(tmp_path / "bridge.toml", raw, BridgeConfig)
    return ActivityService(repo, config, KEY, CommandService(repo, STORE), **kw)


def test_twenty_at_once_for_the_last_five_places_get_exactly_five(
    tmp_path: Path, any_repo: Repository
) -> None:
    service = _service(tmp_path, any_repo)
    a = service.add(title="Tea tasting", at=datetime.now(UTC) + timedelta(days=1), capacity=10)
    for _ in range(5):
        service.sign_up(a.id)
    results = all_at_once(20, lambda: service.sign_up(a.id, name="racer"))
    won = [r for r in results if isinstance(r, tuple)]
    refused = [r for r in results if isinstance(r, ActivityError)]
    assert (len(won), len(refused)) == (5, 15), [r for r in results if r not in won + refused]
    assert all(r.status == 409 and "full" in str(r) for r in refused)
    after = service.activity(a.id)
    assert after is not None and after.signed_up == 10
    assert len(service.book.signups(a.id)) == 10  # a place taken is a sign-up stored
    assert len({signup.id for signup, _ in won}) == 5


def test_a_sign_up_cancelled_twice_at_once_frees_one_place(
    tmp_path: Path, any_repo: Repository
) -> None:
    service = _service(tmp_path, any_repo)
    a = service.add(title="Tea tasting", at=datetime.now(UTC) + timedelta(days=1), capacity=3)
    signup, _ = service.sign_up(a.id)
    service.sign_up(a.id)
    results = all_at_once(8, lambda: service.cancel(a.id, signup.id))
    assert sum(not isinstance(r, Exception) for r in results) == 1
    assert all(r.status == 409 for r in results if isinstance(r, ActivityError))
    after = service.activity(a.id)
    assert after is not None and after.signed_up == 1
    # One code.revoke, not eight.
    assert [c.data for c in any_repo.commands_after(STORE, "k1", 0)] == [{"id": signup.id}]


@pytest.fixture
def runtime(
    tmp_path: Path, mosquitto_broker: MosquittoBroker, repo: Repository
) -> Iterator[BridgeRuntime]:
    config = make_config(tmp_path, mosquitto_broker)
    bridge = BridgeRuntime(config, repo, signing_key=KEY)
    bridge.start()
    assert bridge.wait_ready(10), "bridge did not subscribe"
    yield bridge
    bridge.stop()


def _arrival(ticket: str, activity: str | None, ts: float, seq: int) -> Event:
    data: dict[str, Any] = {"reservation_id": ticket, "timing": "on_time", "minutes_late": 0}
    if activity is not None:
        data["activity"] = activity
    return Event(
        id=new_event_id(),
        seq=seq,
        type="reservation.arrived",
        ts=rfc3339(ts),
        store=STORE,
        kiosk="k1",
        data=data,
    )


def test_a_ticket_scanned_at_the_door_counts_as_attended(
    tmp_path: Path, runtime: BridgeRuntime, mosquitto_broker: MosquittoBroker, repo: Repository
) -> None:
    now = [time.time()]
    service = ActivityService(repo, runtime.config, KEY, runtime.commands, clock=lambda: now[0])
    api = TestClient(
        create_app(runtime.config, repo, token=TOKEN, signing_key=KEY, activities=service)
    )
    start = datetime.now(UTC) + timedelta(hours=2)
    a = api.post(
        "/api/v1/activities",
        json={"title": "Pour-over class", "at": start.isoformat(), "capacity": 4},
        headers=AUTH,
    ).json()
    tickets = [
        api.post(f"/api/v1/activities/{a['id']}/signups", json={}, headers=AUTH).json()["id"]
        for _ in range(3)
    ]
    kiosk = Peer(mosquitto_broker, kiosk_topic(STORE, "k1", "acks"))
    try:
        came = start.timestamp() + 120
        arrived = _arrival(tickets[0], a["id"], came, 1)
        # The same arrival again (a re-send), then the same ticket scanned later, and a
        # plain reservation that names no activity: none of these counts again.
        again = _arrival(tickets[0], a["id"], came + 600, 2)
        plain = _arrival(tickets[1], None, came, 3)
        for event in (arrived, arrived, again, plain):
            kiosk.publish(kiosk_topic(STORE, "k1", "events"), dumps(event))
            assert kiosk.next()[1] == {"ids": [event.id]}  # stored, then acked
    finally:
        kiosk.close()
    now[0] = came
    path = f"/api/v1/activities/{a['id']}"
    # The hook runs once the batch is stored and acked: wait for it.
    deadline = time.monotonic() + 10
    while api.get(path, headers=AUTH).json()["attended"] == 0:
        assert time.monotonic() < deadline, "the arrival was never counted"
        time.sleep(0.05)
    _settled(runtime)
    during = api.get(path, headers=AUTH).json()
    assert (during["signed_up"], during["attended"], during["no_shows"]) == (3, 1, None)
    [first] = [s for s in service.book.signups(a["id"]) if s.arrived_at is not None]
    assert first.id == tickets[0] and first.arrived_at == parse_rfc3339(arrived.ts)
    now[0] = start.timestamp() + 3600  # the default hour is over
    after = api.get(path, headers=AUTH).json()
    assert (after["attended"], after["no_shows"]) == (1, 2)


def _settled(runtime: BridgeRuntime) -> None:
    """Every message taken from the broker stored and its hooks run."""
    deadline = time.monotonic() + 10
    while runtime.sink.health()["pending"]:
        assert time.monotonic() < deadline, "the bridge never caught up"
        time.sleep(0.05)


def test_an_arrival_the_hook_missed_is_counted_by_the_catch_up(
    tmp_path: Path, any_repo: Repository
) -> None:
    """The hook runs after the events are stored and acked; a fault in between must not
    lose an arrival: the periodic catch-up marks it, once."""
    service = _service(tmp_path, any_repo)
    start = datetime.now(UTC) + timedelta(hours=1)
    activity = service.add(title="Latte art", at=start, capacity=2)
    ticket = service.sign_up(activity.id)[0].id
    arrived = _arrival(ticket, activity.id, start.timestamp() + 60, 1)
    any_repo.add_events([arrived])  # stored and acked, but the hook never ran
    since = datetime.now(UTC) - timedelta(days=1)
    assert service.catch_up(since) == 1
    assert service.catch_up(since) == 0
    [signup] = service.book.signups(activity.id)
    assert signup.arrived_at == parse_rfc3339(arrived.ts)
