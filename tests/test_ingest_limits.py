"""Nothing a kiosk sends can stop the ingest (issue 13), on a real Mosquitto.

One kiosk (`bad`) publishes what no kiosk should: data nested hundreds deep, a 10 MB
event, a message over `message_bytes`, NUL characters, lone surrogates, NaN. Meanwhile
another kiosk (`good`) keeps publishing ordinary events, and they keep being stored and
acked. What exceeds a limit is quarantined with its reason and acked, never retried.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloud_bridge.config import BridgeConfig
from cloud_bridge.db import Repository
from cloud_bridge.runtime import BridgeRuntime
from o2o_protocol.config_file import validate_config
from o2o_protocol.messages import dumps, new_event_id
from o2o_protocol.timeutil import rfc3339
from o2o_protocol.topics import kiosk_topic
from tests.support import MosquittoBroker
from tests.test_bridge_ingest import Peer, acked_ids, events

STORE = "s1"


def config_with(
    tmp_path: Path, broker: MosquittoBroker, limits: dict[str, Any] | None = None
) -> BridgeConfig:
    raw: dict[str, Any] = {
        "store": STORE,
        "kiosks": ["good", "bad"],
        "mqtt": {"url": broker.url, "client_id": f"bridge-{uuid.uuid4().hex[:8]}"},
    }
    if limits:
        raw["limits"] = limits
    return validate_config(tmp_path / "bridge.toml", raw, BridgeConfig)


def envelope(kiosk: str, seq: int, data: Any, **fields: Any) -> dict[str, Any]:
    return {
        "id": new_event_id(),
        "seq": seq,
        "type": "checkin",
        "ts": rfc3339(time.time()),
        "store": STORE,
        "kiosk": kiosk,
        "data": data,
        **fields,
    }


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"a": value}
    return value


def topic(kiosk: str, leaf: str = "events") -> str:
    return kiosk_topic(STORE, kiosk, leaf)


@pytest.fixture
def peers(mosquitto_broker: MosquittoBroker) -> Iterator[dict[str, Peer]]:
    made = {k: Peer(mosquitto_broker, topic(k, "acks")) for k in ("good", "bad")}
    yield made
    for p in made.values():
        p.close()


def start(config: BridgeConfig, repo: Repository, **kwargs: Any) -> BridgeRuntime:
    runtime = BridgeRuntime(config, repo, **kwargs)
    runtime.start()
    assert runtime.wait_ready(10), "bridge did not subscribe"
    return runtime


def good_flows(good: Peer, repo: Repository, seq: int, n: int = 3) -> None:
    """The good kiosk's next events are stored and acked (within seconds, not never)."""
    batch = events(n, kiosk="good", start_seq=seq)
    good.publish(topic("good"), dumps(batch))
    assert sorted(acked_ids(good, n)) == sorted(e.id for e in batch)
    stored = {e.id for e in repo.events(kiosk="good", limit=None)}
    assert {e.id for e in batch} <= stored


def test_deeply_nested_event_is_quarantined_and_other_kiosks_flow(
    tmp_path: Path, mosquitto_broker: MosquittoBroker, repo: Repository, peers: dict[str, Peer]
) -> None:
    config = config_with(tmp_path, mosquitto_broker)
    bridge = start(config, repo)
    deep = envelope("bad", 1, nested(500))
    try:
        peers["bad"].publish(topic("bad"), json.dumps([deep]).encode())
        good_flows(peers["good"], repo, 1)
        assert acked_ids(peers["bad"], 1) == [deep["id"]]
        [q] = repo.rejected_events(store=STORE)
        assert (q.id, q.kiosk) == (deep["id"], "bad")
        assert "nested deeper than 16" in q.error
        assert repo.events(kiosk="bad") == []
    finally:
        bridge.stop()
    # After a restart nothing jams again: the same event re-sent is acked at once.
    bridge = start(config, repo)
    try:
        peers["bad"].publish(topic("bad"), json.dumps([deep]).encode())
        assert acked_ids(peers["bad"], 1) == [deep["id"]]
        good_flows(peers["good"], repo, 4)
        assert len(repo.rejected_events()) == 1
    finally:
        bridge.stop()


