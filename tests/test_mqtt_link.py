"""The MQTT connection both sides use (`o2o_protocol.mqtt`), against a real Mosquitto.

The kiosk's and the bridge's own tests cover what flows over it; these pin down what the
link itself promises: one "cannot reach" line per outage, and no PUBACK sent for a
message of an earlier connection (the resumed session delivers that one again).
"""

from __future__ import annotations

import logging
import queue
import time
import uuid
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from o2o_protocol.config_file import MqttConnection
from o2o_protocol.mqtt import MqttLink
from tests.support import MosquittoBroker

TOPIC = "o2o/v1/s1/k1/events"


def _unreachable(caplog: pytest.LogCaptureFixture) -> int:
    return sum("cannot reach the broker" in r.getMessage() for r in caplog.records)


def _wait(cond: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_an_outage_is_logged_once_not_once_per_retry(
    mosquitto_broker: MosquittoBroker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="o2o_protocol.mqtt")
    link = MqttLink(MqttConnection(url=mosquitto_broker.url), client_id="link-outage")
    failed = [0]  # connection attempts that failed, counted as paho reports them
    report_failure = link.client.on_connect_fail

    def count_failure(client: mqtt.Client, userdata: Any) -> None:
        failed[0] += 1
        report_failure(client, userdata)

    link.client.on_connect_fail = count_failure
    link.start()
    try:
        assert link.wait_connected(30)
        for outage in (1, 2):
            mosquitto_broker.kill()
            _wait(lambda n=outage: _unreachable(caplog) == n, f"outage {outage} logged")
            # paho retries after 1 s, 2 s, ...: the next failed attempt logs nothing more.
            retried = failed[0] + 1
            _wait(lambda n=retried: failed[0] >= n, f"a retry in outage {outage}")
            assert _unreachable(caplog) == outage
            mosquitto_broker.start()
            assert link.wait_connected(60), "did not reconnect"
    finally:
        link.stop()


def test_no_puback_for_a_message_of_an_earlier_connection(
    mosquitto_broker: MosquittoBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    received: queue.Queue[tuple[mqtt.MQTTMessage, int]] = queue.Queue()
    cfg = MqttConnection(url=mosquitto_broker.url)
    link = MqttLink(
        cfg, client_id=f"link-{uuid.uuid4().hex[:8]}", session_expiry_s=600, manual_ack=True
    )
    link.subscribe([TOPIC], lambda msg: received.put((msg, link.generation)))
    link.start()
    peer = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    try:
        assert link.wait_subscribed(30)
        peer.connect(mosquitto_broker.host, mosquitto_broker.port)
        peer.loop_start()
        peer.publish(TOPIC, b"one", qos=1).wait_for_publish(10)
        first, generation = received.get(timeout=10)
        assert first.payload == b"one"

        # The connection drops before the message is stored: its PUBACK must not go out
        # on the next connection, where its mid may name another message.
        sent: list[int] = []

        def record(mid: int, _qos: int) -> mqtt.MQTTErrorCode:
            sent.append(mid)
            return mqtt.MQTT_ERR_SUCCESS

        monkeypatch.setattr(link.client, "ack", record)
        link.client.disconnect()
        _wait(lambda: link.generation != generation, "the disconnect")
        link.ack(first.mid, first.qos, generation)
        assert sent == [], "a PUBACK went out for a message of the old connection"
        link.ack(first.mid, first.qos, link.generation)  # this connection's: acked
        assert sent == [first.mid]
    finally:
        peer.loop_stop()
        peer.disconnect()
        link.stop()
