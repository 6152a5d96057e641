"""Kiosk sync against a real Mosquitto and a real bridge (docs/mqtt.md).

What a shop owner relies on: an event leaves the kiosk's outbox only once the bridge has
stored it; the kiosk's retained status tells any dashboard how it is doing, and says
"offline" by itself when the kiosk dies; Home Assistant finds the kiosk; commands from
the bridge are applied once, in order, even by a kiosk that was away when they were sent.

The helpers here (`Bridge`, `Watcher`, `queue_events`, `KioskProcess`, ...) are shared by
`test_sync_chaos.py` and `test_sync_security.py`.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from fastapi.testclient import TestClient
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from sqlalchemy import text

from cloud_bridge.api import create_app
from cloud_bridge.config import BridgeConfig
from cloud_bridge.db import Repository
from cloud_bridge.runtime import BridgeRuntime
from kiosk.config import MqttSection
from kiosk.decisions import Decision
from kiosk.localdb import KioskDB
from kiosk.sync import Sync
from o2o_protocol import topics
from o2o_protocol.codes import Code, verify_code
from o2o_protocol.config_file import validate_config
from o2o_protocol.messages import Command, EventType
from tests.keys import Issuer
from tests.support import REPO_ROOT, MosquittoBroker

STORE, KIOSK = "s1", "k1"
#: Generous: these tests run on a loaded 2-core machine next to other suites.
TIMEOUT = 30.0


# --- helpers shared with the chaos and security tests -----------------------------------


def wait_until(cond: Callable[[], bool], timeout: float = TIMEOUT, what: str = "condition") -> None:
    """Poll `cond` until it holds; fail with `what` (no fixed sleeps in the tests)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}", pytrace=False)
        time.sleep(0.02)


def open_store(directory: Path, *, store: str = STORE, kiosk: str = KIOSK) -> KioskDB:
    return KioskDB(directory, store=store, kiosk=kiosk)


def queue_events(store: KioskDB, n: int) -> list[str]:
    """Record n check-ins in the outbox; returns their ids in seq order.

    At the door each outcome is its own fsynced write; here ten thousand of them share
    one durable write so that setting up a backlog costs a second, not a minute and a half.
    The store's lock is held throughout, so a running sync sees all of them or none.
    """
    ids: list[str] = []
    with store._lock, store._storage.batch():
        for i in range(n):
            decision = Decision(EventType.CHECKIN, {"member_id": f"m{i % 50}"})
            ids.append(store.record(decision, time.time()).event.id)
    return ids


def kiosk_mqtt(url: str, **settings: Any) -> MqttSection:
    return MqttSection.model_validate({"url": url, **settings})


def bridge_config(
    directory: Path, url: str, *, store: str = STORE, **mqtt_settings: Any
) -> BridgeConfig:
    """A bridge config with a stable client id, so a restarted bridge resumes its session."""
    raw = {
        "store": store,
        "kiosks": [KIOSK],
        "mqtt": {"url": url, "client_id": f"bridge-{uuid.uuid4().hex[:8]}", **mqtt_settings},
    }
    return validate_config(directory / "bridge.toml", raw, BridgeConfig)


class Bridge:
    """The bridge's MQTT runtime in-process (BridgeRuntime + Repository on SQLite);
    restartable."""

    def __init__(self, directory: Path, url: str, **mqtt_settings: Any) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.config = bridge_config(directory, url, **mqtt_settings)
        self.repo = Repository.from_url(f"sqlite:///{directory / 'bridge.db'}")
        self.repo.migrate()
        self.runtime: BridgeRuntime | None = None

    def start(self, *, wait: bool = True) -> BridgeRuntime:
        self.runtime = BridgeRuntime(self.config, self.repo, stats_interval_s=0.5)
        self.runtime.start()
        if wait:
            assert self.runtime.wait_ready(TIMEOUT), "the bridge did not subscribe"
        return self.runtime

    def stop(self) -> None:
        if self.runtime is not None:
            self.runtime.stop()
            self.runtime = None

    def close(self) -> None:
        self.stop()
        self.repo.close()

    def count(self) -> int:
        return self.repo.count_events()


def stored_rows(db_url: str) -> list[tuple[str, str, int]]:
    """(id, kiosk, seq) of every stored event row, straight from the database."""
    repo = Repository.from_url(db_url)
    try:
        with repo.engine.connect() as conn:
            rows = conn.execute(text("SELECT id, kiosk, seq FROM events")).all()
        return [(str(r[0]), str(r[1]), int(r[2])) for r in rows]
    finally:
        repo.close()


