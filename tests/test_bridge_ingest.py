"""The bridge's MQTT runtime against a real Mosquitto: a kiosk publishes events, the bridge
stores and acks.

What a kiosk relies on: an ack names an event only once it is stored; a re-sent event is
acked again but stored once; junk on the wire costs nothing but itself.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from sqlalchemy.exc import DataError, OperationalError

from cloud_bridge.config import BridgeConfig
from cloud_bridge.db import Repository
from cloud_bridge.runtime import BridgeRuntime
from o2o_protocol.config_file import validate_config
from o2o_protocol.messages import Event, dumps, new_event_id
from o2o_protocol.timeutil import rfc3339
from o2o_protocol.topics import kiosk_topic, stats_topic
from tests.support import MosquittoBroker

STORE = "s1"


class Peer:
    """A plain MQTT client standing in for a kiosk or a dashboard."""

    def __init__(self, broker: MosquittoBroker, *subscriptions: str) -> None:
        self.messages: queue.Queue[tuple[str, Any, bool]] = queue.Queue()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"peer-{uuid.uuid4().hex[:8]}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self.client.on_message = lambda _c, _u, m: self.messages.put(
            (m.topic, json.loads(m.payload), bool(m.retain))
        )
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_args: subscribed.set()
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        if subscriptions:
            self.client.subscribe([(t, 1) for t in subscriptions])
            assert subscribed.wait(5), "no SUBACK"

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(5)

    def next(self, timeout: float = 5.0) -> tuple[str, Any, bool]:
        return self.messages.get(timeout=timeout)

    def nothing(self, wait: float = 0.5) -> bool:
        try:
            self.messages.get(timeout=wait)
        except queue.Empty:
            return True
        return False

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def events(n: int, *, kiosk: str = "k1", store: str = STORE, start_seq: int = 1) -> list[Event]:
    return [
        Event(
            id=new_event_id(),
            seq=start_seq + i,
            type="checkin",
            ts=rfc3339(time.time()),
            store=store,
            kiosk=kiosk,
            data={"member_id": f"u{i}"},
        )
        for i in range(n)
    ]


def make_config(
    tmp_path: Path, broker: MosquittoBroker, kiosks: tuple[str, ...] = ("k1",), **mqtt: Any
) -> BridgeConfig:
    raw = {
        "store": STORE,
        "kiosks": list(kiosks),
        "mqtt": {"url": broker.url, "client_id": f"bridge-{uuid.uuid4().hex[:8]}", **mqtt},
    }
    return validate_config(tmp_path / "bridge.toml", raw, BridgeConfig)


@pytest.fixture
def bridge(
    tmp_path: Path, mosquitto_broker: MosquittoBroker, repo: Repository
) -> Iterator[BridgeRuntime]:
    ingest = BridgeRuntime(make_config(tmp_path, mosquitto_broker), repo, stats_interval_s=0.2)
    ingest.start()
    assert ingest.wait_ready(10), "bridge did not subscribe"
    yield ingest
    ingest.stop()


@pytest.fixture
def kiosk(mosquitto_broker: MosquittoBroker) -> Iterator[Peer]:
    peer = Peer(mosquitto_broker, kiosk_topic(STORE, "k1", "acks"))
    yield peer
    peer.close()


EVENTS_K1 = kiosk_topic(STORE, "k1", "events")


def test_batch_is_acked_after_it_is_stored_and_resend_is_stored_once(
    bridge: BridgeRuntime, kiosk: Peer, repo: Repository
) -> None:
    batch = events(3)
    kiosk.publish(EVENTS_K1, dumps(batch))
    topic, ack, _ = kiosk.next()
    assert topic == kiosk_topic(STORE, "k1", "acks")
    assert ack == {"ids": [e.id for e in batch]}
    assert {e.id for e in repo.events()} == {e.id for e in batch}  # stored before the ack

    # The kiosk did not see the ack (say) and sends the same events again, one at a time.
    for e in batch:
        kiosk.publish(EVENTS_K1, dumps(e))
    acked: list[str] = []
    while len(acked) < len(batch):  # the bridge may ack them in one message or several
        acked.extend(kiosk.next()[1]["ids"])
    assert sorted(acked) == sorted(e.id for e in batch)
    assert repo.count_events() == 3


def test_a_resend_of_what_this_worker_stored_is_acked_without_the_database(
    bridge: BridgeRuntime, kiosk: Peer, repo: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kiosk re-sends what waited too long for its ack (most of all while the bridge is
    behind): a copy of an event this worker has committed costs no database trip."""
    real = repo._insert_events
    inserted: list[set[str]] = []

    def counted(session: Any, values: list[dict[str, Any]]) -> set[str]:
        inserted.append({v["id"] for v in values})
        return real(session, values)

    monkeypatch.setattr(repo, "_insert_events", counted)
    batch = events(3)
    kiosk.publish(EVENTS_K1, dumps(batch))
    assert sorted(acked_ids(kiosk, 3)) == sorted(e.id for e in batch)
    [later] = events(1, start_seq=4)
    kiosk.publish(EVENTS_K1, dumps([*batch[1:], later]))  # two re-sent, one new
    assert sorted(acked_ids(kiosk, 3)) == sorted([batch[1].id, batch[2].id, later.id])
    assert inserted == [{e.id for e in batch}, {later.id}]
    assert repo.count_events() == 4


