"""The real kiosk sync and bridge on the PRODUCTION broker config: logins, ACL, TLS.

The broker is started the way `tests/test_broker_config.py` does it (the production file
with its listener on a free port, users made with `add-kiosk-user.sh` and
`mosquitto_passwd`). Here the clients are the project's own `Sync` and `BridgeRuntime`, not
hand-written paho peers: what a shop runs must work with what a shop's broker enforces.
"""

from __future__ import annotations

import queue
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from paho.mqtt.reasoncodes import ReasonCode

from kiosk.localdb import KioskDB
from kiosk.sync import Sync
from o2o_protocol import topics
from tests.prod_broker import ProdBroker
from tests.support import BROKER_CONFIG
from tests.test_sync import (
    STORE,
    TIMEOUT,
    Bridge,
    Watcher,
    assert_stored_exactly_once,
    kiosk_mqtt,
    open_store,
    queue_events,
    wait_until,
)


def _url(prod: ProdBroker, scheme: str = "mqtt") -> str:
    return f"{scheme}://127.0.0.1:{prod.port}"


class Recorder:
    """Wraps a Sync's paho callbacks to hear what the broker answered (CONNACK, PUBACK)."""

    def __init__(self, sync: Sync) -> None:
        self.connacks: queue.Queue[ReasonCode] = queue.Queue()
        self.pubacks: queue.Queue[ReasonCode] = queue.Queue()
        self.connect_failed = threading.Event()
        on_connect, on_publish = sync.client.on_connect, sync.client.on_publish

        def connect_hook(*args: Any) -> None:
            self.connacks.put(args[3])
            if on_connect is not None:
                on_connect(*args)

        def publish_hook(*args: Any) -> None:
            self.pubacks.put(args[3])
            if on_publish is not None:
                on_publish(*args)

        sync.client.on_connect = connect_hook
        sync.client.on_publish = publish_hook
        sync.client.on_connect_fail = lambda *_args: self.connect_failed.set()


def _sync(store: KioskDB, url: str, user: str | None, password: str | None, **kw: Any) -> Sync:
    settings: dict[str, Any] = {"resend_after_s": 2.0, **kw}
    if user is not None:
        settings |= {"username": user, "password": password}
    return Sync(kiosk_mqtt(url, **settings), store, version="sec")


@pytest.fixture
def bridge(tmp_path: Path, prod: ProdBroker) -> Iterator[Bridge]:
    b = Bridge(
        tmp_path / "bridge", _url(prod), username="bridge", password=prod.passwords["bridge"]
    )
    b.start()
    yield b
    b.close()


def test_kiosk_drains_to_the_bridge_with_its_own_login(
    tmp_path: Path, prod: ProdBroker, bridge: Bridge
) -> None:
    store = open_store(tmp_path / "kiosk")
    ids = queue_events(store, 500)
    sync = _sync(store, _url(prod), "s1/k1", prod.passwords["s1/k1"])
    ha = Watcher(
        prod.port,
        "homeassistant/device/+/config",
        username="homeassistant",
        password=prod.passwords["homeassistant"],
    )
    try:
        sync.start()
        assert sync.wait_connected(TIMEOUT), "the kiosk's own login was refused"
        assert sync.wait_drained(TIMEOUT), f"{store.outbox_size()} events never acked"
        assert_stored_exactly_once(str(bridge.repo.engine.url), ids)
        # Its discovery topic is granted by add-kiosk-user.sh: Home Assistant sees it.
        config, _ = ha.wait_for(f"homeassistant/device/o2o_{STORE}_k1/config")
        assert config["state_topic"] == topics.kiosk_topic(STORE, "k1", topics.STATUS)
    finally:
        ha.close()
        sync.stop()
        store.close()


@pytest.mark.parametrize("login", [None, ("s1/k1", "wrong"), ("s1/k1", "s1/k2")])
def test_anonymous_and_wrong_passwords_are_refused(
    tmp_path: Path, prod: ProdBroker, login: tuple[str, str] | None
) -> None:
    store = open_store(tmp_path / "kiosk")
    user, password = login or (None, None)
    if password == "s1/k2":
        password = prod.passwords["s1/k2"]  # another kiosk's password
    sync = _sync(store, _url(prod), user, password)
    hear = Recorder(sync)
    try:
        sync.start()
        assert hear.connacks.get(timeout=TIMEOUT).is_failure, "the broker let it in"
        assert not sync.connected
    finally:
        sync.stop()
        store.close()


