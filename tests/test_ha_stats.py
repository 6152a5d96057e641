"""The store's figures as a Home Assistant device, against a real Mosquitto and bridge.

What an owner with Home Assistant relies on: the device appears without set-up (the
discovery is retained and says what HA needs), comes back after HA restarts (birth
message), every sensor reads a field the stats document really has, the device shows
unavailable when the bridge is gone, and the alerts light up when a kiosk reports a
printer out of paper.
"""

from __future__ import annotations

import json
import queue
import re
import socket
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cloud_bridge.config import BridgeConfig
from cloud_bridge.db import Repository
from cloud_bridge.db.ledger import Ledger, NewMember, Posting
from cloud_bridge.runtime import BridgeRuntime
from o2o_protocol.config_file import validate_config
from o2o_protocol.messages import Status, dumps
from o2o_protocol.topics import (
    HA_STATUS,
    bridge_topic,
    ha_store_discovery_topic,
    kiosk_topic,
    stats_topic,
)
from tests.prod_broker import ProdBroker
from tests.support import MosquittoBroker
from tests.test_bridge_ingest import STORE, Peer, events, make_config

DISCOVERY = ha_store_discovery_topic(STORE)


@pytest.fixture
def bridge(
    tmp_path: Path, mosquitto_broker: MosquittoBroker, repo: Repository
) -> Iterator[BridgeRuntime]:
    ingest = BridgeRuntime(
        make_config(tmp_path, mosquitto_broker, kiosks=("k1",)), repo, stats_interval_s=0.1
    )
    ingest.start()
    assert ingest.wait_ready(10), "bridge did not subscribe"
    yield ingest
    ingest.stop()