def test_junk_is_dropped_and_good_events_still_flow(
    bridge: BridgeRuntime, kiosk: Peer, repo: Repository
) -> None:
    for junk in (b"not json", b"\xff\xfe", b'{"id": 1}', b"[]", b"42", b'[{"seq": 1}]'):
        kiosk.publish(EVENTS_K1, junk)
    good, mixed_good = events(1), events(1, start_seq=2)
    kiosk.publish(EVENTS_K1, dumps(good[0]))
    assert kiosk.next()[1] == {"ids": [good[0].id]}
    # One broken element does not cost its neighbours their delivery.
    mixed = b"[" + dumps(mixed_good[0]) + b',{"id":"x","seq":"no"}]'
    kiosk.publish(EVENTS_K1, mixed)
    assert kiosk.next()[1] == {"ids": [mixed_good[0].id]}
    assert repo.count_events() == 2
    assert bridge.ready  # nothing above broke the network thread


def test_a_kiosk_cannot_speak_for_another(
    bridge: BridgeRuntime, kiosk: Peer, repo: Repository
) -> None:
    foreign = events(1, kiosk="k2")[0]
    other_store = events(1, store="s2")[0]
    own = events(1)[0]
    kiosk.publish(EVENTS_K1, dumps([foreign, other_store, own]))
    assert kiosk.next()[1] == {"ids": [own.id]}
    assert [e.id for e in repo.events()] == [own.id]
    # Only a refused envelope: no ack at all, nothing stored.
    kiosk.publish(EVENTS_K1, dumps(foreign))
    assert kiosk.nothing()
    assert repo.count_events() == 1


def test_stats_are_published_retained(
    bridge: BridgeRuntime, kiosk: Peer, mosquitto_broker: MosquittoBroker
) -> None:
    kiosk.publish(EVENTS_K1, dumps(events(2)))
    kiosk.next()
    deadline = time.monotonic() + 5
    while True:  # a dashboard that connects later still gets today's figures at once
        dashboard = Peer(mosquitto_broker, stats_topic(STORE))
        try:
            topic, stats, retained = dashboard.next()
        finally:
            dashboard.close()
        if (retained and stats["checkins"] == 2) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert (topic, retained) == (stats_topic(STORE), True)
    assert stats["checkins"] == 2 and stats["store"] == STORE


def test_status_updates_the_kiosk_table(
    bridge: BridgeRuntime, kiosk: Peer, repo: Repository
) -> None:
    status = kiosk_topic(STORE, "k1", "status")
    kiosk.client.publish(status, json.dumps({"online": True, "outbox": 0}), qos=1, retain=True)
    deadline = time.monotonic() + 5
    while not repo.kiosks(STORE) and time.monotonic() < deadline:
        time.sleep(0.05)
    [k] = repo.kiosks(STORE)
    assert k.online and k.last_seen is not None
    kiosk.publish(status, b'{"online": false}')  # the Last Will
    while repo.kiosks(STORE)[0].online and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not repo.kiosks(STORE)[0].online


