"""`/health` on a real Mosquitto: 200 while the ingest keeps up, 503 naming why when not.

Degraded when the broker session is down, when the ingest worker waits for a database
that is down, or when a message taken from the broker has waited too long to be stored.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient
from sqlalchemy.exc import OperationalError

from cloud_bridge.api import create_app
from cloud_bridge.db import Repository
from cloud_bridge.runtime import BridgeRuntime
from o2o_protocol.messages import dumps
from tests.support import MosquittoBroker
from tests.test_bridge_ingest import Peer, acked_ids, events
from tests.test_ingest_limits import config_with, topic


def until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture
def good(mosquitto_broker: MosquittoBroker) -> Iterator[Peer]:
    peer = Peer(mosquitto_broker, topic("good", "acks"))
    yield peer
    peer.close()


def bridge_and_client(
    tmp_path: Path, broker: MosquittoBroker, repo: Repository, **kwargs: Any
) -> tuple[BridgeRuntime, TestClient]:
    config = config_with(tmp_path, broker)
    runtime = BridgeRuntime(config, repo, **kwargs)
    app = create_app(
        config,
        repo,
        token="t0ken-for-health-tests-0123456",
        signing_key=Ed25519PrivateKey.generate(),
        commands=runtime.commands,
        mqtt_connected=lambda: runtime.ready,
        ingest_health=runtime.health,
    )
    return runtime, TestClient(app)


def test_health_is_ok_then_degraded_while_the_broker_is_down(
    tmp_path: Path, mosquitto_broker: MosquittoBroker, repo: Repository
) -> None:
    runtime, client = bridge_and_client(tmp_path, mosquitto_broker, repo)
    r = client.get("/health")  # not started: no broker session, no worker
    assert r.status_code == 503 and r.json()["status"] == "degraded"
    runtime.start()
    try:
        assert runtime.wait_ready(10)
        r = client.get("/health")
        assert r.status_code == 200, r.json()
        body = r.json()
        assert body["status"] == "ok" and body["problems"] == [] and body["mqtt_connected"]
        mosquitto_broker.stop()
        until(lambda: client.get("/health").status_code == 503)
        body = client.get("/health").json()
        assert body["status"] == "degraded" and body["mqtt_connected"] is False
        assert any("broker session down" in p for p in body["problems"])
        mosquitto_broker.start()
        until(lambda: client.get("/health").status_code == 200, timeout=30)
    finally:
        runtime.stop()


class _Down(Exception):
    pass


def test_health_is_degraded_while_the_database_is_down(
    tmp_path: Path,
    mosquitto_broker: MosquittoBroker,
    repo: Repository,
    good: Peer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = repo._insert_events
    down = [True]

    def insert(session: Any, values: list[dict[str, Any]]) -> set[str]:
        if down[0]:
            raise OperationalError("INSERT", {}, _Down("connection refused"))
        return real(session, values)

    monkeypatch.setattr(repo, "_insert_events", insert)
    runtime, client = bridge_and_client(tmp_path, mosquitto_broker, repo)
    runtime.start()
    try:
        assert runtime.wait_ready(10)
        batch = events(2, kiosk="good")
        good.publish(topic("good"), dumps(batch))
        until(lambda: client.get("/health").status_code == 503)
        body = client.get("/health").json()
        [problem] = body["problems"]
        assert "database unavailable" in problem and "_Down" in problem
        assert "connection refused" not in str(body)  # the driver's text stays in the log
        assert body["ingest"]["pending"] == 1
        down[0] = False
        assert sorted(acked_ids(good, 2)) == sorted(e.id for e in batch)
        until(lambda: client.get("/health").status_code == 200)
        assert client.get("/health").json()["ingest"]["pending"] == 0
    finally:
        runtime.stop()


def test_health_is_degraded_when_a_taken_message_waits_too_long(
    tmp_path: Path,
    mosquitto_broker: MosquittoBroker,
    repo: Repository,
    good: Peer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker that is slow, not failing (a database that hangs): the age tells."""
    release = threading.Event()
    real = repo.add_events

    def slow(*args: Any, **kwargs: Any) -> list[str]:
        release.wait(20)
        return real(*args, **kwargs)

    monkeypatch.setattr(repo, "add_events", slow)
    runtime, client = bridge_and_client(tmp_path, mosquitto_broker, repo, max_wait_s=0.5)
    runtime.start()
    try:
        assert runtime.wait_ready(10)
        batch = events(1, kiosk="good")
        good.publish(topic("good"), dumps(batch))
        until(lambda: client.get("/health").status_code == 503)
        [problem] = client.get("/health").json()["problems"]
        assert "not stored yet" in problem
        release.set()
        assert acked_ids(good, 1) == [batch[0].id]
        until(lambda: client.get("/health").status_code == 200)
    finally:
        release.set()
        runtime.stop()