def test_huge_events_are_quarantined_with_a_bounded_preview(
    tmp_path: Path, mosquitto_broker: MosquittoBroker, repo: Repository, peers: dict[str, Peer]
) -> None:
    bridge = start(config_with(tmp_path, mosquitto_broker), repo)
    # 5 MB: under message_bytes (8 MiB), so parsed; over event_bytes, so quarantined.
    big = envelope("bad", 1, {"name": "x" * (5 * 1024 * 1024)})
    huge = envelope("bad", 2, {"name": "x" * (10 * 1024 * 1024)})
    try:
        peers["bad"].publish(topic("bad"), json.dumps(big).encode())
        good_flows(peers["good"], repo, 1)
        assert acked_ids(peers["bad"], 1) == [big["id"]]
        [q] = repo.rejected_events(store=STORE)
        assert q.id == big["id"] and "longer than 4096 characters" in q.error
        assert len(q.raw) < 10_000 and q.raw.startswith('{"id":')
        assert repo.events(kiosk="bad") == []  # never stored, so never served
        # 10 MB: over message_bytes, refused unparsed (a preview of its start is kept).
        peers["bad"].publish(topic("bad"), json.dumps(huge).encode())
        good_flows(peers["good"], repo, 4)
        deadline = time.monotonic() + 5
        while len(repo.rejected_events()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        q = repo.rejected_events()[0]
        assert q.id.startswith("message-") and "more than 8388608" in q.error
        assert len(q.raw) < 2000
        assert repo.events(kiosk="bad") == []
    finally:
        bridge.stop()


def test_an_envelope_of_ordinary_shape_but_over_event_bytes_is_quarantined(
    tmp_path: Path, mosquitto_broker: MosquittoBroker, repo: Repository, peers: dict[str, Peer]
) -> None:
    """Strings within `string_chars`, few items, shallow: only its size is over. The
    quick read of the message's shape leaves that to be counted, envelope by envelope."""
    bridge = start(config_with(tmp_path, mosquitto_broker), repo)
    fat = envelope("bad", 1, {f"note{i}": "x" * 4000 for i in range(5)})  # ~20 KB
    slim = envelope("bad", 2, {"member_id": "u1"})
    try:
        peers["bad"].publish(topic("bad"), json.dumps([slim, fat]).encode())
        assert sorted(acked_ids(peers["bad"], 2)) == sorted([slim["id"], fat["id"]])
        [q] = repo.rejected_events(store=STORE)
        assert q.id == fat["id"] and "more than 16384" in q.error
        assert [e.id for e in repo.events(kiosk="bad")] == [slim["id"]]
    finally:
        bridge.stop()


def test_a_message_over_message_bytes_is_refused_unparsed(
    tmp_path: Path, mosquitto_broker: MosquittoBroker, repo: Repository, peers: dict[str, Peer]
) -> None:
    config = config_with(tmp_path, mosquitto_broker, {"message_bytes": 64 * 1024})
    bridge = start(config, repo)
    try:
        batch = [envelope("bad", i + 1, {"n": "y" * 3000}) for i in range(30)]  # ~90 KB
        payload = json.dumps(batch).encode()
        peers["bad"].publish(topic("bad"), payload)
        good_flows(peers["good"], repo, 1)
        deadline = time.monotonic() + 5
        while not repo.rejected_events() and time.monotonic() < deadline:
            time.sleep(0.05)
        [q] = repo.rejected_events(store=STORE)
        assert q.id.startswith("message-") and q.kiosk == "bad"
        assert f"{len(payload)} bytes, more than 65536" in q.error
        assert len(q.raw) < 2000
        # Unparsed, so no event id to ack; PUBACKed, so the broker does not send it again.
        assert peers["bad"].nothing(0.5)
        assert repo.events(kiosk="bad") == []
        peers["bad"].publish(topic("bad"), payload)  # the same again: one quarantine row
        good_flows(peers["good"], repo, 4)
        assert len(repo.rejected_events()) == 1
    finally:
        bridge.stop()


BAD_DATA = {
    "nul": b'{"name": "a\\u0000b"}',
    "lone_surrogate": b'{"name": "\\ud800"}',
    "surrogate_key": b'{"\\udfff": 1}',
    "nan": b'{"points": NaN}',
    "infinity": b'{"points": -Infinity}',
    "huge_float": b'{"points": 1e400}',
    "many_items": b'{"items": [' + b",".join([b"1"] * 1001) + b"]}",
    "long_key": b'{"' + b"k" * 5000 + b'": 1}',
}


@pytest.mark.parametrize("kind", sorted(BAD_DATA))
def test_data_no_database_keeps_is_quarantined_not_retried(
    tmp_path: Path,
    mosquitto_broker: MosquittoBroker,
    any_repo: Repository,
    peers: dict[str, Peer],
    kind: str,
) -> None:
    repo = any_repo
    bridge = start(config_with(tmp_path, mosquitto_broker), repo)
    try:
        bad = envelope("bad", 1, {})
        head = json.dumps({k: v for k, v in bad.items() if k != "data"})[:-1]
        peers["bad"].publish(topic("bad"), head.encode() + b', "data": ' + BAD_DATA[kind] + b"}")
        good_flows(peers["good"], repo, 1)
        assert acked_ids(peers["bad"], 1) == [bad["id"]]
        [q] = repo.rejected_events(store=STORE)
        assert q.id == bad["id"] and q.error
        assert bridge.health()["status"] == "ok"
    finally:
        bridge.stop()


class _Boom(Exception):
    pass


@pytest.mark.parametrize(
    "error", [RecursionError("maximum recursion depth"), OverflowError("int too big"), _Boom()]
)
def test_any_error_of_one_event_is_quarantined_when_the_database_works(
    tmp_path: Path,
    mosquitto_broker: MosquittoBroker,
    repo: Repository,
    peers: dict[str, Peer],
    monkeypatch: pytest.MonkeyPatch,
    error: Exception,
) -> None:
    """The database step fails for one event only, with an error nobody listed."""
    poison = events(1, kiosk="bad")[0]
    real = repo._insert_events

    def insert(session: Any, values: list[dict[str, Any]]) -> set[str]:
        if any(v["id"] == poison.id for v in values):
            raise error
        return real(session, values)

    monkeypatch.setattr(repo, "_insert_events", insert)
    bridge = start(config_with(tmp_path, mosquitto_broker), repo)
    try:
        peers["bad"].publish(topic("bad"), dumps([poison]))
        assert acked_ids(peers["bad"], 1) == [poison.id]
        good_flows(peers["good"], repo, 1)
        [q] = repo.rejected_events()
        assert q.id == poison.id and type(error).__name__ in q.error
    finally:
        bridge.stop()


def test_a_broken_database_is_waited_for_not_blamed_on_the_events(
    tmp_path: Path,
    mosquitto_broker: MosquittoBroker,
    repo: Repository,
    peers: dict[str, Peer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every write fails (a dropped table, say): nothing is quarantined, all waits."""
    real = repo._insert_events
    broken = [True]

    def insert(session: Any, values: list[dict[str, Any]]) -> set[str]:
        if broken[0]:
            raise RuntimeError("no such table: events")
        return real(session, values)

    monkeypatch.setattr(repo, "_insert_events", insert)
    real_check = repo.check_writable

    def check(store: str, kiosk: str) -> None:
        if broken[0]:
            raise RuntimeError("no such table: events")
        real_check(store, kiosk)

    monkeypatch.setattr(repo, "check_writable", check)
    bridge = start(config_with(tmp_path, mosquitto_broker), repo)
    try:
        batch = events(2, kiosk="good")
        peers["good"].publish(topic("good"), dumps(batch))
        assert peers["good"].nothing(1.5)
        health = bridge.health()
        assert health["status"] == "degraded"
        assert any("database" in p for p in health["problems"]), health
        broken[0] = False
        assert sorted(acked_ids(peers["good"], 2)) == sorted(e.id for e in batch)
        assert repo.rejected_events() == [] and repo.count_events() == 2
    finally:
        bridge.stop()


@pytest.mark.parametrize("depth", [17, 500, 50_000])
def test_the_parser_never_sees_deep_nesting(monkeypatch: pytest.MonkeyPatch, depth: int) -> None:
    """Python's JSON parser recurses once per level; at the recursion limit, on paho's
    thread, a garbage-collection callback (hypothesis installs one) crashed the process:
    "Cannot recover from stack overflow". Deeper parts are cut before it parses."""
    from cloud_bridge import payloads

    seen: list[int] = []
    real = json.loads

    def loads(data: bytes) -> Any:
        seen.append(next(d for d in range(300) if not payloads._nested_deeper(data, d)))
        return real(data)

    monkeypatch.setattr(payloads.json, "loads", loads)
    env = envelope("bad", 1, {})
    head = json.dumps(env)[: -len("{}}")]
    payload = ("[" + head + '{"a":' * depth + "1" + "}" * depth + "}]").encode()
    [value] = payloads.loads_bounded(payload, 18)
    assert seen == [min(depth + 2, 18)]
    assert value["id"] == env["id"]  # the envelope survives: it can be quarantined
    with pytest.raises(payloads.ProtocolError):
        payloads.loads_bounded(b"[" * 300_000, 18)  # cutting it would cost too much: refused whole
