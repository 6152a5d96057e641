"""Chain figures: events stored and acked per second into PostgreSQL, 1, 2 and 4 workers.

A real Mosquitto (the dev config), a real PostgreSQL, a service of 2 stores x 10 kiosks
made by `o2o-bridge init`, and N `o2o-bridge run --worker` processes sharing the ingest
(`shared_group`); the load is `o2o-bridge simulate --live` (cloud_bridge/simulate.py):
each kiosk with the kiosk's outbox discipline, a shop's mix of check-ins, joins,
redemptions and ratings, so the ledger's after-commit work is in it. Per row:

- full rate: more than the service can take, for `FULL_S`; events acked per second from
  the first event to the last ack (every one stored before its ack);
- the after-commit work (the ledger's member news) catching up, waited for (up to
  `LEDGER_WAIT_S`) so the next figure is the ingest's own;
- the end-to-end ack latency p50/p95/p99 at half the rate that row reached;
- the after-commit backlog (`after_commit_waiting` on /health) at its worst;
- afterwards, in the database: every event stored exactly once (rows = distinct ids =
  acked).

Baselines in the same run: the 1-worker row, and the broker's own ceiling (QoS 1
messages of the kiosks' full-rate batch size, publisher to subscriber, no store and no
acks).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from cloud_bridge.config import load_config
from cloud_bridge.simulate import TICK_S, live
from devtools.devbroker import DevBroker, find_program, free_port, wait_for_port
from o2o_protocol import topics

BIN = Path(sys.executable).parent
STORES = ("east", "west")
KIOSKS_PER_STORE = 10
WORKERS = (1, 2, 4)
TARGET_PER_S = 5000.0
#: Offered at "full rate": above what the service takes, so the backlog shows its ceiling.
FULL_RATE = 8000.0
FULL_S = 4.0
HALF_S = 4.0
#: How long the after-commit work (the ledger) may take to catch up before the half run.
LEDGER_WAIT_S = 10.0
#: How long a run waits for its last acks before it counts the rest as not acked.
DRAIN_S = 45.0
#: Events per message the simulated kiosks send at full rate (one tick's worth each).
CEILING_BATCH = max(1, round(FULL_RATE / (len(STORES) * KIOSKS_PER_STORE) * TICK_S))


# -- PostgreSQL ---------------------------------------------------------------------------


class _Cluster:
    """A throwaway cluster (initdb + pg_ctl, trust, loopback, fsync off), for a machine
    with PostgreSQL installed but no server running; as root it runs as `postgres`."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir, self.port = bin_dir, free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="o2o-pg-"))
        self.prefix: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.dir, user="postgres", group="postgres")
            self.prefix = [find_program("runuser") or "runuser", "-u", "postgres", "--"]

    def _run(self, *args: str) -> None:
        subprocess.run(
            [*self.prefix, *args], cwd=self.dir, check=True, capture_output=True, timeout=120
        )

    def start(self) -> str:
        data = str(self.dir / "data")
        self._run(str(self.bin_dir / "initdb"), "-D", data, "-U", "postgres", "-A", "trust",
                  "-E", "UTF8", "--no-locale", "--no-sync")  # fmt: skip
        options = f"-p {self.port} -h 127.0.0.1 -k {self.dir} -c fsync=off -c max_connections=200"
        self._run(str(self.bin_dir / "pg_ctl"), "-D", data, "-l", str(self.dir / "log"),
                  "-o", options, "-w", "-t", "60", "start")  # fmt: skip
        wait_for_port("127.0.0.1", self.port, timeout=10)
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "fast",
                      "-w", "stop")  # fmt: skip
        shutil.rmtree(self.dir, ignore_errors=True)


def _pg_bin_dir() -> Path | None:
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if Path(d, "initdb").exists() and Path(d, "pg_ctl").exists():
            return Path(d)
    initdb = find_program("initdb")
    return Path(initdb).parent if initdb else None


@contextlib.contextmanager
def postgres_server() -> Iterator[str | None]:
    """A server as the tests find one: `O2O_TEST_PG_URL`, 127.0.0.1:5432, else a
    throwaway cluster; None when there is none of them."""
    server = os.environ.get("O2O_TEST_PG_URL")
    if not server and os.environ.get("O2O_TEST_PG_FORCE_THROWAWAY") != "1":
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", 5432), 1):
            server = "postgresql://postgres@127.0.0.1:5432/postgres"
    if server:
        yield server
        return
    bin_dir = _pg_bin_dir()
    if bin_dir is None:
        yield None
        return
    cluster = _Cluster(bin_dir)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@contextlib.contextmanager
