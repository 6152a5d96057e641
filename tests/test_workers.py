"""Several workers of one service (`o2o-bridge run --worker NAME`, docs/chain.md), black-box:
two worker processes of a service of two stores on a real Mosquitto and PostgreSQL,
kiosks sending over MQTT, one worker SIGKILLed mid-run.

What a shop owner would notice: every event stored once and acked, split between the
workers; one stats document per store per interval and one Home Assistant discovery,
not one per worker; a kiosk's missing commands re-sent once; the lease holder's jobs
taken over within seconds when it dies; the bridge's status online while a worker is up.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from cloud_bridge.db import Repository
from cloud_bridge.leases import (
    LEASE_TTL_S,
    RENEW_S,
    Lease,
    LeaseKeeper,
    beat,
    holders,
    store_lease,
)
from o2o_protocol.config_file import MqttConnection
from o2o_protocol.messages import Event, dumps, new_event_id, parse_ack
from o2o_protocol.mqtt import MqttLink
from o2o_protocol.timeutil import rfc3339
from o2o_protocol.topics import ACKS, CMD, EVENTS, STATUS, kiosk_topic
from tests.conftest import empty_tables
from tests.shop import BIN, bridge_cli
from tests.support import MosquittoBroker, free_port, wait_for_port

STORES = {"s1": [f"k{i:02d}" for i in range(1, 6)], "s2": [f"a{i:02d}" for i in range(1, 6)]}
#: The stats publisher's interval (runtime.py's default).
STATS_INTERVAL_S = 1.0
#: How long a kiosk waits for an ack before sending an event again (as the kiosk does).
RESEND_S = 2.0


def wait_until(what: str, cond: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"waited {timeout:.0f} s for {what}", pytrace=False)
        time.sleep(0.05)


class Worker:
    """`o2o-bridge run --worker NAME` as a process, with its own HTTP port."""

    def __init__(self, shop: Path, name: str) -> None:
        self.name = name
        self.port = free_port()
        self.log_path = shop / f"worker-{name}.log"
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [
                str(BIN / "o2o-bridge"),
                "run",
                "--config",
                "bridge.toml",
                "--worker",
                name,
                "--http",
                f"127.0.0.1:{self.port}",
            ],
            cwd=shop,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        wait_for_port("127.0.0.1", self.port, timeout=30, alive=lambda: self.proc.poll() is None)

    def health(self) -> dict[str, Any]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=5) as r:
                return dict(json.loads(r.read()))
        except urllib.error.HTTPError as exc:
            return dict(json.loads(exc.read()))

    def stores(self) -> dict[str, Any]:
        return dict(self.health()["stores"])

    def holds(self, store: str) -> bool:
        return bool(self.stores()[store]["worker"]["holds_lease"])

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._log.close()


class Watch:
    """What a dashboard sees on the broker: every message on the stats, bridge status
    and discovery topics, with when it came."""

    def __init__(self, broker: MosquittoBroker) -> None:
        self.got: list[tuple[float, str, Any]] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="t-watch")
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.subscribe(
            [("o2o/v1/+/stats", 1), ("o2o/v1/+/bridge", 1), ("homeassistant/device/+/config", 1)]
        )
        self.client.loop_start()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.got.append((time.monotonic(), msg.topic, json.loads(msg.payload)))

    def on(self, topic: str, since: float = 0.0) -> list[tuple[float, Any]]:
        with self._lock:
            return [(t, p) for t, top, p in self.got if top == topic and t >= since]

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class Kiosk:
    """A kiosk's side of the protocol: event batches out, acks back, un-acked events sent
    again every `RESEND_S` (as a kiosk's outbox does), commands counted by name."""

    def __init__(self, url: str, store: str, kiosk: str) -> None:
        self.store, self.kiosk, self.seq = store, kiosk, 0
        self.sent: dict[str, tuple[float, Event]] = {}
        self.acked: set[str] = set()
        self.commands: list[tuple[int, str]] = []
        self._lock = threading.Lock()
        self.link = MqttLink(MqttConnection(url=url), client_id=f"t-{store}-{kiosk}")
        self.link.subscribe([kiosk_topic(store, kiosk, ACKS)], self._on_ack)
        self.link.subscribe([kiosk_topic(store, kiosk, CMD)], self._on_cmd)
        self.link.start()
        assert self.link.wait_subscribed(20)

    def _on_ack(self, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.acked.update(parse_ack(msg.payload).ids)

    def _on_cmd(self, msg: mqtt.MQTTMessage) -> None:
        cmd = json.loads(msg.payload)
        with self._lock:
            self.commands.append((cmd["seq"], cmd["name"]))

    def got(self, name: str) -> int:
        with self._lock:
            return sum(1 for _, n in self.commands if n == name)

    def send(self, n: int) -> None:
        """`n` check-ins in one message."""
        events = []
        for _ in range(n):
            self.seq += 1
            events.append(
                Event(
                    id=new_event_id(),
                    seq=self.seq,
                    type="checkin",
                    ts=rfc3339(time.time()),
                    store=self.store,
                    kiosk=self.kiosk,
                    data={"name": "guest", "counted": True, "points_earned": 1},
                )
            )
        now = time.monotonic()
        with self._lock:
            self.sent.update({e.id: (now, e) for e in events})
        self.link.publish(kiosk_topic(self.store, self.kiosk, EVENTS), dumps(events), qos=1)

    def resend(self) -> None:
        """Send again what has waited `RESEND_S` for its ack."""
        now = time.monotonic()
        with self._lock:
            late = [
                e for t, e in self.sent.values() if e.id not in self.acked and now - t > RESEND_S
            ]
            self.sent.update({e.id: (now, e) for e in late})
        if late:
            self.link.publish(kiosk_topic(self.store, self.kiosk, EVENTS), dumps(late), qos=1)

    def drained(self) -> bool:
        with self._lock:
            return set(self.sent) <= self.acked

    def status(self, last_cmd_seq: int) -> None:
        doc = {"online": True, "ts": rfc3339(time.time()), "last_cmd_seq": last_cmd_seq}
        self.link.publish(
            kiosk_topic(self.store, self.kiosk, STATUS), json.dumps(doc).encode(), retain=True
        )

    def stop(self) -> None:
        self.link.stop()


@pytest.fixture
def pg_repo(pg_url: str) -> Iterator[Repository]:
    repo = Repository.from_url(pg_url)
    repo.migrate()
    empty_tables(repo)
    yield repo
    repo.close()


def _stats_per_interval(watch: Watch, store: str, since: float, window: float) -> list[float]:
    """The times of the stats documents of `store` over `window` seconds from `since`
    (waits for the window to pass, as the documents arrive)."""
    topic = f"o2o/v1/{store}/stats"
    wait_until(
        f"{window:.0f} s of stats for {store}",
        lambda: any(t >= since + window for t, _ in watch.on(topic, since)),
        timeout=window + 15,
    )
    return [t for t, _ in watch.on(topic, since) if t < since + window]


def _offline_then_online(seen: list[bool]) -> bool:
    """A Last Will said offline, and a live worker then said online (last)."""
    return False in seen and seen[-1] is True and seen.index(False) < len(seen) - 1


def _assert_one_publisher(times: list[float], window: float) -> None:
    """One document per interval: as many as the window holds intervals (one more at
    most, for where the window cuts). Two publishers would send about twice as many; the
    gaps between documents are not checked, as a busy machine delays some and not others."""
    assert 1 <= len(times) <= window / STATS_INTERVAL_S + 1, times


def test_two_workers_split_the_ingest_and_run_every_other_job_once(
    tmp_path: Path, mosquitto_broker: MosquittoBroker, pg_url: str, pg_repo: Repository
) -> None:
    shop = tmp_path / "shop"
    shop.mkdir()
    service = ["--mqtt", mosquitto_broker.url, "--db", pg_url]
    for store, kiosks in STORES.items():
        ks = [a for k in kiosks for a in ("--kiosk", k)]
        bridge_cli(shop, "init", "--dir", str(shop), "--store", store, *ks, *service)
        service = []  # the second store joins the service the first made
    watch = Watch(mosquitto_broker)
    workers: list[Worker] = []
    kiosks: list[Kiosk] = []
    try:
        w1 = Worker(shop, "w1")
        workers.append(w1)
        # The first worker up takes every store's lease; the second shares the ingest and
        # gets its share of the leases: one store each.
        wait_until("w1 holding both leases", lambda: all(w1.holds(s) for s in STORES))
        w2 = Worker(shop, "w2")
        workers.append(w2)
        wait_until("w2 connected", lambda: w2.health().get("mqtt_connected") is True)

        def lease_holders() -> dict[str, str | None]:
            return {s: h["worker"]["lease_holder"] for s, h in w2.stores().items()}

        wait_until(
            "a lease each", lambda: sorted(map(str, lease_holders().values())) == ["w1", "w2"]
        )
        moved = next(s for s, h in lease_holders().items() if h == "w2")
        for store, h in w1.stores().items():
            assert h["worker"]["holds_lease"] is (store != moved)

        kiosks += [Kiosk(mosquitto_broker.url, s, k) for s, ks in STORES.items() for k in ks]
        for _ in range(10):
            for k in kiosks:
                k.send(3)
        wait_until("every event acked", lambda: all(k.drained() for k in kiosks))
        all_ids = {i for k in kiosks for i in k.sent}
        assert pg_repo.count_events() == len(all_ids) == 300

        # Split between the workers: the holder's stats document counts what each stored.
        def split(store: str) -> dict[str, int] | None:
            docs = watch.on(f"o2o/v1/{store}/stats")
            if not docs:
                return None
            live = docs[-1][1].get("workers", {})
            return {w: lag["stored"] for w, lag in live.items()}

        for store in STORES:
            wait_until(
                f"the stats of {store} to count every event its workers stored",
                lambda s=store: sum((split(s) or {}).values()) == 150,  # type: ignore[misc]
            )
            parts = split(store)
            assert parts is not None and set(parts) == {"w1", "w2"}
            assert all(n > 0 for n in parts.values()), parts

        # One stats document per store per interval, one discovery per store.
        start = time.monotonic()
        for store in STORES:
            _assert_one_publisher(_stats_per_interval(watch, store, start, 4.0), 4.0)
            # Announced by w1 at its start, and by w2 when it took its lease.
            announced = len(watch.on(f"homeassistant/device/o2o_{store}/config"))
            assert announced == (2 if store == moved else 1)
            assert watch.on(f"o2o/v1/{store}/bridge")[-1][1] == {"online": True}

        # A command the kiosk missed: its status gets it re-sent, once.
        k01, k02 = kiosks[0], kiosks[1]
        pg_repo.add_commands("s1", [("k01", "code.revoke", {"id": "c-1"})])
        k01.status(0)
        wait_until("k01's missing command", lambda: k01.got("code.revoke") == 1)
        after = time.monotonic()
        wait_until(
            "two more stats documents",
            lambda: len(watch.on("o2o/v1/s1/stats", after)) >= 2,
        )
        assert k01.got("code.revoke") == 1

        # The lease holder dies mid-run; the kiosks go on sending.
        sending = threading.Event()
        sending.set()

        def traffic() -> None:
            while sending.is_set():
                for k in kiosks:
                    k.send(2)
                    k.resend()
                time.sleep(0.1)  # the kiosks' pace, not a wait for a condition

        sender = threading.Thread(target=traffic, daemon=True)
        sender.start()
        wait_until("traffic under way", lambda: pg_repo.count_events() > 320)
        victim, survivor = (w1, w2) if lease_holders()["s1"] == "w1" else (w2, w1)
        killed = time.monotonic()
        victim.kill()
        wait_until(
            f"{survivor.name} taking both leases",
            lambda: all(survivor.holds(s) for s in STORES),
            timeout=LEASE_TTL_S + RENEW_S + 10,
        )
        failover = time.monotonic() - killed
        print(f"failover after SIGKILL: {failover:.1f} s")
        assert failover <= LEASE_TTL_S + RENEW_S + 1.0

        # Taking the lease, the survivor did what a fresh start does: k01's last status lacks the
        # command, so it is sent again (once); the status says online; stats go on.
        wait_until("k01's command after the takeover", lambda: k01.got("code.revoke") == 2)
        for store in STORES:
            topic = f"o2o/v1/{store}/bridge"
            wait_until(
                f"{store}'s bridge status offline (a will), then online again",
                lambda t=topic: _offline_then_online([p["online"] for _, p in watch.on(t, killed)]),  # type: ignore[misc]
            )
        taken = time.monotonic()
        for store in STORES:
            _assert_one_publisher(_stats_per_interval(watch, store, taken, 3.0), 3.0)
        after_kill = {s: len(watch.on(f"homeassistant/device/o2o_{s}/config")) for s in STORES}
        assert after_kill == {"s1": 2 if moved == "s2" else 3, "s2": 2 if moved == "s2" else 1}

        # A status after the takeover: the missing command re-sent once.
        pg_repo.add_commands("s1", [("k02", "code.revoke", {"id": "c-2"})])
        k02.status(0)
        wait_until("k02's missing command", lambda: k02.got("code.revoke") == 1)

        sending.clear()
        sender.join(10)

        def drained() -> bool:
            for k in kiosks:
                k.resend()
            return all(k.drained() for k in kiosks)

        wait_until("every outbox drained", drained, timeout=60)
        all_ids = {i for k in kiosks for i in k.sent}
        stored = {e.id for e in pg_repo.iter_events()}
        assert stored == all_ids, f"{len(all_ids - stored)} lost"
        assert pg_repo.count_events() == len(all_ids)
        after = time.monotonic()
        wait_until("two more stats documents", lambda: len(watch.on("o2o/v1/s1/stats", after)) >= 2)
        assert k02.got("code.revoke") == 1

        # The last worker gone: the status ends offline.
        survivor.kill()
        for store in STORES:
            topic = f"o2o/v1/{store}/bridge"
            wait_until(
                f"{store}'s bridge status offline",
                lambda t=topic: watch.on(t)[-1][1] == {"online": False},  # type: ignore[misc]
            )
    finally:
        for k in kiosks:
            k.stop()
        for w in workers:
            w.close()
        watch.stop()


def test_a_lease_has_one_holder_until_it_expires_or_is_given_up(any_repo: Repository) -> None:
    a, b = (Lease(any_repo.engine, "store:s1", w, ttl_s=5.0) for w in ("w1", "w2"))
    now = time.time()
    assert a.acquire(now) is True
    assert b.acquire(now + 1) is False  # w1's, for 5 s
    assert a.acquire(now + 2) is True  # renewed: now until now + 7
    assert b.acquire(now + 6) is False
    assert b.acquire(now + 7.5) is True  # expired: w2 takes it
    assert a.acquire(now + 8) is False
    assert holders(any_repo.engine, now + 8) == {"store:s1": "w2"}
    b.release()
    assert a.acquire(now + 8.5) is True  # given up: taken at once


def test_a_worker_that_starts_later_gets_its_share_of_the_stores(repo: Repository) -> None:
    """Four stores, the first worker up takes them all; a second worker gets two of them
    within seconds, and each store is held by one worker at every moment."""
    stores = ["s1", "s2", "s3", "s4"]

    def keepers(worker: str) -> dict[str, LeaseKeeper]:
        return {
            s: LeaseKeeper(
                Lease(repo.engine, store_lease(s), worker),
                heartbeat=lambda s=s: beat(repo.engine, s, worker, {}),  # type: ignore[misc]
                balance=True,
            )
            for s in stores
        }

    first, second = keepers("b1"), keepers("b2")
    try:
        for k in first.values():
            k.start()
        assert all(k.holds for k in first.values())
        for k in second.values():
            k.start()

        def held() -> tuple[int, int]:
            both = [s for s in stores if first[s].holds and second[s].holds]
            assert not both, f"held by both workers: {both}"
            return sum(k.holds for k in first.values()), sum(k.holds for k in second.values())

        wait_until("two stores each", lambda: held() == (2, 2), timeout=20)
    finally:
        for k in [*first.values(), *second.values()]:
            k.stop()
