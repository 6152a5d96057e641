"""broker_config/ against a real Mosquitto: dev config, queue limits, ACL, TLS, bridge.

Mosquitto 2.0 grants every SUBSCRIBE and applies read rights to each message it
would deliver, so "may not subscribe" is checked as "receives nothing".
Negative checks ("not delivered") never sleep-and-hope: after the forbidden message
the same publisher sends an allowed sentinel on the same connection, and Mosquitto
keeps one client's messages in order, so once the sentinel arrives anything that was
going to arrive has arrived.
"""

from __future__ import annotations

import queue
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.reasoncodes import ReasonCode

from tests.prod_broker import ProdBroker
from tests.support import (
    BROKER_CONFIG,
    MosquittoBroker,
)

TIMEOUT = 5.0


@dataclass
class Peer:
    """A connected paho v2 client that records what it receives."""

    client: mqtt.Client
    connack: ReasonCode
    messages: queue.Queue[tuple[str, bytes]] = field(default_factory=queue.Queue)
    _subacks: queue.Queue[list[ReasonCode]] = field(default_factory=queue.Queue)

    @property
    def connected(self) -> bool:
        return not self.connack.is_failure

    def subscribe(self, topic: str, qos: int = 1) -> ReasonCode:
        """Subscribe and return the broker's SUBACK reason code."""
        self.client.subscribe(topic, qos)
        return self._subacks.get(timeout=TIMEOUT)[0]

    def publish(self, topic: str, payload: str | bytes, qos: int = 1, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(TIMEOUT)

    def next_message(self, timeout: float = TIMEOUT) -> tuple[str, bytes]:
        return self.messages.get(timeout=timeout)

    def messages_until(self, sentinel_topic: str) -> list[str]:
        """Topics received before the first message on ``sentinel_topic``."""
        seen: list[str] = []
        while True:
            topic, _ = self.next_message()
            if topic == sentinel_topic:
                return seen
            seen.append(topic)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


Connect = Callable[..., Peer]


@pytest.fixture
def connect() -> Iterator[Connect]:
    """Factory: ``connect(port, user=None, password=None, ca=None)`` -> Peer."""
    peers: list[Peer] = []

    def _connect(
        port: int,
        user: str | None = None,
        password: str | None = None,
        *,
        ca: Path | None = None,
        client_id: str = "",
        will_topic: str | None = None,
        max_inflight: int | None = None,
    ) -> Peer:
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id or f"t-{time.monotonic_ns()}",
            protocol=mqtt.MQTTv5,
        )
        if user is not None:
            client.username_pw_set(user, password)
        if ca is not None:
            client.tls_set(ca_certs=str(ca))
        if max_inflight is not None:
            client.max_inflight_messages_set(max_inflight)
        if will_topic is not None:
            client.will_set(will_topic, '{"online": false}', qos=1, retain=True)
        connacks: queue.Queue[ReasonCode] = queue.Queue()
        peer = Peer(client, ReasonCode(mqtt.CONNACK >> 4, identifier=0))
        client.on_connect = lambda _c, _u, _f, rc, _p: connacks.put(rc)
        client.on_subscribe = lambda _c, _u, _m, rcs, _p: peer._subacks.put(list(rcs))
        client.on_message = lambda _c, _u, msg: peer.messages.put((msg.topic, bytes(msg.payload)))
        client.connect("127.0.0.1", port, keepalive=30)
        client.loop_start()
        peer.connack = connacks.get(timeout=TIMEOUT)
        if peer.connack.is_failure:
            # Stop paho's automatic reconnect attempts for a refused login.
            client.loop_stop()
            client.disconnect()
        else:
            peers.append(peer)
        return peer

    yield _connect
    for peer in peers:
        peer.close()


# --- development configuration -------------------------------------------------


def test_dev_broker_accepts_anonymous_and_delivers_qos1(
    mosquitto_broker: MosquittoBroker, connect: Connect
) -> None:
    sub = connect(mosquitto_broker.port)
    pub = connect(mosquitto_broker.port)
    assert sub.connected and pub.connected
    assert not sub.subscribe("o2o/v1/s1/k1/events").is_failure
    pub.publish("o2o/v1/s1/k1/events", '{"id": "e1"}')
    assert sub.next_message() == ("o2o/v1/s1/k1/events", b'{"id": "e1"}')