def test_events_sent_while_the_bridge_is_down_arrive_after_restart(
    tmp_path: Path, mosquitto_broker: MosquittoBroker, repo: Repository, kiosk: Peer
) -> None:
    """The broker keeps the bridge's session: a bridge restart loses nothing queued."""
    config = make_config(tmp_path, mosquitto_broker)
    first = BridgeRuntime(config, repo)
    first.start()
    assert first.wait_ready(10)
    first.stop()
    batch = events(5)
    for e in batch:
        kiosk.publish(EVENTS_K1, dumps(e))
    again = BridgeRuntime(config, repo)
    again.start()
    try:
        acked: set[str] = set()
        while len(acked) < 5:
            acked.update(kiosk.next()[1]["ids"])
        assert acked == {e.id for e in batch}
        assert repo.count_events() == 5
    finally:
        again.stop()


def test_shared_subscription_workers_store_each_event_once(
    tmp_path: Path, mosquitto_broker: MosquittoBroker, repo: Repository, kiosk: Peer
) -> None:
    workers = [
        BridgeRuntime(make_config(tmp_path, mosquitto_broker, shared_group="bridges"), repo)
        for _ in range(2)
    ]
    for w in workers:
        w.start()
    try:
        assert all(w.wait_ready(10) for w in workers)
        batch = events(20)
        for e in batch:
            kiosk.publish(EVENTS_K1, dumps(e))
        acked: list[str] = []
        while len(acked) < 20:
            acked.extend(kiosk.next()[1]["ids"])
        assert sorted(acked) == sorted(e.id for e in batch)  # each acked once: split, not doubled
        assert repo.count_events() == 20
    finally:
        for w in workers:
            w.stop()


def test_commands_are_sent_and_resent_until_the_kiosk_reports_them(
    bridge: BridgeRuntime, mosquitto_broker: MosquittoBroker
) -> None:
    cmd_topic = kiosk_topic(STORE, "k1", "cmd")
    kiosk = Peer(mosquitto_broker, cmd_topic)
    try:
        first = bridge.commands.send("k1", "preorder.upsert", {"order": "A12"})
        second = bridge.commands.send("k1", "code.revoke", {"id": "cp1"})
        assert (first.seq, second.seq) == (1, 2)
        got = [kiosk.next()[1] for _ in range(2)]
        assert got == [
            {"seq": 1, "name": "preorder.upsert", "data": {"order": "A12"}},
            {"seq": 2, "name": "code.revoke", "data": {"id": "cp1"}},
        ]
        # The kiosk comes back having applied only the first: the second comes again.
        status = {"online": True, "last_cmd_seq": 1}
        kiosk.publish(kiosk_topic(STORE, "k1", "status"), json.dumps(status).encode())
        assert kiosk.next()[1]["seq"] == 2
        assert kiosk.nothing()
        status = {"online": True, "last_cmd_seq": 2}
        kiosk.publish(kiosk_topic(STORE, "k1", "status"), json.dumps(status).encode())
        assert kiosk.nothing()
    finally:
        kiosk.close()


def acked_ids(kiosk: Peer, n: int) -> list[str]:
    ids: list[str] = []
    while len(ids) < n:
        ids.extend(kiosk.next(10)[1]["ids"])
    return ids


class _Refused(Exception):
    """Stands in for the driver's exception inside sqlalchemy's DataError."""


