"""Two shops, each with its own broker bridged to a central broker where two workers of
one cloud service serve both stores: the path of docs/chain.md, end to end, on real
Mosquitto (the production config centrally), PostgreSQL and 20 kiosk runtimes.

The kiosks talk to their shop's Mosquitto only. Its bridge connection (the filled-in
broker_config/bridge-to-central.conf.template) carries events up and acks and commands
down. One worker is SIGKILLed mid-run and one shop's uplink is cut once: its kiosks keep
serving customers; when it returns, every event is stored once, every outbox drains,
every command is applied, and each store still gets one stats document per interval.
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from sqlalchemy import func, select

from cloud_bridge.db import Repository
from cloud_bridge.db.tables import CommandRow, EventRow
from kiosk.config import load_config
from kiosk.runtime import KioskRuntime
from o2o_protocol.messages import EventType
from tests.conftest import empty_tables
from tests.keys import Issuer
from tests.prod_broker import ProdBroker
from tests.shop import bridge_cli
from tests.support import BROKER_CONFIG, MosquittoBroker
from tests.test_workers import STATS_INTERVAL_S, Worker
from tests.uplink import Uplink, uplink

STORES = ("s1", "s2")
KIOSKS = {store: [f"{store}k{i:02d}" for i in range(1, 11)] for store in STORES}
SCANS_EACH = 4  # per kiosk and phase


def wait_until(what: str, cond: Callable[[], bool], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"waited {timeout:.0f} s for {what}", pytrace=False)
        time.sleep(0.1)


def shop_broker(directory: Path, store: str, central: ProdBroker, link: Uplink) -> MosquittoBroker:
    """The shop's own Mosquitto (the development config) with the bridge template filled
    in as an installer would, pointed at the central broker through `link`."""
    template = (BROKER_CONFIG / "bridge-to-central.conf.template").read_text()
    values = {
        "@STORE@": store,
        "@CENTRAL_HOST@": "localhost",  # the name in the central broker's certificate
        "@CENTRAL_PORT@": str(link.port),
        "@BRIDGE_USER@": store,
        "@BRIDGE_PASSWORD@": central.passwords[store],
        "@CA_FILE@": "",
    }
    for key, value in values.items():
        template = template.replace(key, value)
    # The central broker here is the production config on a plain listener: Mosquitto
    # 2.0.11's TLS bridge can stop retrying after failed attempts (upstream #2099; see
    # docs/chain.md). test_broker_config covers the template's TLS link itself.
    template = re.sub(r"^bridge_(cafile|insecure|tls_version) .*$\n", "", template, flags=re.M)
    # Retry the uplink every 1-2 s rather than the template's 5-60 s back-off, and notice a
    # dead link within seconds rather than a keepalive minute (Mosquitto also waits out the
    # keepalive after a failed attempt), so the test does not wait minutes for the line.
    template = re.sub(r"^restart_timeout .*$", "restart_timeout 1 2", template, flags=re.M)
    template = re.sub(r"^keepalive_interval .*$", "keepalive_interval 5", template, flags=re.M)
    broker = MosquittoBroker.from_config(
        directory, transform=lambda text: text + "\n" + template, name=f"shop-{store}"
    )
    broker.start()
    return broker


@dataclass
class Shop:
    store: str
    issuer: Issuer
    kiosks: dict[str, KioskRuntime]
    link: Uplink


@dataclass
class Chain:
    root: Path
    workers: dict[str, Worker]
    repo: Repository
    shops: dict[str, Shop]
    stats: StatsWatch


class StatsWatch:
    """The stats documents a dashboard gets from the central broker, with when they came."""

    def __init__(self, central: ProdBroker) -> None:
        self.got: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="t-dashboard")
        self.client.username_pw_set("dashboard", central.passwords["dashboard"])
        self.client.on_message = self._on_message
        self.client.connect("localhost", central.port)
        self.client.subscribe("o2o/v1/+/stats", qos=1)
        self.client.loop_start()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.got.append((time.monotonic(), msg.topic))

    def times(self, store: str, since: float) -> list[float]:
        with self._lock:
            return [t for t, topic in self.got if topic == f"o2o/v1/{store}/stats" and t >= since]

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _use_central(bridge_toml: Path, central: ProdBroker) -> None:
    text = bridge_toml.read_text()
    text = text.replace('# username = "bridge"', 'username = "bridge"')
    text = text.replace('# password = "..."', f'password = "{central.passwords["bridge"]}"')
    bridge_toml.write_text(text)


@pytest.fixture
def chain(tmp_path: Path, prod: ProdBroker, pg_url: str) -> Iterator[Chain]:
    repo = Repository.from_url(pg_url)
    repo.migrate()
    empty_tables(repo)
    root = tmp_path / "service"
    root.mkdir()
    central_url = f"mqtt://localhost:{prod.port}"
    for n, store in enumerate(STORES):
        kiosk_args = [a for k in KIOSKS[store] for a in ("--kiosk", k)]
        init = ["init", "--dir", str(root), "--store", store, *kiosk_args]
        bridge_cli(root, *init, *(["--mqtt", central_url, "--db", pg_url] if n == 0 else []))
    _use_central(root / "bridge.toml", prod)
    with ExitStack() as stack:
        shops: dict[str, Shop] = {}
        brokers = {}
        for store in STORES:
            link = stack.enter_context(uplink(("127.0.0.1", prod.port)))
            broker = shop_broker(tmp_path / f"shop-{store}", store, prod, link)
            stack.callback(broker.stop)
            brokers[store] = broker
            key_file = "signing.key" if store == STORES[0] else f"signing-{store}.key"
            key = load_pem_private_key((root / key_file).read_bytes(), password=None)
            issuer = Issuer(store=store, key=key)  # type: ignore[arg-type]
            shops[store] = Shop(store, issuer, {}, link)
        workers = {name: Worker(root, name) for name in ("w1", "w2")}
        for worker in workers.values():
            stack.callback(worker.close)
        stats = StatsWatch(prod)
        stack.callback(stats.stop)
        for store in STORES:
            for k in KIOSKS[store]:
                path = root / f"kiosk-{k}.toml"
                path.write_text(path.read_text().replace(central_url, brokers[store].url))
                runtime = KioskRuntime(load_config(path))
                runtime.start()
                stack.callback(runtime.stop)
                shops[store].kiosks[k] = runtime
        yield Chain(root, workers, repo, shops, stats)
    repo.close()


def _scan_round(shop: Shop, phase: str) -> set[str]:
    """Every kiosk of the shop checks in SCANS_EACH new members at once; the event ids."""
    ids: set[str] = set()
    lock = threading.Lock()

    def door(name: str, kiosk: KioskRuntime) -> None:
        for i in range(SCANS_EACH):
            code = shop.issuer.code("m", f"{phase}-{name}-{i}", n=f"Guest {i}")
            recorded = kiosk.scan(code)
            assert recorded.event.type == EventType.CHECKIN  # type: ignore[union-attr]
            with lock:
                ids.add(recorded.event.id)  # type: ignore[union-attr]

    threads = [threading.Thread(target=door, args=kv) for kv in shop.kiosks.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(ids) == SCANS_EACH * len(shop.kiosks)
    return ids


def _stored(repo: Repository, store: str) -> tuple[int, int]:
    """Events stored for the store, and how many distinct ids among them."""
    with repo.engine.connect() as conn:
        rows = conn.execute(
            select(func.count(), func.count(func.distinct(EventRow.id))).where(
                EventRow.store == store
            )
        ).one()
    return int(rows[0]), int(rows[1])


def _last_cmd(repo: Repository, store: str, kiosk: str) -> int:
    with repo.engine.connect() as conn:
        seq = conn.execute(
            select(func.max(CommandRow.seq)).where(
                CommandRow.store == store, CommandRow.kiosk == kiosk
            )
        ).scalar()
    return int(seq or 0)


def _post_preorder(chain: Chain, store: str, kiosk: str, order: str) -> None:
    token_file = "api.token" if store == STORES[0] else f"api-{store}.token"
    token = (chain.root / token_file).read_text().strip()
    port = next(w.port for w in chain.workers.values() if w.proc.poll() is None)
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/v1/kiosks/{kiosk}/commands",
        method="POST",
        data=json.dumps({"name": "preorder.upsert", "data": {"order": order}}).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status in (200, 201, 202)


def test_shops_behind_a_cut_uplink_lose_nothing(chain: Chain) -> None:
    cut = chain.shops["s1"]
    online = {store: _scan_round(shop, "before") for store, shop in chain.shops.items()}
    for store, ids in online.items():
        stored_all = len(ids)
        wait_until(
            f"{store}'s first round stored",
            lambda s=store, n=stored_all: _stored(chain.repo, s)[1] >= n,  # type: ignore[misc]
        )

    # One worker dies mid-run, holding whatever it held: the other carries on alone.
    chain.workers["w1"].kill()
    survivor = chain.workers["w2"]
    wait_until(
        "the surviving worker to hold every store's lease",
        lambda: all(survivor.holds(store) for store in STORES),
    )

    cut.link.cut()  # shop 1's internet goes down; shop 2's stays up
    during = {store: _scan_round(shop, "cut") for store, shop in chain.shops.items()}
    for store, shop in chain.shops.items():
        for k in shop.kiosks:  # the online shop takes preorders for both meanwhile
            _post_preorder(chain, store, k, f"order-{k}")
    # Shop 1 keeps serving at the door, and nothing of it crosses the cut line...
    assert _stored(chain.repo, "s1")[1] == len(online["s1"])
    assert all(k.outbox_size() > 0 for k in cut.kiosks.values())
    # ...while shop 2 is not held back by it.
    want = len(online["s2"] | during["s2"])
    wait_until(
        "shop 2 stored while shop 1 is cut off", lambda: _stored(chain.repo, "s2")[1] == want
    )

    cut.link.restore()
    every = [k for shop in chain.shops.values() for k in shop.kiosks.values()]
    wait_until("every kiosk outbox to drain", lambda: all(k.outbox_size() == 0 for k in every), 120)
    for store in STORES:
        total, distinct = _stored(chain.repo, store)
        assert distinct == total == len(online[store] | during[store])  # each stored once
    for store, shop in chain.shops.items():
        for name, kiosk in shop.kiosks.items():
            wait_until(
                f"{name} to apply every command",
                lambda k=kiosk, s=store, n=name: k.db.last_cmd_seq == _last_cmd(chain.repo, s, n),
            )
            assert kiosk.db.preorder(f"order-{name}") is not None
    # Each store still gets one stats document per interval, from the one lease holder.
    since = time.monotonic()
    window = 4.0
    for store in STORES:
        wait_until(
            f"{window:.0f} s of {store}'s stats",
            lambda s=store: any(t >= since + window for t in chain.stats.times(s, since)),
            window + 15,
        )
        times = [t for t in chain.stats.times(store, since) if t < since + window]
        assert 1 <= len(times) <= window / STATS_INTERVAL_S + 1, (store, times)
