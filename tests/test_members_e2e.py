"""One member at every door and online (docs/members.md), end to end.

A shop made by `o2o-bridge init` with two doors, the real `o2o-bridge run` on a real
Mosquitto, and two kiosks built from the files `init` wrote. What a member notices: points
earned at one door are there at the other; a spend online shows at the door at once and a
retried request counts once; two doors offline spending the same points both serve the
customer, and the owner is told of the overdraft.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from cloud_bridge.db import Repository
from kiosk.config import load_config
from kiosk.runtime import KioskRuntime
from o2o_protocol.messages import EventType
from tests.conftest import empty_tables
from tests.shop import bridge_cli, issue, running_bridge
from tests.support import MosquittoBroker, free_port
from tests.test_sync import wait_until


class Shop:
    """The shop directory and the running bridge's REST API."""

    def __init__(self, root: Path, http_port: int) -> None:
        self.root, self.http_port = root, http_port
        self.token = (root / "api.token").read_text().strip()

    def api(
        self, method: str, path: str, body: dict[str, Any] | None = None, **headers: str
    ) -> tuple[int, Any]:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}/api/v1{path}",
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={
                "Authorization": f"Bearer {self.token}",
                "Content-Type": "application/json",
                **headers,
            },
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def member(self, member_id: str) -> dict[str, Any]:
        status, body = self.api("GET", f"/members/{member_id}")
        return body if status == 200 else {}

    def earn(self, member_id: str, delta: int, key: str) -> tuple[int, Any]:
        body = {"delta": delta, "reason": "online order"}
        return self.api("POST", f"/members/{member_id}/points", body, **{"Idempotency-Key": key})


def two_door_shop(
    request: pytest.FixtureRequest, root: Path, mqtt_url: str, *init_args: str
) -> Iterator[Shop]:
    """`o2o-bridge init` with doors k1 and k2, and the bridge running, on the database
    `request.param` names (the embedded SQLite, or PostgreSQL emptied first)."""
    db: list[str] = []
    if request.param == "postgresql":
        url = request.getfixturevalue("pg_url")
        repo = Repository.from_url(url)
        repo.migrate()
        empty_tables(repo)
        repo.close()
        db = ["--db", url]
    bridge_cli(
        root,
        "init", "--dir", str(root), "--store", "s1",
        "--kiosk", "k1", "--kiosk", "k2", "--mqtt", mqtt_url, *db, *init_args,
    )  # fmt: skip
    with running_bridge(root) as port:
        yield Shop(root, port)


@pytest.fixture(params=["sqlite", "postgresql"])
def shop(
    request: pytest.FixtureRequest, tmp_path: Path, mosquitto_broker: MosquittoBroker
) -> Iterator[Shop]:
    yield from two_door_shop(request, tmp_path, mosquitto_broker.url)


@contextmanager
def door(shop: Shop, kiosk: str, *, online: bool = True) -> Iterator[KioskRuntime]:
    """A kiosk from the file `init` wrote; offline, its broker address leads nowhere."""
    path = shop.root / f"kiosk-{kiosk}.toml"
    if not online:
        text = path.read_text()
        url = json.dumps(load_config(path).mqtt.url)
        path = shop.root / f"kiosk-{kiosk}-offline.toml"
        path.write_text(text.replace(url, json.dumps(f"mqtt://127.0.0.1:{free_port()}")))
    runtime = KioskRuntime(load_config(path))
    runtime.start()
    try:
        yield runtime
    finally:
        runtime.stop()


def balance(kiosk: KioskRuntime, member_id: str) -> int:
    return kiosk.offer(member_id).balance


def test_points_earned_at_one_door_are_seen_at_the_other(shop: Shop) -> None:
    code = issue(shop.root, "member", "--id", "u1", "--name", "Ann")
    with door(shop, "k1") as d1, door(shop, "k2") as d2:
        first = d1.scan(code)
        assert first.event.type == EventType.CHECKIN and first.event.data["points_earned"] == 10
        wait_until(lambda: balance(d2, "u1") == 10, what="door 2 to hear of the points")
        assert shop.member("u1")["points"] == 10 and shop.member("u1")["visits"] == 1
        # The same member at the other door a minute later: the cooldown holds there too.
        again = d2.scan(code)
        assert again.event.type == EventType.CHECKIN
        assert again.event.data["counted"] is False and again.event.data["points_earned"] == 0
        assert balance(d2, "u1") == 10


def test_a_spend_online_shows_at_the_door_and_a_retry_counts_once(shop: Shop) -> None:
    assert shop.api("POST", "/members", {"id": "u2", "name": "Bo"})[0] == 201
    assert shop.earn("u2", 50, "order-1001") == (200, {"id": "u2", "points": 50})
    with door(shop, "k1") as d1:
        wait_until(lambda: balance(d1, "u2") == 50, what="the door to hear of 50 points")
        assert shop.earn("u2", -20, "spend-7") == (200, {"id": "u2", "points": 30})
        assert shop.earn("u2", -20, "spend-7") == (200, {"id": "u2", "points": 30})
        wait_until(lambda: balance(d1, "u2") == 30, what="the door to show the spend")
        status, body = shop.earn("u2", -100, "spend-8")
        assert status == 409, body
    assert shop.member("u2")["points"] == 30
    entries = shop.api("GET", "/members/u2/ledger")[1]["entries"]
    assert sorted(e["delta"] for e in entries) == [-20, 50]


def test_two_doors_offline_spend_the_same_points_both_kept_and_flagged(shop: Shop) -> None:
    latte = {"name": "拿铁", "name_en": "Latte", "points": 80}
    status, reward = shop.api("POST", "/rewards", latte)
    assert status == 201, reward
    shop.api("POST", "/members", {"id": "u3", "name": "Cy"})
    shop.earn("u3", 100, "gift-1")
    # Both doors online first: they hear of the balance, the reward and its vouchers.
    with door(shop, "k1") as d1, door(shop, "k2") as d2:
        for d in (d1, d2):
            wait_until(
                lambda d=d: [r.id for r in d.offer("u3").rewards] == [reward["id"]],  # type: ignore[misc]
                what="each door to offer the reward",
            )
    # The shop's internet goes down; the member (or a friend) is served at both doors.
    spent = []
    for kiosk in ("k1", "k2"):
        with door(shop, kiosk, online=False) as d:
            recorded = d.redeem("u3", reward["id"])
            assert recorded.event.type == EventType.POINTS_REDEEMED, recorded.event.data
            assert d.offer("u3").balance == 20
            spent.append(recorded.event.id)
    # Back online: both spends reach the bridge, neither is lost, the overdraft is flagged.
    with door(shop, "k1") as d1, door(shop, "k2") as d2:
        wait_until(lambda: shop.member("u3").get("points") == -60, what="both spends stored")
        assert shop.member("u3")["overdrawn"] is True
        listed = shop.api("GET", "/members?overdrawn=true")[1]["members"]
        assert [m["id"] for m in listed] == ["u3"]
        assert shop.api("GET", "/stats")[1]["overdrawn_members"] == 1
        entries = shop.api("GET", "/members/u3/ledger?limit=10")[1]["entries"]
        rewards = [e for e in entries if e["reason"] == f"reward:{reward['id']}"]
        assert len(rewards) == 2 and sum(e["overdraft"] for e in rewards) == 1
        for d in (d1, d2):
            wait_until(lambda d=d: balance(d, "u3") == -60, what="each door to show -60")  # type: ignore[misc]
            assert d.offer("u3").rewards == ()
