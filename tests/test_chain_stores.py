"""One service, many stores (docs/chain.md), black-box: `o2o-bridge init` twice in one
directory, `o2o-bridge run` on a real Mosquitto and on SQLite and PostgreSQL, kiosks of
both stores sending over MQTT, and what each token sees over real HTTP."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from cloud_bridge.cli import main
from cloud_bridge.config import load_config
from cloud_bridge.db import Repository
from o2o_protocol.codes import Code, load_public_key, verify_code
from o2o_protocol.config_file import MqttConnection
from o2o_protocol.messages import Event, dumps, new_event_id, parse_ack
from o2o_protocol.mqtt import MqttLink
from o2o_protocol.timeutil import rfc3339
from o2o_protocol.topics import ACKS, EVENTS, kiosk_topic
from tests.conftest import empty_tables
from tests.prod_broker import ProdBroker
from tests.shop import bridge_cli, issue, running_bridge, stored_events, tool
from tests.support import MosquittoBroker, missing_component
from tests.test_broker_config import Connect, connect  # noqa: F401  (the fixture)
from tests.test_dashboard import CHROMIUM, _dump_dom, _parse, _screenshot

# Fourteen hours ahead of UTC and eleven behind: the two shops are never on the same day.
EAST, WEST = "Pacific/Kiritimati", "Pacific/Pago_Pago"
FIRST_STORE_FILES = (
    "signing.key",
    "api.token",
    "dashboard.token",
    "kiosk-k1.toml",
    "kiosk-k2.toml",
)


def _http(
    port: int, path: str, token: str | None = None, body: Any = None, method: str | None = None
) -> tuple[int, Any]:
    """(status, JSON or text) of one request to the running bridge."""
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=None if body is None else json.dumps(body).encode(),
        method=method or ("GET" if body is None else "POST"),
    )
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    if body is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            status, raw, kind = r.status, r.read(), r.headers.get("content-type", "")
    except urllib.error.HTTPError as exc:
        status, raw, kind = exc.code, exc.read(), exc.headers.get("content-type", "")
    return status, json.loads(raw) if "json" in kind else raw.decode()


class Kiosk:
    """A kiosk's side of the protocol: event batches out on its topic, acks back."""

    def __init__(self, url: str, store: str, kiosk: str) -> None:
        self.store, self.kiosk, self.seq = store, kiosk, 0
        self.acked: set[str] = set()
        self._cond = threading.Condition()
        self.link = MqttLink(MqttConnection(url=url), client_id=f"t-{store}-{kiosk}")
        self.link.subscribe([kiosk_topic(store, kiosk, ACKS)], self._on_ack)
        self.link.start()
        assert self.link.wait_subscribed(20)

    def _on_ack(self, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.acked.update(parse_ack(msg.payload).ids)
            self._cond.notify_all()

    def checkins(self, n: int) -> list[str]:
        """`n` counted check-ins, now; returns once the bridge acked every one."""
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
                    data={"name": f"guest of {self.store}", "counted": True, "points_earned": 10},
                )
            )
        self.link.publish(kiosk_topic(self.store, self.kiosk, EVENTS), dumps(events), qos=1)
        ids = {e.id for e in events}
        with self._cond:
            assert self._cond.wait_for(lambda: ids <= self.acked, 30), "not acked"
        return sorted(ids)

    def stop(self) -> None:
        self.link.stop()