@pytest.mark.parametrize("poison", ["nul", "data_error"])
def test_an_event_the_database_refuses_is_quarantined_and_the_rest_flow(
    tmp_path: Path,
    mosquitto_broker: MosquittoBroker,
    any_repo: Repository,
    kiosk: Peer,
    monkeypatch: pytest.MonkeyPatch,
    poison: str,
) -> None:
    repo = any_repo
    good_before, bad, good_after = events(3)
    if poison == "nul":
        # A value the database cannot keep (PostgreSQL text has no NUL).
        bad = bad.model_copy(update={"data": {"member_id": "x\u0000y"}})
    else:
        real = repo._insert_events

        def refuse(session: Any, values: list[dict[str, Any]]) -> set[str]:
            if any(v["id"] == bad.id for v in values):
                raise DataError("INSERT", {}, _Refused("value out of range"))
            return real(session, values)

        monkeypatch.setattr(repo, "_insert_events", refuse)
    ingest = BridgeRuntime(make_config(tmp_path, mosquitto_broker), repo)
    ingest.start()
    try:
        assert ingest.wait_ready(10)
        kiosk.publish(EVENTS_K1, dumps([good_before, bad, good_after]))
        # Every event is acked: the refused one is kept in quarantine, not lost.
        assert sorted(acked_ids(kiosk, 3)) == sorted([good_before.id, bad.id, good_after.id])
        assert {e.id for e in repo.events()} == {good_before.id, good_after.id}
        [q] = repo.rejected_events(store=STORE)
        assert (q.id, q.kiosk) == (bad.id, "k1")
        assert json.loads(q.raw) == bad.model_dump()
        assert ("value out of range" if poison == "data_error" else "NUL") in q.error
        # Nothing is stuck: the next events flow as usual, a re-sent poison is acked again.
        later = events(1, start_seq=4)[0]
        kiosk.publish(EVENTS_K1, dumps([later, bad]))
        assert sorted(acked_ids(kiosk, 2)) == sorted([later.id, bad.id])
        assert repo.count_events() == 3 and len(repo.rejected_events()) == 1
    finally:
        ingest.stop()


