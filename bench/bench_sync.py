"""Kiosk-side figures: decision time per scan, durable write cost, and sync throughput.

Sync runs against real Mosquitto brokers and a real `o2o-bridge run` on SQLite. Beside
it, in the same run:

- the broker's own ceiling: a plain paho QoS 1 publisher to a subscriber, with no store,
  no acks and no database;
- a naive fire-and-forget paho publisher (QoS 1, never waits for anything, no outbox)
  sending the same events into the same bridge: its rate, and how many the bridge
  actually stored;
- both again through a broker with Mosquitto's DEFAULT queue limits (20 in flight, 1000
  queued), where the broker drops messages under a burst: the naive publisher loses
  events, our sync loses none (its outbox re-sends whatever was not acked).
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from devtools.devbroker import DevBroker
from kiosk.config import load_config
from kiosk.decisions import Decision
from kiosk.localdb import KioskDB
from kiosk.sync import Sync
from o2o_protocol import topics
from o2o_protocol.codes import verify_code
from o2o_protocol.messages import EventType, new_event_id
from o2o_protocol.timeutil import rfc3339

BIN = Path(sys.executable).parent
STORE = "bench"
TARGET_PER_S = 2000.0
TARGET_DRAIN_S = 10.0
#: Events recorded one by one (each its own fsync) to time the durable write.
RECORD_SAMPLE = 200
_LIMITS_RE = re.compile(r"^max_(queued_messages|queued_bytes|inflight_messages)\s.*$\n?", re.M)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def default_limits(text: str) -> str:
    """The dev config with its raised queue limits removed: Mosquitto's defaults apply."""
    return _LIMITS_RE.sub("", text)


