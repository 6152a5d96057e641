"""Rewards and code pools at the bridge (docs/members.md), against a real Mosquitto and
real SQLite and PostgreSQL databases.

What a shop relies on: the catalogue it keeps through the API is what every kiosk offers;
each kiosk holds `pool_size` unused vouchers per reward, signed with the store's key, and
gets more as they are used; a reward that runs out leaves the kiosks' offer.
"""

from __future__ import annotations

import json
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from cloud_bridge.api import create_app
from cloud_bridge.commands import CommandService
from cloud_bridge.config import BridgeConfig
from cloud_bridge.db import Repository
from cloud_bridge.rewards import RewardService
from cloud_bridge.runtime import BridgeRuntime
from o2o_protocol.codes import Code, CodeType, key_id, verify_code
from o2o_protocol.config_file import validate_config
from o2o_protocol.messages import Event, dumps, new_event_id
from o2o_protocol.timeutil import rfc3339
from o2o_protocol.topics import kiosk_topic
from tests.support import MosquittoBroker

STORE = "s1"
TOKEN = "rewards-test-token-0123456789"
READ = "rewards-read-token-0123456789"
FULL = {"Authorization": f"Bearer {TOKEN}"}
POOL = 3


@pytest.fixture
def db(any_repo: Repository) -> Repository:
    """The bridge's repository on SQLite and on PostgreSQL, every table emptied first."""
    return any_repo


def _config(tmp_path: Path, broker: MosquittoBroker | None = None) -> BridgeConfig:
    raw: dict[str, Any] = {
        "store": STORE,
        "kiosks": ["k1", "k2"],
        "members": {"pool_size": POOL, "voucher_days": 30, "page_url": "https://shop.example"},
    }
    if broker is not None:
        raw["mqtt"] = {"url": broker.url, "client_id": f"bridge-{uuid.uuid4().hex[:8]}"}
    return validate_config(tmp_path / "bridge.toml", raw, BridgeConfig)


def _verify(token: str, key: Ed25519PrivateKey) -> Code:
    keys = {key_id(key.public_key()): key.public_key()}
    code = verify_code(token, keys, store=STORE, now=time.time())
    assert isinstance(code, Code), code
    return code


# --- the catalogue through the API ---------------------------------------------------


def test_the_catalogue_through_the_api(tmp_path: Path, db: Repository) -> None:
    app = create_app(
        _config(tmp_path),
        db,
        token=TOKEN,
        read_token=READ,
        signing_key=Ed25519PrivateKey.generate(),
    )
    api = TestClient(app)
    read = {"Authorization": f"Bearer {READ}"}

    r = api.post(
        "/api/v1/rewards", json={"name": "拿铁", "name_en": "Latte", "points": 120}, headers=FULL
    )
    assert r.status_code == 201, r.text
    latte = r.json()
    assert latte["name"] == "拿铁" and latte["points"] == 120 and latte["stock"] is None
    assert latte["active"] is True
    cookie = api.post(
        "/api/v1/rewards", json={"name": "Cookie", "points": 30, "stock": 5}, headers=FULL
    ).json()
    assert cookie["id"] != latte["id"]

    # The read token reads; it may not write.
    listed = api.get("/api/v1/rewards", headers=read).json()["rewards"]
    assert [x["id"] for x in listed] == [latte["id"], cookie["id"]]
    r = api.post("/api/v1/rewards", json={"name": "Tea", "points": 10}, headers=read)
    assert r.status_code == 403
    assert api.get("/api/v1/rewards").status_code == 401

    # Change a price and the stock; clear the English name.
    r = api.patch(f"/api/v1/rewards/{cookie['id']}", json={"points": 40, "stock": 4}, headers=FULL)
    assert r.status_code == 200 and r.json()["points"] == 40 and r.json()["stock"] == 4
    r = api.patch(f"/api/v1/rewards/{latte['id']}", json={"name_en": None}, headers=FULL)
    assert r.json()["name_en"] is None and r.json()["name"] == "拿铁"

    # Retired: gone from the list, still there with all=true; offered again by PATCH.
    assert api.delete(f"/api/v1/rewards/{cookie['id']}", headers=FULL).json()["active"] is False
    assert [x["id"] for x in api.get("/api/v1/rewards", headers=FULL).json()["rewards"]] == [
        latte["id"]
    ]
    everything = api.get("/api/v1/rewards?all=true", headers=FULL).json()["rewards"]
    assert {x["id"]: x["active"] for x in everything} == {latte["id"]: True, cookie["id"]: False}
    r = api.patch(f"/api/v1/rewards/{cookie['id']}", json={"active": True}, headers=FULL)
    assert r.json()["active"] is True

    # Unknown ids and bad bodies.
    assert api.patch("/api/v1/rewards/nope", json={"points": 5}, headers=FULL).status_code == 404
    assert api.delete("/api/v1/rewards/nope", headers=FULL).status_code == 404
    for bad in (
        {"name": "Free", "points": 0},
        {"name": "", "points": 5},
        {"points": 5},
        {"name": "Tea", "points": "5"},
        {"name": "Tea", "points": 5, "stock": -1},
        {"name": "Tea", "points": 5, "colour": "red"},
    ):
        assert api.post("/api/v1/rewards", json=bad, headers=FULL).status_code == 422, bad
    assert (
        api.patch(f"/api/v1/rewards/{latte['id']}", json={"points": None}, headers=FULL).status_code
        == 422
    )

    # Every change reached every configured kiosk as the whole catalogue on offer.
    for kiosk in ("k1", "k2"):
        sets = [c for c in db.commands_after(STORE, kiosk, 0) if c.name == "rewards.set"]
        assert len(sets) == 6  # two added, four changes
        last = sets[-1].data["rewards"]
        assert [(x["id"], x["points"]) for x in last] == [(latte["id"], 120), (cookie["id"], 40)]