def database(server: str) -> Iterator[str]:
    """A fresh database on `server` (SQLAlchemy URL), dropped at the end."""
    import psycopg
    from sqlalchemy.engine import make_url

    admin = make_url(server).set(drivername="postgresql")
    dsn = admin.render_as_string(hide_password=False)
    name = f"o2o_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin.set(drivername="postgresql+psycopg", database=name).render_as_string(
            hide_password=False
        )
    finally:
        with (
            contextlib.suppress(Exception),
            psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn,
        ):
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def broker_ceiling(broker: DevBroker, events: int, batch: int) -> dict[str, float]:
    """The broker alone: QoS 1 messages of `batch` event-sized envelopes, one publisher
    to one subscriber, no store, no acks; events per second."""
    envelope = json.dumps(
        {"id": str(uuid.uuid4()), "seq": 1, "type": "checkin", "ts": "2026-12-02T05:00:00Z",
         "store": "east", "kiosk": "east1",
         "data": {"member_id": "sim-r0001", "visits": 3, "points_earned": 10, "points": 30,
                  "counted": True, "simulated": True}}
    )  # fmt: skip
    payload = ("[" + ",".join([envelope] * batch) + "]").encode()
    messages = max(1, events // batch)
    topic = topics.kiosk_topic("ceiling", "k", topics.EVENTS)
    got = 0
    done, subscribed = threading.Event(), threading.Event()

    def on_message(*_a: Any) -> None:
        nonlocal got
        got += 1
        if got >= messages:
            done.set()

    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"ceiling-sub-{uuid.uuid4().hex[:6]}")
    sub.on_message = on_message
    sub.on_subscribe = lambda *_a: subscribed.set()
    sub.connect(broker.host, broker.port)
    sub.subscribe(topic, qos=1)
    sub.loop_start()
    subscribed.wait(10)
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"ceiling-pub-{uuid.uuid4().hex[:6]}")
    pub.max_inflight_messages_set(1000)
    pub.connect(broker.host, broker.port)
    pub.loop_start()
    t0 = time.perf_counter()
    for _ in range(messages):
        pub.publish(topic, payload, qos=1)
    done.wait(120)
    elapsed = time.perf_counter() - t0
    for c in (pub, sub):
        c.loop_stop()
        c.disconnect()
    return {"batch": batch, "messages": messages, "received": got, "per_s": got * batch / elapsed}


# -- the service ----------------------------------------------------------------------------


def workers_supported() -> bool:
    """`o2o-bridge run --worker NAME` exists (several processes, each job done once)."""
    out = subprocess.run(
        [str(BIN / "o2o-bridge"), "run", "--help"], capture_output=True, text=True, check=False
    ).stdout
    return "--worker" in out


def make_service(root: Path, broker: DevBroker, db_url: str) -> Path:
    """`o2o-bridge init` for the first store, again for the second; the workers share the
    ingest by `shared_group` (the 1-worker row too, so the rows differ only in N)."""
    for store in STORES:
        kiosks = [f"{store}{i}" for i in range(1, KIOSKS_PER_STORE + 1)]
        argv = [str(BIN / "o2o-bridge"), "init", "--dir", str(root), "--store", store]
        argv += [a for k in kiosks for a in ("--kiosk", k)]
        argv += ["--mqtt", broker.url, "--timezone", "Europe/Paris"]
        if store == STORES[0]:
            argv += ["--db", db_url]
        subprocess.run(argv, check=True, capture_output=True)
    path = root / "bridge.toml"
    text = path.read_text()
    path.write_text(text.replace("[mqtt]\n", '[mqtt]\nshared_group = "bench"\n', 1))
    return path


@contextlib.contextmanager
def running(root: Path, n: int, named: bool) -> Iterator[list[int]]:
    """N `o2o-bridge run` processes (`--worker w<i>` when `named`), each healthy; yields
    their HTTP ports."""
    procs: list[subprocess.Popen[bytes]] = []
    ports: list[int] = []
    try:
        for i in range(n):
            port = free_port()
            argv = [str(BIN / "o2o-bridge"), "run", "--config", "bridge.toml"]
            argv += ["--http", f"127.0.0.1:{port}"]
            if named:
                argv += ["--worker", f"w{i + 1}"]
            with open(root / f"worker-{i + 1}.log", "wb") as log:
                procs.append(subprocess.Popen(argv, cwd=root, stdout=log, stderr=subprocess.STDOUT))
            ports.append(port)
        for port, proc in zip(ports, procs, strict=True):
            _wait_healthy(port, proc)
        yield ports
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