def assert_stored_exactly_once(db_url: str, recorded: list[str]) -> None:
    """Every recorded event is stored, none twice, nothing else: the contract's promise."""
    rows = stored_rows(db_url)
    ids = [r[0] for r in rows]
    seqs = [(r[1], r[2]) for r in rows]
    missing = set(recorded) - set(ids)
    assert not missing, f"{len(missing)} of {len(recorded)} events were lost"
    assert len(ids) == len(set(ids)), f"{len(ids) - len(set(ids))} event ids stored twice"
    assert len(seqs) == len(set(seqs)), f"{len(seqs) - len(set(seqs))} kiosk seqs stored twice"
    assert sorted(ids) == sorted(recorded), "the bridge stored events the kiosk never recorded"


class Watcher:
    """A plain MQTT client (a dashboard, Home Assistant): records what it receives."""

    def __init__(self, broker_port: int, *subscriptions: str, **login: Any) -> None:
        self.messages: queue.Queue[tuple[str, bytes, bool]] = queue.Queue()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"watcher-{uuid.uuid4().hex[:8]}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        if login:
            self.client.username_pw_set(login["username"], login["password"])
        self.client.on_message = lambda _c, _u, m: self.messages.put(
            (m.topic, bytes(m.payload), bool(m.retain))
        )
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_args: subscribed.set()
        self.client.connect("127.0.0.1", broker_port)
        self.client.loop_start()
        if subscriptions:
            self.client.subscribe([(t, 1) for t in subscriptions])
            assert subscribed.wait(TIMEOUT), "no SUBACK"

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(TIMEOUT)

    def wait_for(
        self, topic: str, accept: Callable[[Any, bool], bool] = lambda _p, _r: True
    ) -> tuple[Any, bool]:
        """The next message on `topic` whose JSON payload (and retain flag) `accept`s."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"nothing acceptable arrived on {topic}", pytrace=False)
            try:
                got, payload, retained = self.messages.get(timeout=left)
            except queue.Empty:
                continue
            if got == topic:
                body = json.loads(payload)
                if accept(body, retained):
                    return body, retained

    def drain(self) -> list[tuple[str, bytes, bool]]:
        out = []
        while True:
            try:
                out.append(self.messages.get_nowait())
            except queue.Empty:
                return out

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


#: A kiosk as its own process, so it can be SIGKILLed like a power cut. It prints
#: "connected" once, and with --exit-when-drained it stops cleanly once the outbox is empty.
DRIVER = textwrap.dedent(
    """
    import logging, os, sys, time
    from pathlib import Path
    from kiosk.config import MqttSection
    from kiosk.localdb import KioskDB
    from kiosk.sync import Sync

    data_dir, store_id, kiosk_id, settings, mode = sys.argv[1:6]
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    store = KioskDB(Path(data_dir), store=store_id, kiosk=kiosk_id)
    gate = int(os.environ.get("O2O_TEST_GATE") or 0)
    if gate:  # the sync sees only events up to this seq (tests/test_sync_chaos.py)
        everything = store.pending_raw
        store.pending_raw = lambda limit=None: [
            e for e in everything(limit) if int(e["seq"]) <= gate
        ]
    cfg = MqttSection.model_validate_json(settings)
    sync = Sync(cfg, store, version="driver-1", telemetry=lambda: {"camera": "ok"})
    sync.start()
    if sync.wait_connected(60):
        print("connected", flush=True)
    if mode == "drain":
        drained = sync.wait_drained(240)
        sync.stop()
        store.close()
        print("drained" if drained else "not drained", flush=True)
        sys.exit(0 if drained else 1)
    while True:
        time.sleep(1)
    """
)


class KioskProcess:
    """`DRIVER` in a subprocess on a kiosk data directory."""

    def __init__(
        self,
        directory: Path,
        data_dir: Path,
        cfg: MqttSection,
        *,
        mode: str = "forever",
        gate: int | None = None,
    ) -> None:
        """`gate`: the sync sees only the events up to that seq (a strike point plus a
        margin), so a test can strike mid-drain however late a loaded machine polls."""
        script = directory / "kiosk_driver.py"
        script.write_text(DRIVER)
        self.log_path = directory / f"kiosk-{time.monotonic_ns()}.log"
        self._log = self.log_path.open("wb")
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "O2O_TEST_GATE": str(gate or "")}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(script),
                str(data_dir),
                STORE,
                KIOSK,
                cfg.model_dump_json(),
                mode,
            ],
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=env,
            text=True,
        )

    def wait_line(self, expected: str, timeout: float = TIMEOUT) -> None:
        assert self.proc.stdout is not None
        result: list[str] = []
        reader = threading.Thread(target=lambda: result.append(self.proc.stdout.readline()))  # type: ignore[union-attr]
        reader.start()
        reader.join(timeout)
        assert result and result[0].strip() == expected, (
            f"kiosk said {result!r}, not {expected!r}:\n{self.log()}"
        )

    def wait_exit(self, timeout: float = 240) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        """SIGKILL: no goodbye, no flush; like pulling the plug."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(TIMEOUT)
        self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]


