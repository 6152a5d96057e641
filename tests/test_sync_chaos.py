"""Chaos: 10,000 queued events drain while the broker, the kiosk or the bridge dies.

The promise (docs/mqtt.md): 0 lost, 0 stored twice, whatever restarts in the middle. Each
interruption is triggered by progress (some, but not all, events already stored), so it
lands mid-drain by construction, and the test asserts that it did.
"""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kiosk.localdb import KioskDB
from kiosk.sync import Sync
from tests.support import MosquittoBroker, free_port, wait_for_port
from tests.test_sync import (
    KIOSK,
    STORE,
    Bridge,
    KioskProcess,
    assert_stored_exactly_once,
    kiosk_mqtt,
    open_store,
    queue_events,
    wait_until,
)

pytestmark = pytest.mark.slow

N = 10_000
#: Time for the whole backlog to get through, interruptions included (2-core machine).
DRAIN_TIMEOUT = 120.0
BIN = Path(sys.executable).parent


def _count(db: Path) -> int:
    with sqlite3.connect(db, timeout=30) as conn:
        return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])


def _interrupt_points(rng: random.Random, times: int) -> list[int]:
    """Stored-event counts at which to strike: random, increasing, all short of N."""
    return sorted(rng.sample(range(N // 20, N - N // 10), times))


#: Events the gate lets through beyond a strike point: in flight when the strike lands.
AHEAD = 500


class GatedStore(KioskDB):
    """The kiosk's store, showing its sync only the events up to `gate` (by seq).

    The drain runs at thousands of events a second; a test thread polling for "point
    reached" can be descheduled long enough on a loaded machine for the whole backlog to
    land before it strikes. With the gate `AHEAD` events past the point, the strike lands
    while those are in flight and the rest still wait, however late the poll comes.
    """

    gate = N

    def pending_raw(self, limit: int | None = None) -> list[dict[str, Any]]:
        return [e for e in super().pending_raw(limit) if int(e["seq"]) <= self.gate]


def gated_store(directory: Path) -> GatedStore:
    return GatedStore(directory, store=STORE, kiosk=KIOSK)


def test_broker_killed_and_restarted_six_times_mid_drain(
    tmp_path: Path, mosquitto_broker: MosquittoBroker
) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    bridge = Bridge(tmp_path / "bridge", mosquitto_broker.url)
    bridge.start()
    store = gated_store(tmp_path / "kiosk")
    recorded = queue_events(store, N)
    # Small batches: more messages in flight through the broker when it dies.
    sync = Sync(kiosk_mqtt(mosquitto_broker.url, batch_size=50), store, version="chaos")
    struck_at: list[tuple[int, int]] = []
    try:
        store.gate = 0
        sync.start()
        last = 0
        for point in _interrupt_points(rng, 6):
            store.gate = point + AHEAD
            sync.notify()

            # Strike only a live drain: both ends connected again and moving since the
            # last restart, so every kill cuts real traffic.
            def live(p: int = point, after: int = last) -> bool:
                runtime = bridge.runtime
                ready = sync.connected and runtime is not None and runtime.ready
                return ready and bridge.count() >= max(p, after + 1)

            wait_until(live, DRAIN_TIMEOUT, f"{point} events stored (seed {seed})")
            outbox, last = store.outbox_size(), bridge.count()
            mosquitto_broker.kill()
            struck_at.append((last, outbox))
            time.sleep(rng.uniform(0.0, 0.5))  # down for a random moment
            mosquitto_broker.start()
        store.gate = N
        sync.notify()
        assert sync.wait_drained(DRAIN_TIMEOUT), (
            f"{store.outbox_size()} events still in the outbox (seed {seed}, kills {struck_at})"
        )
    finally:
        sync.stop()
        bridge.close()
    assert len(struck_at) == 6
    for stored, outbox in struck_at:
        assert 0 < stored < N and outbox > 0, f"a kill missed the drain: {struck_at}"
    assert_stored_exactly_once(str(bridge.repo.engine.url), recorded)
    assert store.outbox_size() == 0
    store.close()


def test_kiosk_sigkilled_mid_drain_loses_nothing(
    tmp_path: Path, mosquitto_broker: MosquittoBroker
) -> None:
    bridge = Bridge(tmp_path / "bridge", mosquitto_broker.url)
    bridge.start()
    data = tmp_path / "kiosk"
    store = open_store(data)
    recorded = queue_events(store, N)
    store.close()
    cfg = kiosk_mqtt(mosquitto_broker.url, batch_size=50)
    counts: list[int] = []
    try:
        for point in _interrupt_points(random.Random(), 2):
            kiosk = KioskProcess(tmp_path, data, cfg, gate=point + AHEAD)
            kiosk.wait_line("connected")
            wait_until(lambda p=point: bridge.count() >= p, DRAIN_TIMEOUT, f"{point} stored")  # type: ignore[misc]
            counts.append(bridge.count())
            kiosk.kill()  # mid-drain, mid-write perhaps: the power cut
        kiosk = KioskProcess(tmp_path, data, cfg, mode="drain")
        assert kiosk.wait_exit(DRAIN_TIMEOUT + 60) == 0, kiosk.log()
    finally:
        bridge.close()
    assert all(c < N for c in counts), f"the kiosk was killed after the drain: {counts}"
    store = open_store(data)
    try:
        assert store.outbox_size() == 0
    finally:
        store.close()
    assert_stored_exactly_once(str(bridge.repo.engine.url), recorded)


class BridgeProcess:
    """`o2o-bridge run` from a directory made by `o2o-bridge init`."""

    def __init__(self, shop: Path) -> None:
        self.shop = shop
        self.port = free_port()
        self.log_path = shop / "bridge.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    str(BIN / "o2o-bridge"),
                    "run",
                    "--config",
                    "bridge.toml",
                    "--http",
                    f"127.0.0.1:{self.port}",
                ],
                cwd=self.shop,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        proc = self.proc
        wait_for_port("127.0.0.1", self.port, timeout=30, alive=lambda: proc.poll() is None)

        def mqtt_up() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                    return bool(json.loads(r.read()).get("mqtt_connected"))
            except OSError:
                return False

        wait_until(mqtt_up, what="the bridge to connect to the broker")

    def signal(self, sig: signal.Signals) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(30)


@pytest.fixture
def shop(tmp_path: Path, mosquitto_broker: MosquittoBroker) -> Iterator[Path]:
    proc = subprocess.run(
        [
            str(BIN / "o2o-bridge"),
            "init",
            "--dir",
            str(tmp_path / "shop"),
            "--store",
            STORE,
            "--kiosk",
            KIOSK,
            "--mqtt",
            mosquitto_broker.url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    yield tmp_path / "shop"


def test_bridge_restarted_mid_drain_loses_nothing(
    tmp_path: Path, shop: Path, mosquitto_broker: MosquittoBroker
) -> None:
    db = shop / "bridge.db"
    bridge = BridgeProcess(shop)
    bridge.start()
    store = gated_store(tmp_path / "kiosk")
    recorded = queue_events(store, N)
    sync = Sync(kiosk_mqtt(mosquitto_broker.url, batch_size=50), store, version="chaos")
    counts: list[int] = []
    try:
        store.gate = 0
        sync.start()
        points = _interrupt_points(random.Random(), 2)
        # First a crash (SIGKILL: nothing finished, nothing said), then a clean restart.
        for point, sig in zip(points, (signal.SIGKILL, signal.SIGTERM), strict=True):
            store.gate = point + AHEAD
            sync.notify()
            wait_until(lambda p=point: _count(db) >= p, DRAIN_TIMEOUT, f"{point} stored")  # type: ignore[misc]
            counts.append(_count(db))
            status = bridge.signal(sig)
            assert status == (0 if sig is signal.SIGTERM else -signal.SIGKILL), bridge.log_path
            bridge.start()
        store.gate = N
        sync.notify()
        assert sync.wait_drained(DRAIN_TIMEOUT), f"{store.outbox_size()} events never acked"
    finally:
        sync.stop()
        if bridge.proc is not None and bridge.proc.poll() is None:
            bridge.signal(signal.SIGTERM)
    assert all(c < N for c in counts), f"the bridge was stopped after the drain: {counts}"
    assert store.outbox_size() == 0
    store.close()
    assert_stored_exactly_once(f"sqlite:///{db}", recorded)
