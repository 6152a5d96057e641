"""`/api/v1/activities` as the shop's online side uses it: create an activity in the shop's
local time, sign members up (each gets a ticket the door accepts), refuse the one too
many and the late, cancel (the place is free, the ticket revoked at every door), and read
the no-shows once it is over."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient

from cloud_bridge.activities import ActivityService
from cloud_bridge.api import create_app
from cloud_bridge.commands import CommandService
from cloud_bridge.config import BridgeConfig
from cloud_bridge.db import Repository
from o2o_protocol.codes import Code, CodeType, key_id, verify_code
from o2o_protocol.config_file import validate_config
from o2o_protocol.messages import Event, Status, new_event_id
from o2o_protocol.timeutil import parse_rfc3339, rfc3339

TOKEN = "t0ken-for-tests-0123456789"
READ = "read-0nly-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
READ_AUTH = {"Authorization": f"Bearer {READ}"}
KEY = Ed25519PrivateKey.generate()


class Clock:
    """The activities' clock: now, until a test moves it on."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make_client(
    tmp_path: Path, repo: Repository, clock: Callable[[], float], **extra: Any
) -> TestClient:
    raw = {"store": "s1", "kiosks": ["k1", "k2"], "timezone": "Asia/Shanghai", **extra}
    config = validate_config(tmp_path / "bridge.toml", raw, BridgeConfig)
    commands = CommandService(repo, "s1")
    service = ActivityService(repo, config, KEY, commands, clock=clock)
    app = create_app(
        config,
        repo,
        token=TOKEN,
        read_token=READ,
        signing_key=KEY,
        commands=commands,
        activities=service,
    )
    return TestClient(app)


@pytest.fixture
def client(tmp_path: Path, any_repo: Repository, clock: Clock) -> TestClient:
    return make_client(tmp_path, any_repo, clock)


def post(client: TestClient, path: str, body: Any) -> Any:
    return client.post(path, json=body, headers=AUTH)


def in_shanghai(days: int, hhmm: str = "14:00") -> str:
    """A local time (no offset) `days` from today, on the shop's clock in Shanghai."""
    day = (datetime.now(UTC) + timedelta(hours=8, days=days)).date()
    return f"{day.isoformat()}T{hhmm}"


def activity(client: TestClient, **fields: Any) -> dict[str, Any]:
    body = {"title": "Latte art class", "at": in_shanghai(2), "capacity": 3, **fields}
    r = post(client, "/api/v1/activities", body)
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def test_an_activity_in_the_shops_local_time(client: TestClient) -> None:
    created = activity(client, at=in_shanghai(2, "14:00"), duration_min=90)
    assert created["id"].startswith("ac-") and len(created["id"]) == 11
    # 14:00 in Shanghai is 06:00 UTC, and the answer also says it on the shop's clock.
    start = parse_rfc3339(created["at"])
    assert (start.hour, start.minute) == (6, 0)
    assert created["local_at"] == in_shanghai(2, "14:00")
    assert parse_rfc3339(created["ends"]) - start == timedelta(minutes=90)
    assert (created["capacity"], created["signed_up"], created["attended"]) == (3, 0, 0)
    assert created["no_shows"] is None
    # With an explicit offset it is that instant, whatever the shop's zone.
    other = activity(client, at=in_shanghai(3, "09:30") + ":00-05:00")
    assert parse_rfc3339(other["at"]).hour == 14
    got = client.get(f"/api/v1/activities/{created['id']}", headers=READ_AUTH)
    assert got.status_code == 200 and got.json() == created
    listed = client.get("/api/v1/activities", headers=READ_AUTH).json()["activities"]
    assert [a["id"] for a in listed] == [created["id"], other["id"]]  # soonest first
    assert client.get("/api/v1/activities/ac-00000000", headers=READ_AUTH).status_code == 404


@pytest.mark.parametrize(
    "body",
    [
        {"title": "x", "at": "2020-01-01T10:00", "capacity": 3},  # in the past
        {"title": "x", "at": "2030-02-30T10:00", "capacity": 3},  # no such day
        {"title": "x", "at": "tomorrow", "capacity": 3},
        {"title": "x", "at": "2030-01-01T10:00", "capacity": 0},
        {"title": "", "at": "2030-01-01T10:00", "capacity": 3},
    ],
)
def test_a_bad_activity_is_refused(client: TestClient, body: dict[str, Any]) -> None:
    assert post(client, "/api/v1/activities", body).status_code == 422
    assert client.get("/api/v1/activities", headers=AUTH).json() == {"activities": []}


def test_a_sign_up_gets_a_ticket_the_door_accepts(client: TestClient) -> None:
    a = activity(client, duration_min=60)
    r = post(client, f"/api/v1/activities/{a['id']}/signups", {"name": "Ada", "member": "m-1"})
    assert r.status_code == 201, r.text
    signup = r.json()
    assert signup["id"].startswith("su-") and len(signup["id"]) == 15
    assert (signup["activity"], signup["name"], signup["member"]) == (a["id"], "Ada", "m-1")
    assert "url" not in signup  # no [api] code_url
    start = parse_rfc3339(a["at"]).timestamp()
    trusted = {key_id(KEY.public_key()): KEY.public_key()}
    ticket = verify_code(signup["code"], trusted, store="s1", now=start)
    assert isinstance(ticket, Code), ticket
    assert (ticket.type, ticket.id) == (CodeType.RESERVATION, signup["id"])
    p = ticket.payload.model_dump()
    assert (p["ac"], p["sv"], p["at"], p["n"]) == (a["id"], "Latte art class", start, "Ada")
    # Valid until an hour after the end.
    assert p["exp"] == signup["exp"] == start + 3600 + 3600
    got = client.get(f"/api/v1/activities/{a['id']}", headers=AUTH).json()
    assert got["signed_up"] == 1
    # A body that is not a sign-up takes no place.
    for bad in ({"member": "a/b"}, {"name": "x" * 101}, {"seats": 2}):
        r = post(client, f"/api/v1/activities/{a['id']}/signups", bad)
        assert r.status_code == 422, bad
    assert client.get(f"/api/v1/activities/{a['id']}", headers=AUTH).json()["signed_up"] == 1