def test_a_kiosk_cannot_send_as_another(
    tmp_path: Path, prod: ProdBroker, bridge: Bridge, caplog: pytest.LogCaptureFixture
) -> None:
    """A kiosk set up as s1/k2 but logged in as s1/k1: the broker drops all it sends."""
    impostor_store = open_store(tmp_path / "impostor", kiosk="k2")
    forged = queue_events(impostor_store, 20)
    impostor = _sync(impostor_store, _url(prod), "s1/k1", prod.passwords["s1/k1"])
    hear = Recorder(impostor)
    honest_store = open_store(tmp_path / "honest")
    honest = _sync(honest_store, _url(prod), "s1/k1", prod.passwords["s1/k1"])
    try:
        impostor.start()
        assert impostor.wait_connected(TIMEOUT)
        # The broker answers its events batch with "not authorized" (MQTT v5 PUBACK).
        wait_until(
            lambda: any(rc.is_failure for rc in list(hear.pubacks.queue)),
            what="the broker to refuse the impostor's publish",
        )
        refused = [rc for rc in list(hear.pubacks.queue) if rc.is_failure]
        assert all(rc.getName() == "Not authorized" for rc in refused), refused
        assert "does MQTT user 's1/k1' match store/kiosk s1/k2?" in caplog.text
        # Sentinel: the legitimate kiosk's event is stored; anything forged would be by now.
        sent = queue_events(honest_store, 1)
        honest.start()
        assert honest.wait_drained(TIMEOUT)
        assert_stored_exactly_once(str(bridge.repo.engine.url), sent)
        assert impostor_store.outbox_size() == len(forged), "forged events were acked"
        assert {k.kiosk for k in bridge.repo.kiosks(STORE)} <= {"k1"}, "k2's status got through"
    finally:
        impostor.stop()
        honest.stop()
        impostor_store.close()
        honest_store.close()


def test_kiosk_and_bridge_over_tls(tmp_path: Path, prod_tls: ProdBroker, certs: Path) -> None:
    ca = certs / "ca.crt"
    url = _url(prod_tls, "mqtts")
    bridge = Bridge(
        tmp_path / "bridge",
        url,
        username="bridge",
        password=prod_tls.passwords["bridge"],
        ca_file=ca,
    )
    store = open_store(tmp_path / "kiosk")
    ids = queue_events(store, 200)
    sync = _sync(store, url, "s1/k1", prod_tls.passwords["s1/k1"], ca_file=str(ca))
    try:
        bridge.start()
        sync.start()
        assert sync.wait_connected(TIMEOUT), "TLS with the generated CA did not connect"
        assert sync.wait_drained(TIMEOUT), f"{store.outbox_size()} events never acked"
        assert_stored_exactly_once(str(bridge.repo.engine.url), ids)
    finally:
        sync.stop()
        bridge.close()
        store.close()


def test_tls_refuses_a_server_the_kiosk_does_not_trust(
    tmp_path: Path, prod_tls: ProdBroker
) -> None:
    """Without the shop's CA the kiosk does not talk to the broker at all."""
    store = open_store(tmp_path / "kiosk")
    queue_events(store, 5)
    other_ca = tmp_path / "other"
    subprocess.run(
        ["bash", str(BROKER_CONFIG / "make-certs.sh"), str(other_ca), "localhost"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    sync = _sync(
        store,
        _url(prod_tls, "mqtts"),
        "s1/k1",
        prod_tls.passwords["s1/k1"],
        ca_file=str(other_ca / "ca.crt"),
    )
    hear = Recorder(sync)
    try:
        sync.start()
        assert hear.connect_failed.wait(TIMEOUT), "the TLS handshake did not fail"
        assert not sync.connected and hear.connacks.empty()
        assert store.outbox_size() == 5
    finally:
        sync.stop()
        store.close()
