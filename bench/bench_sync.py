"""Kiosk-side figures: decision time per scan, durable write cost, and sync throughput.

Sync runs against a real Mosquitto (the project's dev config, on a free port) and a real
`o2o-bridge run` on SQLite; the baseline in the same run is the broker's own ceiling: a
plain paho QoS 1 publisher to a subscriber, with no store, no acks and no database.
"""

from __future__ import annotations

import json
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from cloud_bridge.devbroker import DevBroker
from kiosk.config import load_config
from kiosk.decisions import Decision
from kiosk.store import KioskStore
from kiosk.sync import Sync
from o2o_protocol import topics
from o2o_protocol.codes import verify_code
from o2o_protocol.messages import EventType

BIN = Path(sys.executable).parent


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def bench_decisions(shop: Path, n: int) -> dict[str, float]:
    """Verify + decide + durable record, no camera and no network."""
    from kiosk.app import Kiosk

    cfg = load_config(shop / "kiosk-k1.toml")
    codes = [_issue(shop, "member", f"m{i}") for i in range(5)]
    kiosk = Kiosk(cfg.model_copy(update={"data_dir": shop / "decide-data"}))
    verify_ms, scan_ms = [], []
    keys = cfg.public_keys()
    for i in range(n):
        text = codes[i % len(codes)]
        t0 = time.perf_counter()
        verify_code(text, keys, store=cfg.store, now=time.time())
        t1 = time.perf_counter()
        kiosk.handle_scan(text)
        t2 = time.perf_counter()
        verify_ms.append((t1 - t0) * 1000)
        scan_ms.append((t2 - t1) * 1000)
    kiosk.store.close()
    return {
        "verify_ms_median": statistics.median(verify_ms),
        "scan_ms_median": statistics.median(scan_ms),
        "scan_ms_p95": _pct(scan_ms, 0.95),
    }


def _issue(shop: Path, kind: str, id: str) -> str:
    out = subprocess.run(
        [str(BIN / "o2o-bridge"), "issue", kind, "--id", id, "--json", "--config", "bridge.toml"],
        cwd=shop,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return str(json.loads(out)["code"])


def bench_drain(shop: Path, broker: DevBroker, n: int) -> dict[str, float]:
    """Queue n events in the outbox, then time until the bridge has acked them all."""
    cfg = load_config(shop / "kiosk-k1.toml")
    store = KioskStore(shop / "drain-data", store=cfg.store, kiosk=cfg.kiosk)
    t0 = time.perf_counter()
    for i in range(n):
        store.record(Decision(EventType.CHECKIN, {"member_id": f"m{i % 50}"}), time.time())
    record_s = time.perf_counter() - t0
    sync = Sync(cfg.mqtt, store, version="bench")
    t1 = time.perf_counter()
    sync.start()
    drained = sync.wait_drained(120)
    drain_s = time.perf_counter() - t1
    sync.stop()
    store.close()
    return {
        "events": n,
        "record_ms_per_event": record_s * 1000 / n,
        "drain_s": drain_s,
        "events_per_s": n / drain_s if drained else 0.0,
        "drained": float(drained),
    }


def bench_raw_broker(broker: DevBroker, n: int) -> dict[str, float]:
    """The ceiling: QoS 1 messages of the same size straight through the broker."""
    got = 0
    done = threading.Event()
    topic = topics.kiosk_topic("bench", "raw", topics.EVENTS)

    def on_message(c: mqtt.Client, u: Any, m: mqtt.MQTTMessage) -> None:
        nonlocal got
        got += 1
        if got >= n:
            done.set()

    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-sub")
    sub.on_message = on_message
    sub.connect(broker.host, broker.port)
    sub.subscribe(topic, qos=1)
    sub.loop_start()
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-pub")
    pub.max_inflight_messages_set(1000)
    pub.connect(broker.host, broker.port)
    pub.loop_start()
    time.sleep(0.3)
    payload = b"x" * 400
    t0 = time.perf_counter()
    for _ in range(n):
        pub.publish(topic, payload, qos=1)
    done.wait(60)
    elapsed = time.perf_counter() - t0
    for c in (pub, sub):
        c.loop_stop()
        c.disconnect()
    return {"messages": n, "received": got, "per_s": got / elapsed}


def run(quick: bool = False) -> dict[str, Any]:
    n_drain = 1000 if quick else 5000
    with tempfile.TemporaryDirectory(prefix="o2o-bench-") as tmp:
        shop = Path(tmp)
        broker = DevBroker.start_on_free_port(shop / "broker")
        try:
            subprocess.run(
                [
                    str(BIN / "o2o-bridge"),
                    "init",
                    "--dir",
                    str(shop),
                    "--store",
                    "bench",
                    "--kiosk",
                    "k1",
                    "--mqtt",
                    broker.url,
                ],
                check=True,
                capture_output=True,
            )
            bridge = subprocess.Popen(
                [
                    str(BIN / "o2o-bridge"),
                    "run",
                    "--config",
                    "bridge.toml",
                    "--http",
                    f"127.0.0.1:{DevBroker.free_port()}",
                ],
                cwd=shop,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                time.sleep(2.0)
                decisions = bench_decisions(shop, 100 if quick else 300)
                drain = bench_drain(shop, broker, n_drain)
            finally:
                bridge.send_signal(signal.SIGTERM)
                bridge.wait(20)
            raw = bench_raw_broker(broker, n_drain)
        finally:
            broker.stop()
    return {"decisions": decisions, "drain": drain, "raw_broker": raw}


def print_table(r: dict[str, Any]) -> None:
    d, s, raw = r["decisions"], r["drain"], r["raw_broker"]
    print("Kiosk decisions and sync")
    print(f"  verify a code (median)                 {d['verify_ms_median']:8.3f} ms")
    print(
        f"  scan -> durable outcome (median, p95)  {d['scan_ms_median']:8.2f} ms "
        f"{d['scan_ms_p95']:8.2f} ms"
    )
    print(f"  record an event in the outbox          {s['record_ms_per_event']:8.2f} ms")
    print(
        f"  drain {s['events']} events to the bridge, acked {s['drain_s']:8.2f} s "
        f"= {s['events_per_s']:.0f} events/s"
    )
    print(
        f"  baseline: raw broker QoS 1, no acks    {raw['per_s']:8.0f} msg/s "
        f"({raw['received']}/{raw['messages']} received)"
    )
    ratio = s["events_per_s"] / raw["per_s"] if raw["per_s"] else 0.0
    print(f"  ratio ours/raw broker                  {ratio:8.2f}")


if __name__ == "__main__":
    results = run(quick="--quick" in sys.argv)
    print_table(results)