def test_a_database_outage_is_waited_out_not_quarantined(
    bridge: BridgeRuntime, kiosk: Peer, repo: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = repo._insert_events
    failures: list[int] = []

    def down(session: Any, values: list[dict[str, Any]]) -> set[str]:
        if len(failures) < 2:
            failures.append(1)
            raise OperationalError("INSERT", {}, _Refused("server closed the connection"))
        return real(session, values)

    monkeypatch.setattr(repo, "_insert_events", down)
    batch = events(2)
    kiosk.publish(EVENTS_K1, dumps(batch))
    assert sorted(acked_ids(kiosk, 2)) == sorted(e.id for e in batch)
    assert len(failures) == 2
    assert repo.count_events() == 2 and repo.rejected_events() == []


def redeemed(kiosk: str, coupon: str, seq: int = 1) -> Event:
    return Event(
        id=new_event_id(),
        seq=seq,
        type="coupon.redeemed",
        ts=rfc3339(time.time()),
        store=STORE,
        kiosk=kiosk,
        data={"coupon_id": coupon, "campaign": "spring"},
    )


def test_a_redeemed_coupon_is_used_up_at_every_other_kiosk(
    tmp_path: Path,
    mosquitto_broker: MosquittoBroker,
    repo: Repository,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ingest = BridgeRuntime(
        make_config(tmp_path, mosquitto_broker, kiosks=("k1", "k2")), repo, stats_interval_s=0.2
    )
    ingest.start()
    peers = {
        k: Peer(mosquitto_broker, kiosk_topic(STORE, k, "cmd"), kiosk_topic(STORE, k, "acks"))
        for k in ("k1", "k2", "k3")
    }
    try:
        assert ingest.wait_ready(10)
        # k3 is not in the config, but the bridge knows it from its status.
        peers["k3"].publish(kiosk_topic(STORE, "k3", "status"), b'{"online": true}')
        deadline = time.monotonic() + 5
        while not repo.kiosks(STORE) and time.monotonic() < deadline:
            time.sleep(0.05)

        first = redeemed("k1", "cp1")
        peers["k1"].publish(EVENTS_K1, dumps(first))
        assert peers["k1"].next()[1] == {"ids": [first.id]}
        used = {"id": "cp1", "at": first.ts, "kiosk": "k1"}
        for k in ("k2", "k3"):
            topic, cmd, _ = peers[k].next()
            assert topic == kiosk_topic(STORE, k, "cmd")
            assert cmd == {"seq": 1, "name": "coupon.used", "data": used}
        assert peers["k1"].nothing()  # not sent back to the kiosk that redeemed it
        # A re-send is stored once and passed on once.
        peers["k1"].publish(EVENTS_K1, dumps(first))
        assert peers["k1"].next()[1] == {"ids": [first.id]}
        assert peers["k2"].nothing() and peers["k3"].nothing()
        # The kiosk comes back without having applied it: the command path sends it again.
        peers["k2"].publish(kiosk_topic(STORE, "k2", "status"), b'{"online":true,"last_cmd_seq":0}')
        assert peers["k2"].next()[1]["name"] == "coupon.used"

        # k2 was offline too and accepted the same coupon: counted and logged.
        with caplog.at_level(logging.WARNING, logger="cloud_bridge.rules"):
            second = redeemed("k2", "cp1")
            peers["k2"].publish(kiosk_topic(STORE, "k2", "events"), dumps(second))
            assert peers["k2"].next()[1] == {"ids": [second.id]}
            assert peers["k1"].next()[1]["data"] == {"id": "cp1", "at": second.ts, "kiosk": "k2"}
        assert any("cp1" in r.message and "twice" in r.message for r in caplog.records)
        stats = repo.today_stats(STORE)
        assert (stats["redemptions"], stats["double_redemptions"]) == (2, 1)
    finally:
        for peer in peers.values():
            peer.close()
        ingest.stop()


def test_send_command_checks_the_command(bridge: BridgeRuntime, repo: Repository) -> None:
    with pytest.raises(ValueError, match="unknown command"):
        bridge.commands.send("k1", "self.destruct", {})
    with pytest.raises(ValueError, match="locker"):
        bridge.commands.send("k1", "locker.open", {"locker": "first"})
    assert repo.commands_after(STORE, "k1", 0) == []  # nothing queued
    before = int(time.time())
    cmd = bridge.commands.send("k1", "locker.open", {"locker": 2})
    assert before + 300 <= cmd.data["expires"] <= int(time.time()) + 300
    assert (
        bridge.commands.send("k1", "locker.open", {"locker": 2, "expires": 5}).data["expires"] == 5
    )


def test_a_redemption_the_hook_missed_is_passed_on_by_the_catch_up(repo: Repository) -> None:
    """Stored and acked, then the bridge died before telling the other doors: the
    periodic catch-up tells them, once."""
    from datetime import UTC, datetime, timedelta

    from cloud_bridge.commands import CommandService
    from cloud_bridge.rules import CouponUsedElsewhere

    rule = CouponUsedElsewhere(repo, STORE, CommandService(repo, STORE), ["k1", "k2", "k3"])
    told = redeemed("k1", "cp9")
    repo.add_events([told])
    rule([told], {told.id})  # this one the hook passed on
    missed = redeemed("k2", "cp7", seq=2)
    repo.add_events([missed])  # this one it never saw
    since = datetime.now(UTC) - timedelta(days=1)

    def used(kiosk: str) -> list[str]:
        return [c.data["id"] for c in repo.commands_after(STORE, kiosk, 0)]

    assert (used("k1"), used("k3")) == ([], ["cp9"])
    assert rule.catch_up(since) == 1
    assert (used("k1"), used("k2"), used("k3")) == (["cp7"], ["cp9"], ["cp9", "cp7"])
    assert rule.catch_up(since) == 0  # nothing left to tell


def test_a_batch_of_many_redemptions_reaches_each_door_as_one_command(
    repo: Repository,
) -> None:
    """A busy door's batch of redemptions: each other door gets one `coupons.used` naming
    them all, and the catch-up knows they were told."""
    from datetime import UTC, datetime, timedelta

    from cloud_bridge.commands import ONE_BY_ONE, CommandService
    from cloud_bridge.rules import CouponUsedElsewhere

    rule = CouponUsedElsewhere(repo, STORE, CommandService(repo, STORE), ["k1", "k2", "k3"])
    batch = [redeemed("k1", f"cp{i}", seq=i + 1) for i in range(ONE_BY_ONE + 3)]
    repo.add_events(batch)
    rule(batch, {e.id for e in batch})
    for kiosk in ("k2", "k3"):
        [cmd] = repo.commands_after(STORE, kiosk, 0)
        assert cmd.name == "coupons.used"
        assert cmd.data["coupons"] == [
            {"id": e.data["coupon_id"], "at": e.ts, "kiosk": "k1"} for e in batch
        ]
    assert repo.commands_after(STORE, "k1", 0) == []  # never back to the door that took them
    assert rule.catch_up(datetime.now(UTC) - timedelta(days=1)) == 0