def _init_two_stores(shop: Path, mqtt_url: str, db_url: str | None) -> dict[str, bytes]:
    """`init` a store, then `init` a second one into the same directory; returns the first
    store's files as they were before the second came."""
    shop.mkdir(parents=True, exist_ok=True)
    db = ["--db", db_url] if db_url else []
    first = ["--store", "s1", "--kiosk", "k1", "--kiosk", "k2", "--timezone", EAST]
    bridge_cli(shop, "init", "--dir", str(shop), *first, "--mqtt", mqtt_url, *db)
    before = {name: (shop / name).read_bytes() for name in ("bridge.toml", *FIRST_STORE_FILES)}
    out = bridge_cli(shop, "init", "--dir", str(shop), "--store", "s2", "--kiosk", "a1")
    assert f"added store s2 to {shop / 'bridge.toml'}" in out
    assert "chain.token" in out and "reads every store" in out
    out = bridge_cli(shop, "init", "--dir", str(shop), "--store", "s3", "--timezone", WEST)
    assert "chain.token" not in out  # written once, with the second store
    return before


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    if request.param == "sqlite":
        yield None
        return
    url: str = request.getfixturevalue("pg_url")
    repo = Repository.from_url(url)
    repo.migrate()
    empty_tables(repo)
    repo.close()
    yield url


