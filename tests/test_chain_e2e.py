"""A shop's broker bridged to a central broker, where the cloud service runs, over an
uplink that goes down: the path of docs/chain.md, end to end, on real Mosquitto (TLS to
the production config), PostgreSQL and kiosk runtimes.

The kiosks talk to their shop's Mosquitto only. Its bridge connection (the filled-in
broker_config/bridge-to-central.conf.template) carries events up and acks and commands
down. While the uplink is cut the kiosks keep serving customers; when it returns, every
event is stored once, every outbox drains and every command is applied once.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

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
from tests.shop import bridge_cli, running_bridge
from tests.support import BROKER_CONFIG, MosquittoBroker
from tests.uplink import Uplink, uplink

STORE = "s1"
KIOSKS = [f"k{i:02d}" for i in range(1, 11)]
SCANS_EACH = 4  # per kiosk and phase


def wait_until(what: str, cond: Callable[[], bool], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"waited {timeout:.0f} s for {what}", pytrace=False)
        time.sleep(0.1)


def shop_broker(
    directory: Path, store: str, central: ProdBroker, link: Uplink, ca: Path
) -> MosquittoBroker:
    """The shop's own Mosquitto (the development config) with the bridge template filled
    in as an installer would, pointed at the central broker through `link`."""
    template = (BROKER_CONFIG / "bridge-to-central.conf.template").read_text()
    values = {
        "@STORE@": store,
        "@CENTRAL_HOST@": "localhost",  # the name in the central broker's certificate
        "@CENTRAL_PORT@": str(link.port),
        "@BRIDGE_USER@": store,
        "@BRIDGE_PASSWORD@": central.passwords[store],
        "@CA_FILE@": str(ca),
    }
    for key, value in values.items():
        template = template.replace(key, value)
    # Retry the uplink every 1-2 s rather than the template's 5-60 s back-off, so the test
    # does not wait a minute for the line to come back.
    template = re.sub(r"^restart_timeout .*$", "restart_timeout 1 2", template, flags=re.M)
    broker = MosquittoBroker.from_config(
        directory, transform=lambda text: text + "\n" + template, name=f"shop-{store}"
    )
    broker.start()
    return broker


@dataclass
class Chain:
    root: Path
    port: int
    repo: Repository
    issuer: Issuer
    kiosks: dict[str, KioskRuntime]
    link: Uplink


def _use_central(bridge_toml: Path, central: ProdBroker, ca: Path) -> None:
    text = bridge_toml.read_text()
    text = text.replace('# username = "bridge"', 'username = "bridge"')
    text = text.replace('# password = "..."', f'password = "{central.passwords["bridge"]}"')
    text = re.sub(r'# ca_file = "ca.crt".*', f'ca_file = "{ca}"', text)
    bridge_toml.write_text(text)


@pytest.fixture
def chain(tmp_path: Path, prod_tls: ProdBroker, certs: Path, pg_url: str) -> Iterator[Chain]:
    ca = certs / "ca.crt"
    repo = Repository.from_url(pg_url)
    repo.migrate()
    empty_tables(repo)
    root = tmp_path / "service"
    root.mkdir()
    kiosk_args = [a for k in KIOSKS for a in ("--kiosk", k)]
    central_url = f"mqtts://localhost:{prod_tls.port}"
    init = ["init", "--dir", str(root), "--store", STORE, *kiosk_args]
    bridge_cli(root, *init, "--mqtt", central_url, "--db", pg_url)
    _use_central(root / "bridge.toml", prod_tls, ca)
    key = load_pem_private_key((root / "signing.key").read_bytes(), password=None)
    issuer = Issuer(store=STORE, key=key)  # type: ignore[arg-type]
    with ExitStack() as stack:
        link = stack.enter_context(uplink(("127.0.0.1", prod_tls.port)))
        shop = shop_broker(tmp_path / "shop", STORE, prod_tls, link, ca)
        stack.callback(shop.stop)
        port = stack.enter_context(running_bridge(root))
        kiosks = {}
        for k in KIOSKS:
            path = root / f"kiosk-{k}.toml"
            path.write_text(path.read_text().replace(central_url, shop.url))
            runtime = KioskRuntime(load_config(path))
            runtime.start()
            stack.callback(runtime.stop)
            kiosks[k] = runtime
        yield Chain(root, port, repo, issuer, kiosks, link)
    repo.close()


def _scan_round(chain: Chain, phase: str) -> set[str]:
    """Every kiosk checks in SCANS_EACH new members at once; the ids of the events."""
    ids: set[str] = set()
    lock = threading.Lock()

    def door(name: str, kiosk: KioskRuntime) -> None:
        for i in range(SCANS_EACH):
            code = chain.issuer.code("m", f"{phase}-{name}-{i}", n=f"Guest {i}")
            recorded = kiosk.scan(code)
            assert recorded.event.type == EventType.CHECKIN  # type: ignore[union-attr]
            with lock:
                ids.add(recorded.event.id)  # type: ignore[union-attr]

    threads = [threading.Thread(target=door, args=kv) for kv in chain.kiosks.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(ids) == SCANS_EACH * len(chain.kiosks)
    return ids


def _stored(repo: Repository) -> tuple[int, int]:
    with repo.engine.connect() as conn:
        rows = conn.execute(
            select(func.count(), func.count(func.distinct(EventRow.id))).where(
                EventRow.store == STORE
            )
        ).one()
    return int(rows[0]), int(rows[1])


def _last_cmd(repo: Repository, kiosk: str) -> int:
    with repo.engine.connect() as conn:
        seq = conn.execute(
            select(func.max(CommandRow.seq)).where(
                CommandRow.store == STORE, CommandRow.kiosk == kiosk
            )
        ).scalar()
    return int(seq or 0)


def _post_preorder(chain: Chain, kiosk: str, order: str) -> None:
    import json
    import urllib.request

    token = (chain.root / "api.token").read_text().strip()
    req = urllib.request.Request(
        f"http://127.0.0.1:{chain.port}/api/v1/kiosks/{kiosk}/commands",
        method="POST",
        data=json.dumps({"name": "preorder.upsert", "data": {"order": order}}).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status in (200, 201, 202)


def test_a_shop_behind_a_cut_uplink_loses_nothing(chain: Chain) -> None:
    online = _scan_round(chain, "before")
    wait_until("the first round stored", lambda: _stored(chain.repo)[1] >= len(online))

    chain.link.cut()
    # The shop keeps serving: every check-in is decided and recorded at the door.
    offline = _scan_round(chain, "cut")
    for k in KIOSKS:
        _post_preorder(chain, k, f"order-{k}")  # the online shop takes preorders meanwhile
    assert _stored(chain.repo)[1] == len(online)  # nothing crossed the cut line
    assert all(k.outbox_size() > 0 for k in chain.kiosks.values())

    chain.link.restore()
    wait_until(
        "every kiosk outbox to drain",
        lambda: all(k.outbox_size() == 0 for k in chain.kiosks.values()),
        timeout=120,
    )
    total, distinct = _stored(chain.repo)
    assert distinct == total == len(online | offline)  # every event stored once
    for name, kiosk in chain.kiosks.items():
        wait_until(
            f"{name} to apply every command",
            lambda kiosk=kiosk, name=name: kiosk.db.last_cmd_seq == _last_cmd(chain.repo, name),
        )
        assert kiosk.db.preorder(f"order-{name}") is not None