def test_a_ticket_comes_with_a_link_when_code_url_is_set(
    tmp_path: Path, repo: Repository, clock: Clock
) -> None:
    client = make_client(tmp_path, repo, clock, api={"code_url": "https://shop.example/c/"})
    a = activity(client)
    signup = post(client, f"/api/v1/activities/{a['id']}/signups", {}).json()
    assert signup["url"] == "https://shop.example/c/" + signup["code"]
    assert signup["name"] is None


def test_full_and_started_activities_refuse_sign_ups(client: TestClient, clock: Clock) -> None:
    a = activity(client, capacity=2)
    path = f"/api/v1/activities/{a['id']}/signups"
    assert [post(client, path, {}).status_code for _ in range(3)] == [201, 201, 409]
    assert "full" in post(client, path, {}).json()["detail"]
    assert client.get(f"/api/v1/activities/{a['id']}", headers=AUTH).json()["signed_up"] == 2
    b = activity(client, capacity=5)
    clock.now = parse_rfc3339(b["at"]).timestamp() + 1
    r = post(client, f"/api/v1/activities/{b['id']}/signups", {})
    assert r.status_code == 409 and "started" in r.json()["detail"]
    assert post(client, "/api/v1/activities/ac-00000000/signups", {}).status_code == 404


def test_cancelling_frees_the_place_and_revokes_the_ticket_at_every_door(
    client: TestClient, any_repo: Repository
) -> None:
    # A door the config does not name, but the bridge has heard from.
    any_repo.set_status("s1", "k3", Status(online=True), seen=datetime.now(UTC))
    a = activity(client, capacity=1)
    path = f"/api/v1/activities/{a['id']}/signups"
    first = post(client, path, {"name": "Ada"}).json()
    assert post(client, path, {}).status_code == 409  # full
    r = client.delete(f"{path}/{first['id']}", headers=AUTH)
    assert r.status_code == 200 and r.json()["cancelled_at"] is not None
    for kiosk in ("k1", "k2", "k3"):
        revoked = [c.data for c in any_repo.commands_after("s1", kiosk, 0)]
        assert revoked == [{"id": first["id"]}], kiosk
    # The place is free again.
    assert client.get(f"/api/v1/activities/{a['id']}", headers=AUTH).json()["signed_up"] == 0
    assert post(client, path, {"name": "Bo"}).status_code == 201
    # Twice: 409 (it was, and stays, cancelled); an unknown sign-up: 404.
    again = client.delete(f"{path}/{first['id']}", headers=AUTH)
    assert again.status_code == 409 and "already" in again.json()["detail"]
    assert client.delete(f"{path}/su-000000000000", headers=AUTH).status_code == 404
    assert client.get(f"/api/v1/activities/{a['id']}", headers=AUTH).json()["signed_up"] == 1
    # The read-only token may look, not sign up or cancel.
    assert client.post(path, json={}, headers=READ_AUTH).status_code == 403


def test_no_shows_are_counted_once_the_activity_is_over(
    client: TestClient, any_repo: Repository, clock: Clock
) -> None:
    a = activity(client, capacity=5, duration_min=30)
    path = f"/api/v1/activities/{a['id']}/signups"
    tickets = [post(client, path, {"name": n}).json() for n in ("A", "B", "C", "D")]
    client.delete(f"{path}/{tickets[3]['id']}", headers=AUTH)
    start = parse_rfc3339(a["at"]).timestamp()
    # A came (a stored reservation.arrived naming the activity), the hook marks it.
    clock.now = start + 60
    arrived = _arrival(tickets[0]["id"], a["id"], start + 60)
    [stored] = any_repo.add_events([arrived])
    service = client.app.state.activities  # type: ignore[attr-defined]
    service.after_stored([arrived], {stored})
    service.after_stored([arrived], {stored})  # once only
    during = client.get(f"/api/v1/activities/{a['id']}", headers=AUTH).json()
    assert (during["attended"], during["no_shows"]) == (1, None)
    clock.now = start + 30 * 60
    after = client.get(f"/api/v1/activities/{a['id']}", headers=AUTH).json()
    # B and C signed up and never came; D cancelled.
    assert (after["signed_up"], after["attended"], after["no_shows"]) == (3, 1, 2)
    listed = client.get("/api/v1/activities", headers=READ_AUTH).json()["activities"]
    assert listed == [after]


def _arrival(ticket: str, activity: str, ts: float) -> Event:
    return Event(
        id=new_event_id(),
        seq=1,
        type="reservation.arrived",
        ts=rfc3339(ts),
        store="s1",
        kiosk="k1",
        data={"reservation_id": ticket, "activity": activity, "timing": "on_time"},
    )