# --- pools over a real broker -------------------------------------------------------


class Kiosk:
    """A plain MQTT client standing in for a kiosk: reads its commands and acks."""

    def __init__(self, broker: MosquittoBroker, name: str) -> None:
        self.name = name
        self.commands: queue.Queue[dict[str, Any]] = queue.Queue()
        self.acks: queue.Queue[dict[str, Any]] = queue.Queue()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"kiosk-{uuid.uuid4().hex[:8]}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        cmd, acks = kiosk_topic(STORE, name, "cmd"), kiosk_topic(STORE, name, "acks")

        def on_message(_c: Any, _u: Any, m: mqtt.MQTTMessage) -> None:
            (self.commands if m.topic == cmd else self.acks).put(json.loads(m.payload))

        self.client.on_message = on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_a: subscribed.set()
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.client.subscribe([(cmd, 1), (acks, 1)])
        assert subscribed.wait(5), "no SUBACK"
        self.seq = 0

    def send(self, type_: str, **data: Any) -> Event:
        self.seq += 1
        event = Event(
            id=new_event_id(),
            seq=self.seq,
            type=type_,
            ts=rfc3339(time.time()),
            store=STORE,
            kiosk=self.name,
            data=data,
        )
        topic = kiosk_topic(STORE, self.name, "events")
        self.client.publish(topic, dumps(event), qos=1).wait_for_publish(5)
        assert self.acks.get(timeout=10) == {"ids": [event.id]}
        return event

    def status(self, **fields: Any) -> None:
        payload = json.dumps({"online": True, **fields}).encode()
        topic = kiosk_topic(STORE, self.name, "status")
        self.client.publish(topic, payload, qos=1).wait_for_publish(5)

    def command(self, name: str, kind: str | None = None, timeout: float = 10) -> dict[str, Any]:
        """The next command of that name (and pool kind); others before it are passed over."""
        deadline = time.monotonic() + timeout
        while True:
            cmd = self.commands.get(timeout=max(0.01, deadline - time.monotonic()))
            if cmd["name"] == name and (kind is None or cmd["data"].get("kind") == kind):
                return cmd

    def quiet(self, wait: float = 0.5) -> list[dict[str, Any]]:
        """What arrives within `wait` (nothing, when the bridge has nothing to send)."""
        got = []
        deadline = time.monotonic() + wait
        while (left := deadline - time.monotonic()) > 0:
            try:
                got.append(self.commands.get(timeout=left))
            except queue.Empty:
                break
        return got

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Shop:
    def __init__(self, runtime: BridgeRuntime, api: TestClient, key: Ed25519PrivateKey) -> None:
        self.runtime = runtime
        self.api = api
        self.key = key

    def unused(self, kiosk: str, kind: str, reward: str | None = None) -> list[str]:
        return [
            p.id
            for p in self.runtime.rewards.pool(kiosk, unused=True)
            if p.kind == kind and p.reward == reward
        ]