def test_dev_broker_burst_of_5000_qos1_is_not_dropped(
    mosquitto_broker: MosquittoBroker, connect: Connect
) -> None:
    """Mosquitto's default queue (1000) would drop most of this burst."""
    total = 5000
    sub = connect(mosquitto_broker.port)
    sub.subscribe("burst/#")
    received: set[int] = set()
    done = threading.Event()

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        received.add(int(msg.payload))
        if len(received) == total:
            done.set()

    sub.client.on_message = on_message
    pub = connect(mosquitto_broker.port, max_inflight=1000)  # a burst, not lock-step
    infos = [pub.client.publish("burst/x", str(i), qos=1) for i in range(total)]
    for info in infos:
        info.wait_for_publish(30)
    assert done.wait(30), f"received {len(received)} of {total}"
    assert received == set(range(total))
    assert "dropped" not in mosquitto_broker.log_path.read_text()


def test_broker_fixture_restarts_on_the_same_port(
    mosquitto_broker: MosquittoBroker, connect: Connect
) -> None:
    port = mosquitto_broker.port
    mosquitto_broker.kill()
    mosquitto_broker.start()
    mosquitto_broker.stop()
    mosquitto_broker.start()
    assert mosquitto_broker.port == port
    assert mosquitto_broker.url == f"mqtt://127.0.0.1:{port}"
    assert connect(port).connected


# --- production configuration: users and ACL ------------------------------------


def test_prod_refuses_anonymous_and_wrong_password(prod: ProdBroker, connect: Connect) -> None:
    assert not connect(prod.port).connected
    assert not connect(prod.port, "s1/k1", "wrong").connected
    assert not connect(prod.port, "s1/k1", prod.passwords["s1/k2"]).connected
    assert connect(prod.port, "s1/k1", prod.passwords["s1/k1"]).connected


def test_kiosk_publishes_only_in_its_own_subtree(prod: ProdBroker, connect: Connect) -> None:
    bridge = connect(prod.port, "bridge", prod.passwords["bridge"])
    assert not bridge.subscribe("o2o/v1/#").is_failure
    assert not bridge.subscribe("homeassistant/#").is_failure
    kiosk = connect(prod.port, "s1/k1", prod.passwords["s1/k1"], will_topic="o2o/v1/s1/k1/status")
    assert kiosk.connected

    kiosk.publish("o2o/v1/s1/k1/events", "mine")
    assert bridge.next_message() == ("o2o/v1/s1/k1/events", b"mine")

    for forbidden in (
        # Only the bridge speaks on a kiosk's cmd and acks: a copied kiosk password
        # must not open a locker or drop events from the outbox.
        "o2o/v1/s1/k1/cmd",
        "o2o/v1/s1/k1/acks",
        "o2o/v1/s1/k2/events",
        "o2o/v1/s2/k1/events",
        "o2o/v1/s1/stats",
        "homeassistant/device/o2o_s1_k2/config",
        "homeassistant/status",
    ):
        kiosk.publish(forbidden, "forged")
    kiosk.publish("homeassistant/device/o2o_s1_k1/config", "{}", retain=True)
    kiosk.publish("o2o/v1/s1/k1/status", "sentinel")
    seen = bridge.messages_until("o2o/v1/s1/k1/status")
    assert seen == ["homeassistant/device/o2o_s1_k1/config"]


def test_kiosk_cannot_subscribe_to_another_kiosk(prod: ProdBroker, connect: Connect) -> None:
    kiosk = connect(prod.port, "s1/k1", prod.passwords["s1/k1"])
    for topic in ("o2o/v1/s1/k2/#", "o2o/v1/+/+/cmd", "o2o/v1/s1/k1/#", "homeassistant/status"):
        kiosk.subscribe(topic)

    bridge = connect(prod.port, "bridge", prod.passwords["bridge"])
    bridge.publish("o2o/v1/s1/k2/cmd", "not for k1")
    bridge.publish("o2o/v1/s2/k1/cmd", "not for k1")
    bridge.publish("o2o/v1/s1/k1/cmd", "for k1")
    # Once per matching subscription (o2o/v1/+/+/cmd and o2o/v1/s1/k1/#).
    assert kiosk.messages_until("o2o/v1/s1/k1/cmd") == []
    assert kiosk.next_message() == ("o2o/v1/s1/k1/cmd", b"for k1")

    ha = connect(prod.port, "homeassistant", prod.passwords["homeassistant"])
    ha.publish("homeassistant/status", "online")
    assert kiosk.next_message() == ("homeassistant/status", b"online")


def test_bridge_workers_share_a_subscription(prod: ProdBroker, connect: Connect) -> None:
    """MQTT v5 shared subscriptions pass the ACL (checked on the topic after $share/g/)."""
    worker = connect(prod.port, "bridge", prod.passwords["bridge"])
    assert not worker.subscribe("$share/ingest/o2o/v1/+/+/events").is_failure
    kiosk = connect(prod.port, "s2/k1", prod.passwords["s2/k1"])
    kiosk.subscribe("$share/x/o2o/v1/+/+/events")  # would steal others' events
    kiosk.subscribe("o2o/v1/s2/k1/cmd")
    other = connect(prod.port, "s1/k1", prod.passwords["s1/k1"])
    other.publish("o2o/v1/s1/k1/events", "e")
    assert worker.next_message() == ("o2o/v1/s1/k1/events", b"e")
    worker.publish("o2o/v1/s2/k1/cmd", "sentinel")
    assert kiosk.messages_until("o2o/v1/s2/k1/cmd") == []