# --- fixtures ------------------------------------------------------------------------


@pytest.fixture
def bridge(tmp_path: Path, mosquitto_broker: MosquittoBroker) -> Iterator[Bridge]:
    b = Bridge(tmp_path / "bridge", mosquitto_broker.url)
    b.start()
    yield b
    b.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[KioskDB]:
    s = open_store(tmp_path / "kiosk")
    yield s
    s.close()


class Kiosk:
    """A kiosk's sync in-process, with what it was told to do."""

    def __init__(self, store: KioskDB, url: str, telemetry: dict[str, Any]) -> None:
        self.db = store
        self.commands: list[Command] = []
        self.sync = Sync(
            kiosk_mqtt(url, resend_after_s=2.0),
            store,
            version="9.9.9",
            telemetry=lambda: dict(telemetry),
            on_command=self.commands.append,
        )

    def start(self) -> Kiosk:
        self.sync.start()
        assert self.sync.wait_connected(TIMEOUT), "kiosk did not connect"
        return self


TELEMETRY = {"lockers": {"open": 1, "faults": 0}, "printer": {"state": "ok"}, "camera": "ok"}


@pytest.fixture
def kiosk(store: KioskDB, mosquitto_broker: MosquittoBroker) -> Iterator[Kiosk]:
    k = Kiosk(store, mosquitto_broker.url, TELEMETRY).start()
    yield k
    k.sync.stop()


# --- the outbox -----------------------------------------------------------------------


def test_outbox_drains_in_order_and_only_on_acks(
    tmp_path: Path, mosquitto_broker: MosquittoBroker, store: KioskDB
) -> None:
    events_topic = topics.kiosk_topic(STORE, KIOSK, topics.EVENTS)
    wire = Watcher(mosquitto_broker.port, events_topic)
    bridge = Bridge(tmp_path / "bridge", mosquitto_broker.url)
    kiosk = Kiosk(store, mosquitto_broker.url, {}).start()
    try:
        # No bridge yet: the kiosk sends, the broker carries, nobody acks.
        first = queue_events(store, 300)
        kiosk.sync.notify()
        seen: list[int] = []

        def on_wire() -> bool:
            for _topic, payload, _r in wire.drain():
                batch = json.loads(payload)
                seen.extend(e["seq"] for e in (batch if isinstance(batch, list) else [batch]))
            return set(range(1, 301)) <= set(seen)

        wait_until(on_wire, what="the kiosk to publish its outbox")
        first_sent = list(dict.fromkeys(seen))  # re-sends may follow; first sends are in order
        assert first_sent == list(range(1, 301)), "the outbox was not sent in seq order"
        assert store.outbox_size() == 300, "events left the outbox without an ack"
        assert bridge.count() == 0

        # The bridge comes: everything is stored once, acked, and the outbox empties.
        bridge.start()
        assert kiosk.sync.wait_drained(TIMEOUT), f"{store.outbox_size()} events never acked"
        more = queue_events(store, 700)
        kiosk.sync.notify()
        assert kiosk.sync.wait_drained(TIMEOUT), f"{store.outbox_size()} events never acked"
        assert_stored_exactly_once(str(bridge.repo.engine.url), first + more)
        stored = {e.id: e.seq for e in bridge.repo.events(limit=2000)}
        assert sorted(stored.values()) == list(range(1, 1001))
    finally:
        kiosk.sync.stop()
        bridge.close()
        wire.close()