def _health(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
        body: dict[str, Any] = json.loads(r.read())
        return body


def _wait_healthy(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(OSError, ValueError):
            if _health(port).get("mqtt_connected"):
                return
        time.sleep(0.1)
    raise RuntimeError("o2o-bridge run did not connect to the broker")


def _find(doc: Any, key: str) -> list[float]:
    """Every numeric value of `key` anywhere in a /health document (one per store)."""
    if isinstance(doc, dict):
        found = [float(v) for k, v in doc.items() if k == key and isinstance(v, int | float)]
        return found + [x for v in doc.values() for x in _find(v, key)]
    if isinstance(doc, list):
        return [x for v in doc for x in _find(v, key)]
    return []


class _Lag:
    """Polls every worker's /health while a run goes: the after-commit backlog at its
    worst (events waiting, the oldest's age)."""

    def __init__(self, ports: list[int]) -> None:
        self.ports, self.waiting, self.oldest_s = ports, 0, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            for port in self.ports:
                with contextlib.suppress(OSError, ValueError):
                    doc = _health(port)
                    waiting = _find(doc, "after_commit_waiting")
                    self.waiting = max([self.waiting, *map(int, waiting)])
                    self.oldest_s = max([self.oldest_s, *_find(doc, "after_commit_oldest_s")])

    def __enter__(self) -> _Lag:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def wait_ledger(ports: list[int], timeout: float) -> tuple[float, int]:
    """Wait until no worker has after-commit work waiting: (seconds waited, events still
    waiting at the end, 0 when it caught up)."""
    started = time.monotonic()
    waiting = -1
    while time.monotonic() - started < timeout:
        waiting = 0
        for port in ports:
            with contextlib.suppress(OSError, ValueError):
                waiting += int(sum(_find(_health(port), "after_commit_waiting")))
        if waiting == 0:
            break
        time.sleep(0.25)
    return time.monotonic() - started, waiting


def exactly_once(db_url: str) -> dict[str, int]:
    """Rows, distinct ids and distinct (store, kiosk, seq) in the events table."""
    from sqlalchemy import create_engine, text

    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            rows, ids, seqs = conn.execute(
                text(
                    "SELECT count(*), count(DISTINCT id),"
                    " count(DISTINCT (store, kiosk, seq)) FROM events"
                )
            ).one()
    finally:
        engine.dispose()
    return {"rows": int(rows), "ids": int(ids), "seqs": int(seqs)}


def bench_workers(
    root: Path, broker: DevBroker, server: str, n: int, *, named: bool, full_s: float, half_s: float
) -> dict[str, Any]:
    with database(server) as db_url:
        path = make_service(root, broker, db_url)
        config = load_config(path)
        with running(root, n, named) as ports:
            with _Lag(ports) as lag:
                full = live(
                    config, path, kiosks_per_store=KIOSKS_PER_STORE, rate=FULL_RATE,
                    seconds=full_s, seed=n, drain_timeout=DRAIN_S,
                )  # fmt: skip
            # The half-rate latency is the ingest's, not a backlog's: the ledger catches up.
            ledger_s, ledger_left = wait_ledger(ports, LEDGER_WAIT_S)
            half_rate = max(100.0, round(full.acked_per_s / 2, -1))
            half = live(
                config, path, kiosks_per_store=KIOSKS_PER_STORE, rate=half_rate,
                seconds=half_s, seed=100 + n, drain_timeout=DRAIN_S,
            )  # fmt: skip
        once = exactly_once(db_url)
    acked = full.acked + half.acked
    return {
        "workers": n,
        "full": full.as_dict(),
        "half": half.as_dict(),
        "half_rate": half_rate,
        "after_commit_waiting_max": lag.waiting,
        "after_commit_oldest_s_max": round(lag.oldest_s, 1),
        "ledger_caught_up_s": round(ledger_s, 1),
        "ledger_left": ledger_left,
        "db": once,
        "acked": acked,
        "unacked": full.unacked + half.unacked,
        # No event twice, and every acked one stored (one not acked may be stored too).
        "exactly_once": once["rows"] == once["ids"] == once["seqs"]
        and full.stored_twice == half.stored_twice == 0
        and full.stored >= full.acked
        and half.stored >= half.acked,
    }


def run(quick: bool = False) -> dict[str, Any]:
    full_s, half_s = (3.0, 3.0) if quick else (FULL_S, HALF_S)
    can_split = workers_supported()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="o2o-chain-") as tmp, postgres_server() as server:
        if server is None:
            return {"skipped": "no PostgreSQL server or installation"}
        broker = DevBroker.start_on_free_port(Path(tmp) / "broker")
        try:
            raw = broker_ceiling(broker, 20_000 if quick else 60_000, CEILING_BATCH)
            for n in WORKERS:
                if n > 1 and not can_split:
                    rows.append({"workers": n, "skipped": "`o2o-bridge run --worker` missing"})
                    continue
                root = Path(tmp) / f"svc-{n}"
                print(f"  (chain: {n} worker(s)...)", file=sys.stderr, flush=True)
                rows.append(
                    bench_workers(
                        root, broker, server, n, named=can_split, full_s=full_s, half_s=half_s
                    )
                )
        finally:
            broker.stop()
    return {
        "stores": len(STORES),
        "kiosks": len(STORES) * KIOSKS_PER_STORE,
        "offered_full": FULL_RATE,
        "full_s": full_s,
        "half_s": half_s,
        "raw_broker": raw,
        "rows": rows,
        "target_per_s": TARGET_PER_S,
    }


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}" if base else "-"