class Shop:
    """A directory made by `o2o-bridge init`, and its `o2o-bridge run` while in `running()`."""

    def __init__(self, root: Path, broker: DevBroker) -> None:
        self.root = root
        subprocess.run(
            [
                str(BIN / "o2o-bridge"),
                "init",
                "--dir",
                str(root),
                "--store",
                STORE,
                "--kiosk",
                "k1",
                "--kiosk",
                "naive",
                "--mqtt",
                broker.url,
            ],
            check=True,
            capture_output=True,
        )
        self.db = root / "bridge.db"

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        port = DevBroker.free_port()
        bridge = subprocess.Popen(
            [
                str(BIN / "o2o-bridge"),
                "run",
                "--config",
                "bridge.toml",
                "--http",
                f"127.0.0.1:{port}",
            ],
            cwd=self.root,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            self._wait_healthy(port, bridge)
            yield
        finally:
            bridge.send_signal(signal.SIGTERM)
            bridge.wait(30)

    @staticmethod
    def _wait_healthy(port: int, bridge: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and bridge.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if json.loads(r.read()).get("mqtt_connected"):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("o2o-bridge run did not connect to the broker")

    def stored(self, kiosk: str) -> tuple[int, int]:
        """(rows, distinct seqs) the bridge stored for one kiosk."""
        with sqlite3.connect(self.db, timeout=30) as conn:
            rows, distinct = conn.execute(
                "SELECT count(*), count(DISTINCT seq) FROM events WHERE kiosk = ?", (kiosk,)
            ).fetchone()
        return int(rows), int(distinct)

    def wait_settled(self, kiosk: str, expected: int, quiet_s: float = 2.0) -> int:
        """Rows stored once the bridge has stopped storing more (or all arrived)."""
        last, since = -1, time.monotonic()
        while True:
            rows, _ = self.stored(kiosk)
            if rows >= expected:
                return rows
            if rows != last:
                last, since = rows, time.monotonic()
            elif time.monotonic() - since > quiet_s:
                return rows
            time.sleep(0.1)


def bench_decisions(shop: Path, n: int) -> dict[str, float]:
    """Verify + decide + durable record, no camera and no network."""
    from kiosk.runtime import KioskRuntime

    cfg = load_config(shop / "kiosk-k1.toml")
    codes = [_issue(shop, "member", f"m{i}") for i in range(5)]
    kiosk = KioskRuntime(cfg.model_copy(update={"data_dir": shop / "decide-data"}))
    verify_ms, scan_ms = [], []
    keys = cfg.public_keys()
    for i in range(n):
        text = codes[i % len(codes)]
        t0 = time.perf_counter()
        verify_code(text, keys, store=cfg.store, now=time.time())
        t1 = time.perf_counter()
        kiosk.scan(text)
        t2 = time.perf_counter()
        verify_ms.append((t1 - t0) * 1000)
        scan_ms.append((t2 - t1) * 1000)
    kiosk.stop()
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


def _queue(store: KioskDB, n: int) -> float:
    """Fill the outbox with n check-ins; returns ms per event for a one-by-one record.

    The first RECORD_SAMPLE are recorded as the door does (one fsync each); the rest
    share one durable write, so queueing ten thousand takes a second, not ninety.
    """
    sample = min(n, RECORD_SAMPLE)
    t0 = time.perf_counter()
    for i in range(sample):
        store.record(Decision(EventType.CHECKIN, {"member_id": f"m{i % 50}"}), time.time())
    per_event_ms = (time.perf_counter() - t0) * 1000 / sample
    with store._storage.batch():
        for i in range(sample, n):
            store.record(Decision(EventType.CHECKIN, {"member_id": f"m{i % 50}"}), time.time())
    return per_event_ms


def bench_drain(shop: Shop, data_dir: Path, n: int) -> dict[str, float]:
    """Queue n events in the outbox, then time until the bridge has acked them all."""
    cfg = load_config(shop.root / "kiosk-k1.toml")
    store = KioskDB(data_dir, store=cfg.store, kiosk=cfg.kiosk)
    record_ms = _queue(store, n)
    before, _ = shop.stored(cfg.kiosk)
    sync = Sync(cfg.mqtt, store, version="bench")
    t0 = time.perf_counter()
    sync.start()
    drained = sync.wait_drained(120)
    drain_s = time.perf_counter() - t0
    sync.stop()
    store.close()
    rows, distinct = shop.stored(cfg.kiosk)
    return {
        "events": n,
        "record_ms_per_event": record_ms,
        "drain_s": drain_s,
        "events_per_s": n / drain_s if drained else 0.0,
        "drained": float(drained),
        "stored": rows - before,
        "lost": n - (rows - before),
        "stored_twice": rows - distinct,
    }


def bench_naive(shop: Shop, broker: DevBroker, n: int) -> dict[str, float]:
    """A fire-and-forget paho publisher: QoS 1, one event per message, waits for nothing.

    Its rate is what it believes (until paho has handed off the last message); `stored`
    is what the bridge actually has once it stops storing more.
    """
    now = rfc3339(time.time())
    payloads = [
        json.dumps(
            {
                "id": new_event_id(),
                "seq": i + 1,
                "type": "checkin",
                "ts": now,
                "store": STORE,
                "kiosk": "naive",
                "data": {"member_id": f"m{i % 50}"},
            }
        ).encode()
        for i in range(n)
    ]
    before, _ = shop.stored("naive")
    topic = topics.kiosk_topic(STORE, "naive", topics.EVENTS)
    connected = threading.Event()
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-naive")
    pub.on_connect = lambda *_a: connected.set()
    pub.max_inflight_messages_set(1000)  # a burst, as a loop of publish() calls makes one
    pub.connect(broker.host, broker.port)
    pub.loop_start()
    connected.wait(10)
    t0 = time.perf_counter()
    infos = [pub.publish(topic, p, qos=1) for p in payloads]
    infos[-1].wait_for_publish(60)
    sent_s = time.perf_counter() - t0
    pub.loop_stop()
    pub.disconnect()
    stored = shop.wait_settled("naive", before + n) - before
    return {
        "events": n,
        "sent_s": sent_s,
        "per_s": n / sent_s,
        "stored": stored,
        "lost": n - stored,
        "lost_pct": 100.0 * (n - stored) / n,
    }


def bench_raw_broker(broker: DevBroker, n: int) -> dict[str, float]:
    """The ceiling: QoS 1 messages of the same size straight through the broker."""
    got = 0
    done = threading.Event()
    topic = topics.kiosk_topic("raw", "raw", topics.EVENTS)

    def on_message(c: mqtt.Client, u: Any, m: mqtt.MQTTMessage) -> None:
        nonlocal got
        got += 1
        if got >= n:
            done.set()

    subscribed = threading.Event()
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-sub")
    sub.on_message = on_message
    sub.on_subscribe = lambda *_a: subscribed.set()
    sub.connect(broker.host, broker.port)
    sub.subscribe(topic, qos=1)
    sub.loop_start()
    subscribed.wait(10)
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-pub")
    pub.max_inflight_messages_set(1000)
    pub.connect(broker.host, broker.port)
    pub.loop_start()
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


def _dropped_lines(broker: DevBroker) -> int:
    return broker.log_path.read_text(errors="replace").count("Outgoing messages are being dropped")


def run(quick: bool = False) -> dict[str, Any]:
    n = 2000 if quick else 10_000
    with tempfile.TemporaryDirectory(prefix="o2o-bench-") as tmp:
        root = Path(tmp)
        dev = DevBroker.start_on_free_port(root / "broker-dev")
        default = DevBroker.from_config(
            root / "broker-default", transform=default_limits, name="default"
        )
        default.start()
        try:
            shop = Shop(root / "shop", dev)
            with shop.running():
                decisions = bench_decisions(shop.root, 100 if quick else 300)
                drain = bench_drain(shop, root / "drain-data", n)
                naive = bench_naive(shop, dev, n)
            raw = bench_raw_broker(dev, n)
            shop_default = Shop(root / "shop-default", default)
            with shop_default.running():
                naive_default = bench_naive(shop_default, default, n)
                drain_default = bench_drain(shop_default, root / "drain-data-default", n)
            naive_default["broker_drop_warnings"] = _dropped_lines(default)
        finally:
            dev.stop()
            default.stop()
    return {
        "decisions": decisions,
        "drain": drain,
        "naive": naive,
        "raw_broker": raw,
        "default_limits": {"drain": drain_default, "naive": naive_default},
        "targets": {"events_per_s": TARGET_PER_S, "drain_s": TARGET_DRAIN_S},
    }


def _mark(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def print_table(r: dict[str, Any]) -> None:
    d, s, naive, raw = r["decisions"], r["drain"], r["naive"], r["raw_broker"]
    sd, nd = r["default_limits"]["drain"], r["default_limits"]["naive"]
    n = s["events"]
    print("Kiosk decisions and sync")
    print(f"  verify a code (median)                   {d['verify_ms_median']:8.3f} ms")
    print(
        f"  scan -> durable outcome (median, p95)    {d['scan_ms_median']:8.2f} ms "
        f"{d['scan_ms_p95']:8.2f} ms"
    )
    print(f"  record an event in the outbox (fsync)    {s['record_ms_per_event']:8.2f} ms")
    print("Sync kiosk -> bridge, end-to-end acks (dev broker, raised queue limits)")
    print(
        f"  drain {n} queued events                 {s['drain_s']:8.2f} s   "
        f"target <= {TARGET_DRAIN_S:.0f} s: {_mark(bool(s['drained']) and s['drain_s'] <= 10)}"
    )
    print(
        f"  events/s with acks                       {s['events_per_s']:8.0f}     "
        f"target >= {TARGET_PER_S:.0f}/s: {_mark(s['events_per_s'] >= TARGET_PER_S)}"
    )
    print(f"  lost / stored twice                      {s['lost']:8d} / {s['stored_twice']}")
    print(
        f"  naive fire-and-forget paho (QoS 1)       {naive['per_s']:8.0f} events/s, "
        f"lost {naive['lost']}/{n} ({naive['lost_pct']:.1f}%)"
    )
    print(
        f"  raw broker ceiling, QoS 1, no acks       {raw['per_s']:8.0f} msg/s "
        f"({raw['received']}/{raw['messages']} received)"
    )
    ratio_raw = s["events_per_s"] / raw["per_s"] if raw["per_s"] else 0.0
    ratio_naive = s["events_per_s"] / naive["per_s"] if naive["per_s"] else 0.0
    print(f"  ratio ours / raw broker                  {ratio_raw:8.2f}")
    print(f"  ratio ours / naive publisher             {ratio_naive:8.2f}")
    print(
        "Same events through a broker with Mosquitto's DEFAULT limits (20 in flight, 1000 queued)"
    )
    print(
        f"  naive fire-and-forget paho (QoS 1)       {nd['per_s']:8.0f} events/s, "
        f"lost {nd['lost']}/{n} ({nd['lost_pct']:.1f}%); broker logged "
        f"'Outgoing messages are being dropped' {nd['broker_drop_warnings']} times"
    )
    print(
        f"  our sync, acked                          {sd['events_per_s']:8.0f} events/s, "
        f"drained in {sd['drain_s']:.2f} s, lost {sd['lost']}/{n}, "
        f"stored twice {sd['stored_twice']}"
    )


if __name__ == "__main__":
    results = run(quick="--quick" in sys.argv)
    print_table(results)