@pytest.fixture
def shop(tmp_path: Path, mosquitto_broker: MosquittoBroker, db: Repository) -> Iterator[Shop]:
    key = Ed25519PrivateKey.generate()
    config = _config(tmp_path, mosquitto_broker)
    runtime = BridgeRuntime(config, db, stats_interval_s=0.2, signing_key=key)
    runtime.start()
    assert runtime.wait_ready(10), "bridge did not subscribe"
    app = create_app(
        config,
        db,
        token=TOKEN,
        signing_key=key,
        commands=runtime.commands,
        rewards=runtime.rewards,
    )
    yield Shop(runtime, TestClient(app), key)
    runtime.stop()


@pytest.fixture
def k1(mosquitto_broker: MosquittoBroker) -> Iterator[Kiosk]:
    kiosk = Kiosk(mosquitto_broker, "k1")
    yield kiosk
    kiosk.close()


def _wait(cond: Callable[[], bool], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_a_new_reward_reaches_the_kiosk_with_signed_vouchers(shop: Shop, k1: Kiosk) -> None:
    r = shop.api.post(
        "/api/v1/rewards", json={"name": "拿铁", "name_en": "Latte", "points": 100}, headers=FULL
    )
    reward = r.json()["id"]
    catalogue = k1.command("rewards.set")
    assert catalogue["data"]["rewards"] == [
        {"id": reward, "name": "拿铁", "name_en": "Latte", "points": 100, "stock": None}
    ]
    refill = k1.command("pool.refill", "voucher")
    assert refill["data"]["reward"] == reward
    codes = refill["data"]["codes"]
    assert len(codes) == POOL and len({c["id"] for c in codes}) == POOL
    now = time.time()
    for c in codes:
        voucher = _verify(c["code"], shop.key)
        assert voucher.type is CodeType.COUPON and voucher.id == c["id"]
        assert voucher.campaign == f"reward:{reward}" and voucher.value == "拿铁"
        assert voucher.expires is not None
        assert abs(voucher.expires - (now + 30 * 86400)) < 60
    # A code signed by another key is not one of the store's.
    other = {key_id(k.public_key()): k.public_key() for k in [Ed25519PrivateKey.generate()]}
    assert not isinstance(verify_code(codes[0]["code"], other, store=STORE, now=now), Code)
    assert sorted(shop.unused("k1", "voucher", reward)) == sorted(c["id"] for c in codes)


def test_a_kiosk_that_reports_gets_member_codes_once(shop: Shop, k1: Kiosk) -> None:
    k1.status(last_cmd_seq=0)
    refill = k1.command("pool.refill")
    assert refill["data"]["kind"] == "member"
    codes = refill["data"]["codes"]
    assert len(codes) == POOL
    for c in codes:
        member = _verify(c["code"], shop.key)
        assert member.type is CodeType.MEMBER and member.id == c["id"]
        assert member.expires is None  # a card for life
        assert c["url"] == f"https://shop.example/m/{c['code']}"
    # Reported again with everything applied: the pool is full, nothing more is signed.
    k1.status(last_cmd_seq=refill["seq"])
    assert k1.quiet() == []
    assert len(shop.unused("k1", "member")) == POOL

    # Someone joins at the door with a pooled code: used, and the pool is topped up.
    joined = k1.send("member.joined", member_id=codes[0]["id"], page_url=codes[0]["url"])
    more = k1.command("pool.refill", "member")
    assert len(more["data"]["codes"]) == 1
    (used,) = [p for p in shop.runtime.rewards.pool("k1") if p.id == codes[0]["id"]]
    assert used.used_event == joined.id and used.used_at is not None
    assert len(shop.unused("k1", "member")) == POOL


def test_redemptions_use_vouchers_and_stock(shop: Shop, k1: Kiosk) -> None:
    r = shop.api.post(
        "/api/v1/rewards", json={"name": "Cookie", "points": 30, "stock": 2}, headers=FULL
    )
    reward = r.json()["id"]
    vouchers = k1.command("pool.refill", "voucher")["data"]["codes"]
    assert len(vouchers) == POOL

    def redeem(voucher: str) -> Event:
        return k1.send(
            "points.redeemed",
            member_id="m-ada",
            reward_id=reward,
            reward="Cookie",
            points=30,
            balance=70,
            voucher_id=voucher,
        )

    first = redeem(vouchers[0]["id"])
    refill = k1.command("pool.refill", "voucher")
    assert refill["data"]["reward"] == reward and len(refill["data"]["codes"]) == 1
    (used,) = [p for p in shop.runtime.rewards.pool("k1") if p.id == vouchers[0]["id"]]
    assert used.used_event == first.id
    assert len(shop.unused("k1", "voucher", reward)) == POOL
    listed = shop.api.get("/api/v1/rewards", headers=FULL).json()["rewards"]
    assert listed[0]["stock"] == 1

    # A re-sent event changes nothing a second time.
    topic = kiosk_topic(STORE, "k1", "events")
    k1.client.publish(topic, dumps(first), qos=1).wait_for_publish(5)
    assert k1.acks.get(timeout=10) == {"ids": [first.id]}

    # The last one: stock 0, and the kiosks no longer offer it.
    redeem(vouchers[1]["id"])
    catalogue = k1.command("rewards.set")
    assert catalogue["data"]["rewards"] == []
    assert shop.api.get("/api/v1/rewards", headers=FULL).json()["rewards"][0]["stock"] == 0

    def k2_catalogue() -> list[Any] | None:
        sets = [
            c for c in shop.runtime.repo.commands_after(STORE, "k2", 0) if c.name == "rewards.set"
        ]
        return sets[-1].data["rewards"] if sets else None

    # k1 may hear of it a moment before the command for k2 is queued.
    _wait(lambda: k2_catalogue() == [], "k2 to be told the reward is gone")
    # Out of stock, it is not refilled (the kiosk has vouchers it will not use).
    assert [c for c in k1.quiet() if c["data"].get("kind") == "voucher"] == []

    # Restocked: offered again, and its pool is topped up.
    shop.api.patch(f"/api/v1/rewards/{reward}", json={"stock": 10}, headers=FULL)
    assert [x["id"] for x in k1.command("rewards.set")["data"]["rewards"]] == [reward]
    assert len(k1.command("pool.refill", "voucher")["data"]["codes"]) == 1
    assert len(shop.unused("k1", "voucher", reward)) == POOL


def test_top_ups_at_once_never_overfill_a_pool(tmp_path: Path, db: Repository) -> None:
    """Several bridge workers hearing one kiosk at once: the pool still holds `pool_size`
    unused codes, each sent once, in commands numbered without gaps."""
    config = _config(tmp_path)
    key = Ed25519PrivateKey.generate()
    workers = [
        RewardService(db, config, key, CommandService(db, STORE, limits=config.limits))
        for _ in range(4)
    ]
    start = threading.Barrier(len(workers))

    def top_up(service: RewardService) -> None:
        start.wait()
        service.top_up("k1")

    threads = [threading.Thread(target=top_up, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    pool = workers[0].pool("k1", unused=True)
    assert len(pool) == POOL
    sent = [c for c in db.commands_after(STORE, "k1", 0)]
    assert [c.seq for c in sent] == list(range(1, len(sent) + 1))
    assert sorted(code["id"] for c in sent for code in c.data["codes"]) == sorted(
        p.id for p in pool
    )


def test_events_the_pools_missed_are_applied_once_at_start(tmp_path: Path, db: Repository) -> None:
    """A redemption stored and acked, then a fault before the pool rules ran: the bridge's
    start applies it (voucher used, stock taken, pool refilled), and only once."""
    config = _config(tmp_path)
    service = RewardService(
        db, config, Ed25519PrivateKey.generate(), CommandService(db, STORE, limits=config.limits)
    )
    reward = service.add(name="Cookie", points=30, stock=5)
    voucher = service.pool("k1", unused=True)[0]
    service.top_up("k2")
    member_code = next(p for p in service.pool("k2", unused=True) if p.kind == "member")
    redeemed = Event(
        id=new_event_id(),
        seq=1,
        type="points.redeemed",
        ts=rfc3339(time.time()),
        store=STORE,
        kiosk="k1",
        data={"member_id": "m-ada", "reward_id": reward.id, "points": 30, "voucher_id": voucher.id},
    )
    joined = redeemed.model_copy(
        update={
            "id": new_event_id(),
            "kiosk": "k2",
            "type": "member.joined",
            "data": {"member_id": member_code.id},
        }
    )
    db.add_events([redeemed, joined])  # stored, but no hook ran

    since = datetime.now(UTC) - timedelta(days=7)
    assert service.catch_up(since) == 2
    assert service.reward(reward.id).stock == 4  # type: ignore[union-attr]
    used = {p.id: p.used_event for p in service.pool() if p.used_at is not None}
    assert used == {voucher.id: redeemed.id, member_code.id: joined.id}
    assert len([p for p in service.pool("k1", unused=True) if p.kind == "voucher"]) == POOL
    assert len([p for p in service.pool("k2", unused=True) if p.kind == "member"]) == POOL
    # Again (another start): nothing more.
    assert service.catch_up(since) == 0
    assert service.reward(reward.id).stock == 4  # type: ignore[union-attr]
    # The live hook seeing it again (another worker) does not take the stock twice either.
    service.after_stored([redeemed], {redeemed.id})
    assert service.reward(reward.id).stock == 4  # type: ignore[union-attr]


def _service(
    tmp_path: Path, db: Repository, clock: Callable[[], float] | None = None, **members: Any
) -> RewardService:
    raw: dict[str, Any] = {
        "store": STORE,
        "kiosks": ["k1", "k2"],
        "members": {"pool_size": POOL, "voucher_days": 30, **members},
    }
    config = validate_config(tmp_path / "bridge.toml", raw, BridgeConfig)
    commands = CommandService(db, STORE, limits=config.limits)
    key = Ed25519PrivateKey.generate()
    if clock is None:
        return RewardService(db, config, key, commands)
    return RewardService(db, config, key, commands, clock=clock)


def _refills(db: Repository, kiosk: str, kind: str) -> list[dict[str, Any]]:
    return [
        c.data
        for c in db.commands_after(STORE, kiosk, 0)
        if c.name == "pool.refill" and c.data["kind"] == kind
    ]


def test_a_batch_of_joins_uses_each_pooled_code_once(tmp_path: Path, db: Repository) -> None:
    """A busy door's batch: members joined with three of k1's pooled codes (one of them
    twice, re-sent under another id), one with a code of k2's pool, one with a member id
    no pool holds. Each pooled code is used by its first join; both pools are topped up
    to `pool_size` again; the odd one is left alone."""
    config = _config(tmp_path)
    service = RewardService(
        db, config, Ed25519PrivateKey.generate(), CommandService(db, STORE, limits=config.limits)
    )
    service.top_up("k1")
    service.top_up("k2")
    mine = [p for p in service.pool("k1", unused=True) if p.kind == "member"][:3]
    theirs = next(p for p in service.pool("k2", unused=True) if p.kind == "member")

    def joined(code: str) -> Event:
        return Event(
            id=new_event_id(),
            seq=1,
            type="member.joined",
            ts=rfc3339(time.time()),
            store=STORE,
            kiosk="k1",
            data={"member_id": code},
        )

    batch = [joined(c.id) for c in [*mine, mine[0], theirs]] + [joined("m-walk-in")]
    db.add_events(batch)
    service.after_stored(batch, {e.id for e in batch})
    used = {p.id: p.used_event for p in service.pool() if p.used_at is not None}
    assert used == {
        mine[0].id: batch[0].id,
        mine[1].id: batch[1].id,
        mine[2].id: batch[2].id,
        theirs.id: batch[4].id,
    }
    for kiosk in ("k1", "k2"):
        assert len([p for p in service.pool(kiosk, unused=True) if p.kind == "member"]) == POOL


def test_vouchers_close_to_expiry_are_replaced_by_fresh_ones(
    tmp_path: Path, db: Repository
) -> None:
    """A reward rarely taken: once its pooled vouchers have less than half of
    `voucher_days` left, the kiosk is sent fresh ones, valid the full time."""
    now = [time.time()]
    service = _service(tmp_path, db, clock=lambda: now[0])
    reward = service.add(name="Cookie", points=30)
    assert sum(len(r["codes"]) for r in _refills(db, "k1", "voucher")) == POOL

    now[0] += 14 * 86400  # 16 of 30 days left: still good
    assert service.top_up("k1", members=False) == 0
    now[0] += 2 * 86400  # 14 of 30 days left: replaced
    assert service.top_up("k1", members=False) == POOL
    fresh = _refills(db, "k1", "voucher")[-1]
    assert fresh["reward"] == reward.id and len(fresh["codes"]) == POOL
    keys = {key_id(service.key.public_key()): service.key.public_key()}  # type: ignore[union-attr]
    for c in fresh["codes"]:
        voucher = verify_code(c["code"], keys, store=STORE, now=now[0])
        assert isinstance(voucher, Code) and voucher.expires is not None
        assert abs(voucher.expires - (now[0] + 30 * 86400)) < 60
    # The fresh ones count: nothing more is sent.
    assert service.top_up("k1", members=False) == 0


def test_a_large_member_pool_is_sent_in_commands_that_fit(tmp_path: Path, db: Repository) -> None:
    """200 member codes are several times one command's size: the kiosk gets them all,
    in several `pool.refill`s each within `limits.command_bytes`."""
    service = _service(tmp_path, db, pool_size=200, page_url="https://shop.example")
    assert service.top_up("k1") == 200
    refills = _refills(db, "k1", "member")
    assert len(refills) > 1
    limit = service.commands.limits.command_bytes
    assert all(len(json.dumps(r, separators=(",", ":")).encode()) <= limit for r in refills)
    sent = [c["id"] for r in refills for c in r["codes"]]
    assert len(set(sent)) == 200
    assert sorted(sent) == sorted(p.id for p in service.pool("k1", unused=True))
    assert service.top_up("k1") == 0


def test_a_catalogue_too_large_to_send_is_refused_and_not_stored(
    tmp_path: Path, db: Repository
) -> None:
    """Long names fill one `rewards.set`: the reward that would not fit is refused (409)
    and not stored, every kiosk has heard all that is stored, and later changes work."""
    app = create_app(_config(tmp_path), db, token=TOKEN, signing_key=Ed25519PrivateKey.generate())
    api = TestClient(app)
    added: list[str] = []
    for i in range(100):
        body = {"name": f"{i:03d}" + "拿" * 97, "name_en": f"{i:03d}" + "L" * 97, "points": 10}
        r = api.post("/api/v1/rewards", json=body, headers=FULL)
        if r.status_code != 201:
            break
        added.append(r.json()["id"])
    assert r.status_code == 409 and "too large" in r.json()["detail"], r.text
    assert 10 < len(added) < 100
    stored = [x["id"] for x in api.get("/api/v1/rewards?all=true", headers=FULL).json()["rewards"]]
    assert stored == added
    for kiosk in ("k1", "k2"):
        sets = [c for c in db.commands_after(STORE, kiosk, 0) if c.name == "rewards.set"]
        assert [x["id"] for x in sets[-1].data["rewards"]] == added

    # Retiring one makes room for one more; offering it again then does not fit, and
    # it stays retired.
    assert api.delete(f"/api/v1/rewards/{added[0]}", headers=FULL).status_code == 200
    body = {"name": "100" + "拿" * 97, "name_en": "100" + "L" * 97, "points": 10}
    r = api.post("/api/v1/rewards", json=body, headers=FULL)
    assert r.status_code == 201, r.text
    sets = [c for c in db.commands_after(STORE, "k1", 0) if c.name == "rewards.set"]
    assert [x["id"] for x in sets[-1].data["rewards"]] == [*added[1:], r.json()["id"]]
    again = api.patch(f"/api/v1/rewards/{added[0]}", json={"active": True}, headers=FULL)
    assert again.status_code == 409 and "too large" in again.json()["detail"]
    assert api.get("/api/v1/rewards", headers=FULL).json()["rewards"][0]["id"] == added[1]


def test_a_malformed_redemption_does_not_stop_the_others(tmp_path: Path, db: Repository) -> None:
    """A `points.redeemed` whose voucher_id is a list, then a good one: the good one is
    applied (its voucher used, its stock taken)."""
    service = _service(tmp_path, db)
    reward = service.add(name="Cookie", points=30, stock=5)
    voucher = service.pool("k1", unused=True)[0]

    def redeemed(seq: int, voucher_id: object) -> Event:
        return Event(
            id=new_event_id(),
            seq=seq,
            type="points.redeemed",
            ts=rfc3339(time.time()),
            store=STORE,
            kiosk="k1",
            data={"member_id": "m-ada", "reward_id": reward.id, "voucher_id": voucher_id},
        )

    bad, good = redeemed(1, [voucher.id]), redeemed(2, voucher.id)
    db.add_events([bad, good])
    assert service.catch_up(datetime.now(UTC) - timedelta(days=1)) == 1
    assert service.catalogue.pool_code(voucher.id).used_event == good.id  # type: ignore[union-attr]
    assert service.reward(reward.id).stock == 4  # type: ignore[union-attr]


def test_member_codes_carry_no_page_link_no_phone_reaches(
    tmp_path: Path, db: Repository, caplog: pytest.LogCaptureFixture
) -> None:
    """`page_url` unset and the bridge on 127.0.0.1: a join slip would print a QR code of
    a loopback address, so member codes carry no link, and the bridge says what to set."""
    with caplog.at_level("WARNING", logger="cloud_bridge.rewards"):
        service = _service(tmp_path, db)
    assert "page_url" in caplog.text
    service.top_up("k1")
    codes = [c for r in _refills(db, "k1", "member") for c in r["codes"]]
    assert len(codes) == POOL and all("url" not in c for c in codes)

    # A host phones reach (or page_url set): the link is there, and no warning.
    caplog.clear()
    raw: dict[str, Any] = {"store": STORE, "http": {"host": "10.0.0.5", "port": 8080}}
    config = validate_config(tmp_path / "bridge.toml", raw, BridgeConfig)
    with caplog.at_level("WARNING", logger="cloud_bridge.rewards"):
        lan = RewardService(db, config, Ed25519PrivateKey.generate(), service.commands)
    assert "page_url" not in caplog.text
    lan.top_up("k2")
    codes = [c for r in _refills(db, "k2", "member") for c in r["codes"]]
    assert codes and all(c["url"] == f"http://10.0.0.5:8080/m/{c['code']}" for c in codes)


def test_a_fault_taking_the_stock_leaves_the_voucher_unused(
    tmp_path: Path, repo: Repository
) -> None:
    """The database refuses the stock update (a fault mid-redemption): the voucher stays
    unused too, so the next start applies the redemption whole, stock taken once."""
    service = _service(tmp_path, repo)
    reward = service.add(name="Cookie", points=30, stock=5)
    voucher = service.pool("k1", unused=True)[0]
    redeemed = Event(
        id=new_event_id(),
        seq=1,
        type="points.redeemed",
        ts=rfc3339(time.time()),
        store=STORE,
        kiosk="k1",
        data={"member_id": "m-ada", "reward_id": reward.id, "voucher_id": voucher.id},
    )
    repo.add_events([redeemed])
    with repo.engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TRIGGER fault BEFORE UPDATE ON rewards BEGIN SELECT RAISE(ABORT, 'fault'); END"
        )
    service.after_stored([redeemed], {redeemed.id})  # logged, not raised
    assert service.catalogue.pool_code(voucher.id).used_at is None  # type: ignore[union-attr]
    with repo.engine.begin() as conn:
        conn.exec_driver_sql("DROP TRIGGER fault")
    assert service.catch_up(datetime.now(UTC) - timedelta(days=1)) == 1
    assert service.catalogue.pool_code(voucher.id).used_event == redeemed.id  # type: ignore[union-attr]
    assert service.reward(reward.id).stock == 4  # type: ignore[union-attr]


def test_one_kiosk_that_cannot_be_sent_to_does_not_silence_the_others(
    tmp_path: Path, repo: Repository
) -> None:
    """The last of a reward is redeemed while k1's commands cannot be stored (a fault):
    k2 still hears that it is no longer on offer."""
    service = _service(tmp_path, repo)
    reward = service.add(name="Cookie", points=30, stock=1)
    voucher = service.pool("k1", unused=True)[0]
    redeemed = Event(
        id=new_event_id(),
        seq=1,
        type="points.redeemed",
        ts=rfc3339(time.time()),
        store=STORE,
        kiosk="k1",
        data={"member_id": "m-ada", "reward_id": reward.id, "voucher_id": voucher.id},
    )
    repo.add_events([redeemed])
    with repo.engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TRIGGER fault BEFORE INSERT ON commands WHEN NEW.kiosk = 'k1' "
            "BEGIN SELECT RAISE(ABORT, 'fault'); END"
        )
    service.after_stored([redeemed], {redeemed.id})  # logged, not raised
    sets = [c for c in repo.commands_after(STORE, "k2", 0) if c.name == "rewards.set"]
    assert sets[-1].data["rewards"] == []