def print_table(r: dict[str, Any]) -> None:
    if "skipped" in r:
        print(f"Chain: skipped ({r['skipped']})")
        return
    print(
        f"Chain: {r['stores']} stores x {r['kiosks'] // r['stores']} kiosks -> Mosquitto -> "
        f"N workers -> PostgreSQL, end-to-end acks ({r['full_s']:g}s offered "
        f"{r['offered_full']:.0f}/s, then {r['half_s']:g}s at half the rate reached)"
    )
    print(
        f"  {'workers':>7} {'acked/s':>8} {'x 1 wkr':>8} {'x broker':>8} {'half at':>8} "
        f"{'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'ledger lag':>12} {'once':>5}"
    )
    raw = r["raw_broker"]["per_s"]
    base = next((x["full"]["acked_per_s"] for x in r["rows"] if "full" in x), 0.0)
    for x in r["rows"]:
        if "skipped" in x:
            print(f"  {x['workers']:>7}  skipped: {x['skipped']}")
            continue
        f, h = x["full"], x["half"]
        lat = [_ms(h["latency_ms"][p]) for p in ("p50", "p95", "p99")]
        lag = f"{x['after_commit_waiting_max']} / {x['after_commit_oldest_s_max']:.1f}s"
        print(
            f"  {x['workers']:>7} {f['acked_per_s']:>8.0f} {_ratio(f['acked_per_s'], base):>8} "
            f"{_ratio(f['acked_per_s'], raw):>8} {x['half_rate']:>7.0f}/s {lat[0]:>7} "
            f"{lat[1]:>7} {lat[2]:>7} {lag:>12} {'yes' if x['exactly_once'] else 'NO':>5}"
        )
    print(
        f"  broker ceiling, QoS 1, {r['raw_broker']['batch']} events per message (as the kiosks "
        f"send at full rate), no store, no acks: {raw:.0f} events/s"
    )
    print("  ledger lag = the after-commit work's events waiting / the oldest's age, at worst")
    for x in r["rows"]:
        if "full" in x:
            left = x["ledger_left"]
            print(
                f"  {x['workers']} worker(s): the ledger's backlog "
                + (
                    f"caught up {x['ledger_caught_up_s']:.1f}s after the full-rate run"
                    if left == 0
                    else f"still {left} events after {x['ledger_caught_up_s']:.0f}s"
                )
            )
    two = next((x for x in r["rows"] if x.get("workers") == 2 and "full" in x), None)
    if two is None:
        print(f"  target >= {r['target_per_s']:.0f}/s with 2 workers: not measured (1 worker only)")
    else:
        ok = two["full"]["acked_per_s"] >= r["target_per_s"]
        print(
            f"  target >= {r['target_per_s']:.0f}/s with 2 workers: "
            f"{'ok' if ok else 'MISSED'} ({two['full']['acked_per_s']:.0f}/s)"
        )
    for x in r["rows"]:
        if "db" in x:
            d = x["db"]
            print(
                f"  {x['workers']} worker(s): acked {x['acked']} (not acked after "
                f"{DRAIN_S:.0f}s: {x['unacked']}; re-sent by the kiosks "
                f"{x['full']['resent'] + x['half']['resent']}), in the database {d['rows']} "
                f"rows, {d['ids']} distinct ids, {d['seqs']} distinct (store, kiosk, seq)"
            )


if __name__ == "__main__":
    results = run(quick="--quick" in sys.argv)
    if "--json" in sys.argv:
        print(json.dumps(results, indent=2))
    print_table(results)