def test_status_is_retained_with_telemetry(
    kiosk: Kiosk, bridge: Bridge, mosquitto_broker: MosquittoBroker
) -> None:
    status_topic = topics.kiosk_topic(STORE, KIOSK, topics.STATUS)
    queue_events(kiosk.db, 3)
    kiosk.sync.notify()
    assert kiosk.sync.wait_drained(TIMEOUT)
    # A dashboard that connects later gets the kiosk's state at once, from the retained copy.
    dashboard = Watcher(mosquitto_broker.port, status_topic)
    try:
        status, retained = dashboard.wait_for(status_topic, lambda _p, r: r)
        assert retained and status["online"] is True
        assert status["version"] == "9.9.9"
        assert status["last_cmd_seq"] == 0
        assert isinstance(status["outbox"], int)
        assert status["lockers"] == TELEMETRY["lockers"]
        assert status["printer"] == TELEMETRY["printer"]
        assert status["camera"] == "ok"
        assert status["ts"].endswith("Z")
    finally:
        dashboard.close()
    # The bridge keeps it too, for its API and dashboard.
    wait_until(lambda: bool(bridge.repo.kiosks(STORE)), what="the bridge to record the status")
    [state] = bridge.repo.kiosks(STORE)
    assert state.online and state.last_status["version"] == "9.9.9"

    # A clean stop says goodbye with its last figures, still retained.
    kiosk.sync.stop()
    late = Watcher(mosquitto_broker.port, status_topic)
    try:
        status, retained = late.wait_for(status_topic, lambda _p, r: r)
        assert retained and status["online"] is False and status["outbox"] == 0
    finally:
        late.close()


def test_last_will_says_offline_after_sigkill(
    tmp_path: Path, mosquitto_broker: MosquittoBroker
) -> None:
    status_topic = topics.kiosk_topic(STORE, KIOSK, topics.STATUS)
    dashboard = Watcher(mosquitto_broker.port, status_topic)
    kiosk = KioskProcess(tmp_path, tmp_path / "kiosk", kiosk_mqtt(mosquitto_broker.url))
    try:
        kiosk.wait_line("connected")
        status, _ = dashboard.wait_for(status_topic, lambda p, _r: p["online"] is True)
        assert status["camera"] == "ok" and status["version"] == "driver-1"
        kiosk.kill()
        status, _ = dashboard.wait_for(status_topic, lambda p, _r: p["online"] is False)
        assert status == {"online": False}, "the Last Will is exactly {'online': false}"
    finally:
        if kiosk.proc.poll() is None:
            kiosk.kill()
        dashboard.close()
    late = Watcher(mosquitto_broker.port, status_topic)
    try:
        status, retained = late.wait_for(status_topic, lambda _p, r: r)
        assert retained and status == {"online": False}
    finally:
        late.close()


# --- Home Assistant --------------------------------------------------------------------


def test_home_assistant_discovery_is_retained_and_resent(
    kiosk: Kiosk, mosquitto_broker: MosquittoBroker
) -> None:
    config_topic = f"homeassistant/device/o2o_{STORE}_{KIOSK}/config"
    status_topic = topics.kiosk_topic(STORE, KIOSK, topics.STATUS)
    ha = Watcher(mosquitto_broker.port, "homeassistant/device/+/config")
    try:
        config, _ = ha.wait_for(config_topic)  # live or retained, whichever came first
        late = Watcher(mosquitto_broker.port, "homeassistant/device/+/config")
        try:  # a Home Assistant that starts later still finds the device
            retained_config, retained = late.wait_for(config_topic, lambda _p, r: r)
            assert retained and retained_config == config
        finally:
            late.close()
        assert config["dev"]["ids"] == [f"o2o_{STORE}_{KIOSK}"]
        assert config["dev"]["sw"] == "9.9.9"
        assert config["state_topic"] == status_topic
        assert config["availability"][0]["topic"] == status_topic
        assert len(config["cmps"]) >= 5
        for cid, comp in config["cmps"].items():
            assert comp["unique_id"] == cid and comp["p"] and "value_template" in comp
        assert any("value_json.outbox" in c["value_template"] for c in config["cmps"].values())

        # Home Assistant restarted: it forgets devices and says so; the kiosk tells it again.
        ha.drain()
        ha.publish("homeassistant/status", b"online")
        again, _ = ha.wait_for(config_topic)
        assert again == config
        # "offline" asks for nothing.
        ha.publish("homeassistant/status", b"offline")
        ha.publish("homeassistant/status", b"online")
        ha.wait_for(config_topic)
        assert all(t != config_topic for t, _p, _r in ha.drain())
    finally:
        ha.close()


# --- commands ------------------------------------------------------------------------


def _revoked(store: KioskDB, code: Code) -> bool:
    return store.facts_for(code).revoked