def test_dashboard_reads_stats_and_status_only(prod: ProdBroker, connect: Connect) -> None:
    dash = connect(prod.port, "dashboard", prod.passwords["dashboard"])
    for topic in ("o2o/v1/+/stats", "o2o/v1/+/+/status", "o2o/v1/+/+/events"):
        dash.subscribe(topic)
    bridge = connect(prod.port, "bridge", prod.passwords["bridge"])
    bridge.publish("o2o/v1/s1/stats", "{}")
    assert dash.next_message() == ("o2o/v1/s1/stats", b"{}")

    dash.publish("o2o/v1/s1/stats", "forged")  # dropped: read-only user
    kiosk = connect(prod.port, "s1/k2", prod.passwords["s1/k2"])
    kiosk.publish("o2o/v1/s1/k2/events", "private")
    kiosk.publish("o2o/v1/s1/k2/status", '{"online": true}')
    assert dash.messages_until("o2o/v1/s1/k2/status") == []


# --- TLS and the shop-to-central bridge -------------------------------------------


def test_prod_tls_listener(prod_tls: ProdBroker, certs: Path, connect: Connect) -> None:
    ca = certs / "ca.crt"
    assert not connect(prod_tls.port, ca=ca).connected  # anonymous, even over TLS
    bridge = connect(prod_tls.port, "bridge", prod_tls.passwords["bridge"], ca=ca)
    bridge.subscribe("o2o/v1/+/+/events")
    kiosk = connect(prod_tls.port, "s1/k1", prod_tls.passwords["s1/k1"], ca=ca)
    kiosk.publish("o2o/v1/s1/k1/events", "over tls")
    assert bridge.next_message() == ("o2o/v1/s1/k1/events", b"over tls")


def test_tls_listener_rejects_plain_mqtt(prod_tls: ProdBroker) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.username_pw_set("bridge", prod_tls.passwords["bridge"])
    try:
        client.connect("127.0.0.1", prod_tls.port, keepalive=5)
        rc = client.loop(timeout=2.0)  # the broker drops the non-TLS connection
        assert rc != mqtt.MQTT_ERR_SUCCESS or not client.is_connected()
    except OSError:
        pass  # a reset during connect is a refusal too
    finally:
        client.disconnect()


def test_shop_bridges_to_central_broker(
    tmp_path: Path, certs: Path, prod_tls: ProdBroker, connect: Connect
) -> None:
    """The template, filled in, links a shop's dev broker to a TLS central broker."""
    template = (BROKER_CONFIG / "bridge-to-central.conf.template").read_text()
    values = {
        "@STORE@": "s1",
        "@CENTRAL_HOST@": "localhost",
        "@CENTRAL_PORT@": str(prod_tls.port),
        "@BRIDGE_USER@": "s1",
        "@BRIDGE_PASSWORD@": prod_tls.passwords["s1"],
        "@CA_FILE@": str(certs / "ca.crt"),
    }
    for key, value in values.items():
        template = template.replace(key, value)
    assert "@" not in re.sub(r"#.*", "", template)
    shop = MosquittoBroker.from_config(
        tmp_path, transform=lambda text: text + "\n" + template, name="shop"
    )
    shop.start()
    try:
        ca = certs / "ca.crt"
        central = connect(prod_tls.port, "bridge", prod_tls.passwords["bridge"], ca=ca)
        central.subscribe("o2o/v1/s1/+/events")
        kiosk = connect(shop.port)
        kiosk.subscribe("o2o/v1/s1/bridge/state")
        kiosk.subscribe("o2o/v1/s1/k1/cmd")
        deadline = time.monotonic() + 15
        while kiosk.next_message(timeout=15) != ("o2o/v1/s1/bridge/state", b"1"):
            assert time.monotonic() < deadline, "bridge never connected"

        kiosk.publish("o2o/v1/s1/k1/events", "up")
        assert central.next_message(timeout=10) == ("o2o/v1/s1/k1/events", b"up")

        # The bridge's own subscription on the central side may lag its state
        # message by a moment: re-send the command until it comes down.
        for _ in range(50):
            central.publish("o2o/v1/s1/k1/cmd", "down")
            try:
                assert kiosk.next_message(timeout=0.2) == ("o2o/v1/s1/k1/cmd", b"down")
                break
            except queue.Empty:
                continue
        else:
            pytest.fail("command never reached the shop broker")
    finally:
        shop.stop()