def test_init_adds_a_store_and_keeps_the_first_stores_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shop = tmp_path / "shop"
    before = _init_two_stores(shop, "mqtt://127.0.0.1:1883", None)
    for name in FIRST_STORE_FILES:
        assert (shop / name).read_bytes() == before[name], name
    text = (shop / "bridge.toml").read_bytes()
    old = before["bridge.toml"]
    assert text.startswith(old) and len(text) > len(old)  # appended, comments kept
    added = text[len(old) :].decode()
    assert "\n[stores.s2]\n" in added and "\n[stores.s3]\n" in added and "\n[chain]\n" in added
    for name in ("signing-s2.key", "api-s2.token", "dashboard-s2.token", "chain.token"):
        assert (shop / name).stat().st_mode & 0o777 == 0o600, name

    config = load_config(shop / "bridge.toml")
    assert config.store_ids() == ["s1", "s2", "s3"]
    s1, s2, s3 = config.stores()
    assert (s1.timezone, s2.timezone, s3.timezone) == (EAST, None, WEST)
    assert (s1.kiosks, s2.kiosks, s3.kiosks) == (["k1", "k2"], ["a1"], ["door1"])
    assert [v.client_id() for v in config.stores()] == [
        "o2o-bridge-s1",
        "o2o-bridge-s2",
        "o2o-bridge-s3",
    ]
    # The new store's kiosk file: its store, the service's broker, its own key only.
    kiosk = (shop / "kiosk-a1.toml").read_text()
    assert 'store = "s2"' in kiosk and 'url = "mqtt://127.0.0.1:1883"' in kiosk
    s2_key = _public_keys(shop / "kiosk-a1.toml")
    assert s2_key.keys().isdisjoint(_public_keys(shop / "kiosk-k1.toml"))

    # A store that is already there, or a kiosk id another store has: one line, status 2,
    # nothing written.
    capsys.readouterr()
    for args in (["--store", "s2"], ["--store", "s1"], ["--store", "s4", "--kiosk", "k2"]):
        snapshot = {p.name: p.read_bytes() for p in shop.iterdir()}
        assert main(["init", "--dir", str(shop), *args]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("o2o-bridge: error: "), err
        assert {p.name: p.read_bytes() for p in shop.iterdir()} == snapshot
    assert "already a kiosk of store 's1'" in err


def _public_keys(kiosk_file: Path) -> dict[str, Any]:
    import tomllib

    keys: dict[str, str] = tomllib.loads(kiosk_file.read_text())["keys"]
    return {kid: load_public_key(v) for kid, v in keys.items()}


def _signed_for(token: str, kiosk_file: Path, store: str) -> bool:
    """A kiosk with this file (its store's public keys) would accept the code."""
    return isinstance(
        verify_code(token, _public_keys(kiosk_file), store=store, now=time.time()), Code
    )


def _token(shop: Path, name: str) -> str:
    return (shop / name).read_text().strip()


def test_two_stores_in_one_service(
    tmp_path: Path, mosquitto_broker: MosquittoBroker, db_url: str | None
) -> None:
    shop = tmp_path / "shop"
    _init_two_stores(shop, mosquitto_broker.url, db_url)
    s1, s1_read, s2 = (_token(shop, n) for n in ("api.token", "dashboard.token", "api-s2.token"))
    chain = _token(shop, "chain.token")

    retained: dict[str, Any] = {}
    watcher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="t-watch")
    watcher.on_message = lambda _c, _u, m: retained.__setitem__(m.topic, m.payload)
    watcher.connect(mosquitto_broker.host, mosquitto_broker.port)
    watcher.subscribe([("o2o/v1/+/stats", 1), ("homeassistant/device/+/config", 1)])
    watcher.loop_start()
    kiosks: list[Kiosk] = []
    try:
        with running_bridge(shop) as port:
            status, health = _http(port, "/health")
            assert status == 200 and set(health["stores"]) == {"s1", "s2", "s3"}, health
            assert all(h["mqtt_connected"] for h in health["stores"].values())

            k1, k2, a1 = (
                Kiosk(mosquitto_broker.url, s, k)
                for s, k in [("s1", "k1"), ("s1", "k2"), ("s2", "a1")]
            )
            kiosks += [k1, k2, a1]
            mine = {"s1": k1.checkins(3) + k2.checkins(1), "s2": a1.checkins(2)}

            # Each store's token sees its own events only, whatever it asks for.
            for token, store in ((s1, "s1"), (s1_read, "s1"), (s2, "s2")):
                status, body = _http(port, "/api/v1/events?limit=100", token)
                assert status == 200
                assert sorted(e["id"] for e in body["events"]) == sorted(mine[store])
            status, body = _http(port, "/api/v1/events?store=s2", s1)
            assert status == 403 and "s2" not in json.dumps(body)
            status, body = _http(port, "/api/v1/stats", s2)
            assert (status, body["store"], body["checkins"]) == (200, "s2", 2)

            # Members: one store's member is unknown to the other.
            status, _ = _http(port, "/api/v1/members", s2, {"id": "m-only-s2", "name": "Bo"})
            assert status in (200, 201)
            assert _http(port, "/api/v1/members/m-only-s2", s1)[0] == 404
            points = {"delta": 5, "reason": "gift"}
            assert _http(port, "/api/v1/members/m-only-s2/points", s1, points)[0] == 404
            assert _http(port, "/api/v1/members/m-only-s2", s2)[1]["name"] == "Bo"

            # Insights: each store's own check-ins.
            for token, n in ((s1, 4), (s2, 2)):
                status, ins = _http(port, "/api/v1/insights", token)
                assert status == 200, ins
                assert sum(map(sum, ins["checkins_by_weekday_hour"])) == n

            # Codes are signed with the store's own key.
            status, code = _http(port, "/api/v1/codes", s2, {"type": "member", "name": "Cy"})
            assert status == 201
            assert _signed_for(code["code"], shop / "kiosk-a1.toml", "s2")
            assert not _signed_for(code["code"], shop / "kiosk-k1.toml", "s2")

            # The chain token: every store's figures, each on its own day, and the total.
            status, figures = _http(port, "/api/v1/chain", chain)
            assert status == 200, figures
            by_store = {s["store"]: s for s in figures["stores"]}
            assert list(by_store) == ["s1", "s2", "s3"]
            assert [by_store[s]["checkins"] for s in by_store] == [4, 2, 0]
            assert (
                figures["total"]["checkins"] == 6 == sum(s["checkins"] for s in by_store.values())
            )
            assert figures["total"]["events"] == 6
            assert by_store["s1"]["day"] != by_store["s3"]["day"]  # 25 hours apart
            for token in (s1, s2):
                assert _http(port, "/api/v1/chain", token)[0] == 403
            # ... any read of one store with ?store=, and nothing it could change.
            status, body = _http(port, "/api/v1/events?store=s2", chain)
            assert status == 200 and sorted(e["id"] for e in body["events"]) == sorted(mine["s2"])
            assert _http(port, "/api/v1/stats?store=s1", chain)[1]["checkins"] == 4
            assert _http(port, "/api/v1/members/m-only-s2?store=s2", chain)[0] == 200
            assert _http(port, "/api/v1/members/m-only-s2?store=s1", chain)[0] == 404
            assert _http(port, "/api/v1/events", chain)[0] == 422
            assert _http(port, "/api/v1/events?store=nowhere", chain)[0] == 404
            write = {"type": "member", "name": "Eve"}
            assert _http(port, "/api/v1/codes?store=s1", chain, write)[0] == 403
            assert _http(port, "/api/v1/members?store=s2", chain, {"id": "m-x"})[0] == 403
            assert _http(port, "/api/v1/events", "not-a-token-of-this-service")[0] == 401
            assert _http(port, "/api/v1/events")[0] == 401

            # Pages without a token: the member page of the store the code names.
            for store in ("s1", "s2"):
                token = issue(shop, "member", "--store", store, "--name", f"Member of {store}")
                status, page = _http(port, f"/m/{token}")
                assert status == 200 and f"Member of {store}" in page
            assert _http(port, "/")[0] == 200
            status, spec = _http(port, "/openapi.json")
            assert status == 200 and "/api/v1/chain" in spec["paths"]
            assert "?store=<id>" in spec["info"]["description"]

            # Each store's own figures on its own stats topic, and its own HA device.
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                stats = {
                    s: json.loads(retained.get(f"o2o/v1/{s}/stats", b"{}")) for s in ("s1", "s2")
                }
                if [stats[s].get("checkins") for s in ("s1", "s2")] == [4, 2]:
                    break
                time.sleep(0.1)
            assert [stats[s].get("checkins") for s in ("s1", "s2")] == [4, 2], stats
            for s in ("s1", "s2", "s3"):
                assert f"homeassistant/device/o2o_{s}/config" in retained

            # `simulate --store s2` plays store 2's doors through the protocol: its events
            # land in store 2, acked; store 1 has exactly what its kiosks sent.
            if db_url is None:
                out = bridge_cli(shop, "simulate", "--store", "s2", "--weeks", "1")
                assert " at a1: " in out, out
                status, body = _http(port, "/api/v1/events?limit=1000", s1)
                assert sorted(e["id"] for e in body["events"]) == sorted(mine["s1"])
                status, body = _http(port, "/api/v1/events?limit=1000&order=oldest", s2)
                simulated = [e["id"] for e in body["events"] if e["data"].get("simulated")]
                assert simulated and {e["store"] for e in body["events"]} == {"s2"}
                mine["s2"] += simulated

            # The broker goes away: /health is degraded and names every store's problem.
            mosquitto_broker.stop()
            deadline = time.monotonic() + 20
            while (status := _http(port, "/health"))[0] != 503 and time.monotonic() < deadline:
                time.sleep(0.1)
            status, health = _http(port, "/health")
            assert status == 503 and health["mqtt_connected"] is False, health
            for store in ("s1", "s2", "s3"):
                assert any(
                    p.startswith(f"{store}: broker session down") for p in health["problems"]
                )
            mosquitto_broker.start()

            if db_url is None:
                if CHROMIUM is None:
                    missing_component("chromium", "apt-get install chromium, or scripts/setup.sh")
                _dashboard_checks(f"http://127.0.0.1:{port}/", chain, s2, tmp_path)
    finally:
        for k in kiosks:
            k.stop()
        watcher.loop_stop()
        watcher.disconnect()

    # `export events`: every store's, each line naming its store.
    lines = stored_events(shop)
    assert sorted(e["id"] for e in lines) == sorted(mine["s1"] + mine["s2"])
    assert {e["id"]: e["store"] for e in lines} == {i: s for s, ids in mine.items() for i in ids}