def test_commands_apply_once_in_order_and_catch_up_after_offline(
    tmp_path: Path, bridge: Bridge, store: KioskDB, mosquitto_broker: MosquittoBroker
) -> None:
    issuer = Issuer(store=STORE)
    codes = {}
    for cid in ("cp1", "cp2", "cp3"):
        code = verify_code(issuer.code("c", cid), issuer.public_keys, store=STORE, now=time.time())
        assert isinstance(code, Code)
        codes[cid] = code
    assert bridge.runtime is not None
    app = create_app(
        bridge.config,
        bridge.repo,
        token="t" * 32,
        signing_key=issuer.key,
        commands=bridge.runtime.commands,
    )
    api = TestClient(app, headers={"Authorization": "Bearer " + "t" * 32})

    def post(name: str, data: dict[str, Any]) -> int:
        r = api.post(f"/api/v1/kiosks/{KIOSK}/commands", json={"name": name, "data": data})
        assert r.status_code == 201, r.text
        return int(r.json()["seq"])

    kiosk = Kiosk(store, mosquitto_broker.url, {}).start()
    assert post("code.revoke", {"id": "cp1"}) == 1
    wait_until(lambda: _revoked(store, codes["cp1"]), what="the revocation to reach the kiosk")
    assert [c.seq for c in kiosk.commands] == [1]

    # The kiosk goes away; three commands are sent while nobody listens.
    kiosk.sync.stop()
    assert post("code.revoke", {"id": "cp2"}) == 2
    assert post("preorder.upsert", {"order": "o-7", "size": "L", "name": "Li"}) == 3
    assert post("code.revoke", {"id": "cp3"}) == 4
    assert store.last_cmd_seq == 1 and not _revoked(store, codes["cp2"])

    # It comes back, reports last_cmd_seq = 1, and the bridge sends 2..4 again.
    kiosk = Kiosk(store, mosquitto_broker.url, {}).start()
    try:
        wait_until(lambda: store.last_cmd_seq == 4, what="the missed commands to be applied")
        assert [c.seq for c in kiosk.commands] == [2, 3, 4]
        assert _revoked(store, codes["cp2"]) and _revoked(store, codes["cp3"])
        preorder = store.preorder("o-7")
        assert preorder is not None and preorder.size == "L" and preorder.name == "Li"

        # A re-sent command is not applied twice; a command from the future waits its turn.
        assert bridge.runtime is not None
        cmd_topic = topics.kiosk_topic(STORE, KIOSK, topics.CMD)
        peer = Watcher(mosquitto_broker.port)
        try:
            peer.publish(cmd_topic, b'{"seq": 2, "name": "code.revoke", "data": {"id": "x"}}')
            peer.publish(cmd_topic, b'{"seq": 9, "name": "code.revoke", "data": {"id": "y"}}')
            assert post("member.upsert", {"id": "u1", "name": "Wang", "points": 5}) == 5
            wait_until(lambda: store.last_cmd_seq == 5, what="command 5")
        finally:
            peer.close()
        assert [c.seq for c in kiosk.commands] == [2, 3, 4, 5]
        # The kiosk's status tells the bridge how far it got.
        wait_until(
            lambda: bridge.repo.kiosks(STORE)[0].last_status.get("last_cmd_seq") == 5,
            what="the status to report last_cmd_seq 5",
        )
    finally:
        kiosk.sync.stop()


def test_broken_acks_and_commands_are_dropped_and_sync_goes_on(
    kiosk: Kiosk, bridge: Bridge, mosquitto_broker: MosquittoBroker
) -> None:
    peer = Watcher(mosquitto_broker.port)
    try:
        for leaf in (topics.ACKS, topics.CMD):
            t = topics.kiosk_topic(STORE, KIOSK, leaf)
            for junk in (b"not json", b"\xff\xfe", b"[]", b"42", b'{"ids": "x"}', b'{"seq": -1}'):
                peer.publish(t, junk)
    finally:
        peer.close()
    ids = queue_events(kiosk.db, 20)
    kiosk.sync.notify()
    assert kiosk.sync.wait_drained(TIMEOUT), "the kiosk stopped syncing after junk"
    assert_stored_exactly_once(str(bridge.repo.engine.url), ids)
    assert bridge.runtime is not None
    bridge.runtime.commands.send(KIOSK, "member.upsert", {"id": "u2", "name": "Zhao"})
    wait_until(lambda: kiosk.db.last_cmd_seq == 1, what="a good command after the junk")
    assert [c.name for c in kiosk.commands] == ["member.upsert"]