def wait_for(
    peer: Peer, match: Callable[[str, Any, bool], bool], timeout: float = 10.0
) -> tuple[str, Any, bool]:
    """The first message `match` accepts (others are skipped)."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        assert left > 0, "no matching message"
        try:
            msg = peer.next(timeout=left)
        except queue.Empty:
            raise AssertionError("no matching message") from None
        if match(*msg):
            return msg


_PATH = re.compile(r"value_json((?:\.[a-z_]+)+)")


def render(template: str, doc: dict[str, Any]) -> str:
    """The template's state for `doc`: with jinja2 when installed (as HA renders it);
    otherwise every field it names must exist in the document."""
    try:
        import jinja2
    except ImportError:
        for path in _PATH.findall(template):
            value: Any = doc
            for key in path.strip(".").split("."):
                assert isinstance(value, dict) and key in value, f"{template}: no {path}"
                value = value[key]
        return "(not rendered)"
    return jinja2.Environment().from_string(template).render(value_json=doc)


def alert_state(discovery: dict[str, Any], key: str, doc: dict[str, Any]) -> bool:
    """What the alert's binary sensor shows for `doc` (its referenced field's truth when
    jinja2 is not installed to render ON/OFF)."""
    template = discovery["cmps"][f"o2o_{STORE}_{key}"]["value_template"]
    state = render(template, doc)
    if state in ("ON", "OFF"):
        return state == "ON"
    (path,) = _PATH.findall(template)
    value: Any = doc
    for part in path.strip(".").split("."):
        value = value[part]
    return bool(value)


def test_the_store_device_is_announced_retained_and_reads_the_stats(
    bridge: BridgeRuntime, mosquitto_broker: MosquittoBroker
) -> None:
    kiosk = Peer(mosquitto_broker, kiosk_topic(STORE, "k1", "acks"))
    kiosk.publish(kiosk_topic(STORE, "k1", "events"), dumps(events(3)))
    kiosk.next()
    stats_peer = Peer(mosquitto_broker, stats_topic(STORE))
    _, stats, _ = wait_for(stats_peer, lambda _t, doc, _r: doc["checkins"] == 3)
    # Home Assistant, connecting later, finds the device waiting for it.
    ha = Peer(mosquitto_broker, DISCOVERY, bridge_topic(STORE))
    try:
        _, config, retained = wait_for(ha, lambda t, _d, _r: t == DISCOVERY)
        assert retained
        assert config["dev"]["ids"] == [f"o2o_{STORE}"]
        components = config["cmps"]
        wanted = {
            "checkins": "3",
            "redemptions": "0",
            "pickups": "0",
            "joins": "0",
            "kiosks_online": "0",
            "ratings_today": "0",
            "rating_average_today": "unknown",
            "overdrawn_members": "0",
            "card_overuses": "0",
            "double_redemptions": "0",
            "kiosk_offline": "OFF",
            "printer_fault": "OFF",
            "locker_fault": "OFF",
            "double_redemption": "OFF",
            "overdraft": "OFF",
        }
        assert set(components) == {f"o2o_{STORE}_{k}" for k in wanted}
        ids = set()
        for key, expected in wanted.items():
            c = components[f"o2o_{STORE}_{key}"]
            assert c["p"] in ("sensor", "binary_sensor")
            assert c["state_topic"] == stats_topic(STORE)
            ids.add(c["unique_id"])
            state = render(c["value_template"], stats)
            assert state in (expected, "(not rendered)"), (key, state)
        assert len(ids) == len(components), "unique ids repeat"
        # Available while the bridge is up: its retained status says online.
        (avail,) = config["availability"]
        assert avail["topic"] == bridge_topic(STORE)
        _, status, _ = wait_for(ha, lambda t, _d, _r: t == bridge_topic(STORE))
        assert render(avail["value_template"], status) in ("online", "(not rendered)")
        assert status == {"online": True}
        # A bridge that stops says so: the device shows unavailable.
        bridge.stop()
        _, status, _ = wait_for(ha, lambda t, _d, _r: t == bridge_topic(STORE))
        assert status == {"online": False}
        assert render(avail["value_template"], status) in ("offline", "(not rendered)")
    finally:
        for p in (ha, stats_peer, kiosk):
            p.close()


def test_discovery_is_sent_again_when_home_assistant_comes_online(
    bridge: BridgeRuntime, mosquitto_broker: MosquittoBroker
) -> None:
    ha = Peer(mosquitto_broker, DISCOVERY)
    try:
        _, first, retained = wait_for(ha, lambda t, _d, _r: t == DISCOVERY)
        assert retained
        ha.client.publish(HA_STATUS, b"offline", qos=1).wait_for_publish(5)
        ha.client.publish(HA_STATUS, b"online", qos=1).wait_for_publish(5)
        # A live copy (not the retained one handed out at subscribe time).
        _, again, retained = wait_for(ha, lambda t, _d, _r: t == DISCOVERY)
        assert not retained
        assert again == first
    finally:
        ha.close()


def test_alerts_flip_when_a_printer_runs_out_of_paper(
    bridge: BridgeRuntime, mosquitto_broker: MosquittoBroker
) -> None:
    kiosk = Peer(mosquitto_broker)
    stats_peer = Peer(mosquitto_broker, stats_topic(STORE), DISCOVERY)
    status_topic = kiosk_topic(STORE, "k1", "status")
    try:
        _, config, _ = wait_for(stats_peer, lambda t, _d, _r: t == DISCOVERY)
        ok = {"online": True, "printer": "ok", "lockers": {"open": 0, "faults": 0}}
        kiosk.publish(status_topic, json.dumps(ok).encode())
        _, doc, _ = wait_for(
            stats_peer, lambda t, d, _r: t == stats_topic(STORE) and d["kiosks_online"] == 1
        )
        assert not alert_state(config, "printer_fault", doc)
        assert not alert_state(config, "kiosk_offline", doc)

        kiosk.publish(status_topic, json.dumps({**ok, "printer": "paper_out"}).encode())
        _, doc, _ = wait_for(
            stats_peer,
            lambda t, d, _r: t == stats_topic(STORE) and d["alerts"]["printer_fault"],
        )
        assert alert_state(config, "printer_fault", doc)
        assert not alert_state(config, "locker_fault", doc)

        kiosk.publish(status_topic, dumps({"online": False}))  # the kiosk's Last Will
        _, doc, _ = wait_for(
            stats_peer,
            lambda t, d, _r: t == stats_topic(STORE) and d["alerts"]["kiosk_offline"],
        )
        assert alert_state(config, "kiosk_offline", doc)
        # An offline kiosk's printer is not known to be out of paper any more.
        assert not alert_state(config, "printer_fault", doc)
    finally:
        kiosk.close()
        stats_peer.close()


def test_alerts_from_lockers_and_the_ledger(any_repo: Repository) -> None:
    assert any_repo.today_stats(STORE)["alerts"] == {
        "kiosk_offline": False,
        "printer_fault": False,
        "locker_fault": False,
        "double_redemption": False,
        "overdraft": False,
    }
    any_repo.set_status(
        STORE, "k1", Status(online=True, printer={"state": "offline"}, lockers={"faults": 1})
    )
    alerts = any_repo.today_stats(STORE)["alerts"]
    assert alerts["locker_fault"] and alerts["printer_fault"]
    assert not alerts["overdraft"]
    # A spend made offline at two doors at once took a member below zero.
    now = datetime.now(UTC)
    Ledger(any_repo, STORE).post(
        Posting("ada", -20, "reward", "kiosk:k1", "event:x", now),
        create=NewMember("ada", "Ada", "kiosk:k1", now),
    )
    assert any_repo.today_stats(STORE)["alerts"]["overdraft"]


def test_a_bridge_that_vanishes_shows_unavailable_until_it_is_back(
    bridge: BridgeRuntime, mosquitto_broker: MosquittoBroker
) -> None:
    ha = Peer(mosquitto_broker, bridge_topic(STORE), DISCOVERY)
    try:
        wait_for(ha, lambda t, d, _r: t == bridge_topic(STORE) and d == {"online": True})
        wait_for(ha, lambda t, _d, _r: t == DISCOVERY)
        # The connection dies without a goodbye (a crash, a cut cable): the broker sends
        # the bridge's Last Will; once reconnected, the bridge is online and announced again.
        sock = bridge.link.client.socket()
        assert sock is not None
        sock.shutdown(socket.SHUT_RDWR)
        wait_for(ha, lambda t, d, _r: t == bridge_topic(STORE) and d == {"online": False})
        wait_for(ha, lambda t, d, _r: t == bridge_topic(STORE) and d == {"online": True}, 30)
        wait_for(ha, lambda t, _d, _r: t == DISCOVERY)
    finally:
        ha.close()


def test_on_the_production_broker_home_assistant_sees_the_store(
    tmp_path: Path, prod: ProdBroker, repo: Repository
) -> None:
    """With the production ACL: the bridge may announce the store device, and Home
    Assistant's own login may read it, the stats and the bridge's availability."""
    url = f"mqtt://127.0.0.1:{prod.port}"
    raw = {
        "store": STORE,
        "kiosks": ["k1"],
        "mqtt": {"url": url, "username": "bridge", "password": prod.passwords["bridge"]},
    }
    config = validate_config(tmp_path / "bridge.toml", raw, BridgeConfig)
    ha = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    ha.username_pw_set("homeassistant", prod.passwords["homeassistant"])
    seen: dict[str, bytes] = {}
    ha.on_message = lambda _c, _u, m: seen.__setitem__(m.topic, m.payload)
    ha.connect("127.0.0.1", prod.port)
    ha.loop_start()
    ingest = BridgeRuntime(config, repo, stats_interval_s=0.2)
    ingest.start()
    try:
        assert ingest.wait_ready(10), "bridge did not subscribe"
        for topic in (DISCOVERY, stats_topic(STORE), bridge_topic(STORE)):
            ha.subscribe(topic, qos=1)
        deadline = time.monotonic() + 10
        wanted = {DISCOVERY, stats_topic(STORE), bridge_topic(STORE)}
        while set(seen) < wanted and time.monotonic() < deadline:
            time.sleep(0.05)
        assert set(seen) >= wanted, f"Home Assistant saw only {sorted(seen)}"
        assert json.loads(seen[bridge_topic(STORE)]) == {"online": True}
        assert f"o2o_{STORE}_checkins" in json.loads(seen[DISCOVERY])["cmps"]
    finally:
        ingest.stop()
        ha.loop_stop()
        ha.disconnect()


def test_figures_slow_to_work_out_are_published_less_often(tmp_path: Path) -> None:
    """A day of tens of thousands of events makes today's figures slow to work out: the
    publisher then spaces them by ten times their cost, so they never take most of the
    database's time, and returns to its interval once they are quick again."""
    from cloud_bridge.stats import COST_SHARE, StatsPublisher

    published: list[str] = []

    class Link:
        def publish(self, topic: str, payload: bytes, **_: Any) -> None:
            published.append(topic)

    class Repo:
        cost = 0.2

        def today_stats(self, store: str, **_: Any) -> dict[str, Any]:
            done = time.monotonic() + self.cost
            while time.monotonic() < done:  # the database at work
                pass
            return {"store": store}

    repo = Repo()
    pub = StatsPublisher(Link(), repo, "s1", interval_s=0.5, refresh_s=60.0)  # type: ignore[arg-type]
    pub.publish()
    assert published == [stats_topic("s1")]
    assert COST_SHARE * 0.2 <= pub.spacing_s < 60.0
    repo.cost = 0.0
    pub.publish()
    assert pub.spacing_s == 0.5