def _dashboard_checks(url: str, chain: str, store_token: str, tmp_path: Path) -> None:
    """The chain token: a table of every store and the total, and a store picker; a
    store's token: that store's page as a one-shop bridge shows it."""
    dom = _dump_dom(url + "#token=" + chain + "&lang=en", tmp_path, "en-US")
    page = dom.split("<script>")[0]
    tags = _parse(dom)
    assert "dash" not in tags.hidden and "chain-view" not in tags.hidden, page[-3000:]
    assert "Every store · today" in page
    assert '<option value="s1">s1</option><option value="s2">s2</option>' in page
    assert "<td>Total</td>" in page
    assert "Store s1 · " in page  # the picked store's own figures below
    _screenshot(url + "#token=" + chain + "&lang=en", tmp_path, tmp_path / "chain.png")
    assert (tmp_path / "chain.png").stat().st_size > 10_000

    dom = _dump_dom(url + "#token=" + store_token + "&lang=en", tmp_path, "en-US")
    page = dom.split("<script>")[0]
    assert "chain-view" in _parse(dom).hidden and "Store s2 · " in page
    assert "<td>Total</td>" not in page


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        ('[stores.s1]\nkiosks = ["z"]\n', "stores.s1"),
        ('[stores.s9]\nkiosks = ["k1"]\n', "stores.s9.kiosks"),
        ('[stores.s9]\n[stores.s9.api]\ntoken_file = "api.token"\n', "stores.s9.api.token_file"),
        ('[stores.s9]\n[stores.s9.api]\ntoken_file = "chain.token"\n', "stores.s9.api.token_file"),
    ],
    ids=["store-twice", "kiosk-in-two-stores", "token-of-two-stores", "token-is-the-chains"],
)
def test_a_service_config_that_would_mix_stores_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], edit: str, key: str
) -> None:
    shop = tmp_path / "shop"
    _init_two_stores(shop, "mqtt://127.0.0.1:1", None)
    (shop / "signing-s9.key").write_bytes((shop / "signing-s2.key").read_bytes())
    with (shop / "bridge.toml").open("a") as f:
        f.write("\n" + edit)
    capsys.readouterr()
    # `run` stops before it connects anywhere: status 2, one line naming file and key.
    assert main(["run", "--config", str(shop / "bridge.toml"), "--http", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"o2o-bridge: error: {shop / 'bridge.toml'}: {key}: "), err


def test_cli_with_several_stores(tmp_path: Path) -> None:
    shop = tmp_path / "shop"
    _init_two_stores(shop, "mqtt://127.0.0.1:1883", None)
    token = issue(shop, "coupon", "--store", "s2", "--campaign", "spring")
    assert _signed_for(token, shop / "kiosk-a1.toml", "s2")
    proc = tool("o2o-bridge", "simulate", "--store", "s7", cwd=shop)
    assert proc.returncode == 2 and "no store 's7'" in proc.stderr


def test_a_kiosk_of_one_store_cannot_reach_another_stores_topics(
    prod: ProdBroker,
    connect: Connect,  # noqa: F811
) -> None:
    """The production ACL: a kiosk's login is confined to its own store and kiosk."""
    bridge = connect(prod.port, "bridge", prod.passwords["bridge"])
    assert not bridge.subscribe("o2o/v1/#").is_failure
    other = connect(prod.port, "s2/k1", prod.passwords["s2/k1"])
    for forbidden in (
        "o2o/v1/s1/k1/events",
        "o2o/v1/s1/k1/status",
        "o2o/v1/s1/k2/events",
        "o2o/v1/s1/stats",
        "o2o/v1/s1/k1/acks",
    ):
        other.publish(forbidden, "forged")
    other.publish("o2o/v1/s2/k1/events", "mine")
    assert bridge.messages_until("o2o/v1/s2/k1/events") == []

    # Nor read store 1's commands or acks: only its own cmd topic reaches it.
    for topic in ("o2o/v1/s1/#", "o2o/v1/+/+/cmd", "o2o/v1/s2/k1/cmd"):
        other.subscribe(topic)
    bridge.publish("o2o/v1/s1/k1/cmd", "not for store 2")
    bridge.publish("o2o/v1/s1/k1/acks", "not for store 2")
    bridge.publish("o2o/v1/s2/k1/cmd", "sentinel")
    # (once for o2o/v1/+/+/cmd, once for its own topic)
    assert other.messages_until("o2o/v1/s2/k1/cmd") == []
