"""One MQTT connection, as both the kiosk and the bridge hold it (docs/mqtt.md).

paho does the hard parts (network loop, reconnects with back-off); this module adds what
both sides need on top, written once: the MQTT version (v5, or 3.1.1 when the broker
answers CONNACK 132 "unsupported protocol version", switched off paho's network thread),
login, TLS, the Last Will, subscriptions renewed on every connection, "cannot reach the
broker" logged once per outage, and an orderly stop.

What each side adds stays with it: the kiosk's outbox and the bridge's database decide
what is delivered. For the bridge, `session_expiry_s` keeps the broker's session across
restarts and `manual_ack` holds each PUBACK until `ack()`; `generation` tells a message
of an earlier connection apart, whose PUBACK must not be sent on the next one.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from o2o_protocol.config_file import MqttConnection
from o2o_protocol.topics import shared

log = logging.getLogger(__name__)

#: CONNACK reason code of a broker that does not speak the MQTT version asked for.
UNSUPPORTED_PROTOCOL = 132

#: A handler of one received message; it runs on paho's network thread, so it must
#: return quickly and never raise.
MessageHandler = Callable[[mqtt.MQTTMessage], None]


@dataclass(frozen=True)
class Will:
    """The Last Will the broker publishes when the connection dies without a goodbye."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


class MqttLink:
    """A paho client that connects in the background and keeps itself connected.

    Set up with `subscribe()` before `start()`; `start()` returns at once (a broker that is
    down at boot stops nothing); `stop()` disconnects and ends the network loop.
    """

    def __init__(
        self,
        cfg: MqttConnection,
        *,
        client_id: str,
        will: Will | None = None,
        session_expiry_s: int | None = None,
        manual_ack: bool = False,
        shared_group: str | None = None,
        unshared: Sequence[str] = (),
        on_connect: Callable[[], None] | None = None,
        on_publish: Callable[[ReasonCode], None] | None = None,
        unreachable_note: str = "retrying",
    ) -> None:
        """`session_expiry_s`: a persistent session (None: a clean one per connection).
        `shared_group`: subscriptions shared by a group of clients (MQTT v5 only), but
        for the filters in `unshared`, which every client of the group gets in full
        (statuses each worker must see; retained messages, which a broker never sends
        to a shared subscription).
        `on_connect` runs on the network thread once connected and subscribing;
        `on_publish` gets the broker's answer to each publish (a refusal, say)."""
        self.cfg = cfg
        self.client_id = client_id
        self._will = will
        self._session_expiry_s = session_expiry_s
        self._manual_ack = manual_ack
        self._shared_group = shared_group
        self._unshared = frozenset(unshared)
        self._on_connect_cb = on_connect
        self._on_publish_cb = on_publish
        self._unreachable_note = unreachable_note
        self._routes: list[tuple[str, MessageHandler]] = []
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self._stopping = False
        self._downgrading = False
        self._unreachable_logged = False
        self._lock = threading.Lock()  # stop() and a downgrade never overlap
        self._generation = 0
        self._sub_mid: int | None = None
        #: MQTT v5 first; a broker that only speaks 3.1.1 gets 3.1.1.
        self.protocol = (
            MQTTProtocolVersion.MQTTv311 if cfg.protocol == "3.1.1" else MQTTProtocolVersion.MQTTv5
        )
        self.client = self._make_client()

    # -- set-up -----------------------------------------------------------------------

    def subscribe(self, filters: Sequence[str], handler: MessageHandler) -> None:
        """Subscribe (QoS 1) on every connection; `handler` gets what matches `filters`."""
        for f in filters:
            self._routes.append((f, handler))
            self.client.message_callback_add(f, _bare(handler))

    def _make_client(self) -> mqtt.Client:
        persistent = self._session_expiry_s is not None
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=self.protocol,
            # v5 asks at connect time (clean_start); 3.1.1 keeps a session this way.
            clean_session=False if persistent and not self.v5 else None,
        )
        client.manual_ack_set(self._manual_ack)
        m = self.cfg
        if m.username:
            client.username_pw_set(
                m.username, m.password.get_secret_value() if m.password else None
            )
        if m.tls:
            client.tls_set(
                ca_certs=str(m.ca_file) if m.ca_file else None,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        if self._will is not None:
            w = self._will
            client.will_set(w.topic, w.payload, qos=w.qos, retain=w.retain)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        if self._on_publish_cb is not None:
            client.on_publish = self._on_publish
        for f, handler in self._routes:
            client.message_callback_add(f, _bare(handler))
        return client

    @property
    def v5(self) -> bool:
        return self.protocol == MQTTProtocolVersion.MQTTv5

    def subscriptions(self) -> list[str]:
        """The filters as sent to the broker: shared when a group is set and v5 allows."""
        filters = list(dict.fromkeys(f for f, _ in self._routes))
        if self._shared_group and self.v5:
            group = self._shared_group
            return [f if f in self._unshared else shared(f, group) for f in filters]
        return filters

    def start(self) -> None:
        """Connect in the background; paho retries by itself until `stop()`."""
        self._connect()
        self.client.loop_start()

    def _connect(self) -> None:
        m = self.cfg
        if self.v5 and self._session_expiry_s is not None:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self._session_expiry_s
            self.client.connect_async(
                m.host, m.port, keepalive=m.keepalive_s, clean_start=False, properties=props
            )
        else:
            self.client.connect_async(m.host, m.port, keepalive=m.keepalive_s)

    def stop(self) -> None:
        """Disconnect (no Last Will) and end the network loop."""
        with self._lock:  # a downgrade in progress finishes first, or never starts
            self._stopping = True
            self.client.disconnect()
            self.client.loop_stop()
        self._connected.clear()
        self._subscribed.clear()

    # -- what the owner calls ---------------------------------------------------------

    @property
    def connected(self) -> bool:
        """The broker accepted the connection (CONNACK)."""
        return self._connected.is_set()

    def wait_connected(self, timeout: float | None = None) -> bool:
        return self._connected.wait(timeout)

    @property
    def subscribed(self) -> bool:
        """Connected and every subscription granted (SUBACK): messages will flow."""
        return self._subscribed.is_set()

    def wait_subscribed(self, timeout: float | None = None) -> bool:
        return self._subscribed.wait(timeout)

    @property
    def generation(self) -> int:
        """Which connection this is: it changes on every disconnect."""
        return self._generation

    def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> mqtt.MQTTMessageInfo:
        return self.client.publish(topic, payload, qos=qos, retain=retain)

    def ack(self, mid: int, qos: int, generation: int | None = None) -> None:
        """PUBACK a message (with `manual_ack`), unless it came on an earlier connection:
        the resumed session delivers that one again, and its mid means nothing now."""
        if not self._manual_ack or (generation is not None and generation != self._generation):
            return
        self.client.ack(mid, qos)

    # -- network thread ---------------------------------------------------------------

    def _on_connect_fail(self, _client: mqtt.Client, _userdata: Any) -> None:
        if not self._unreachable_logged:  # once per outage, not once per retry
            self._unreachable_logged = True
            log.warning("cannot reach the broker at %s; %s", self.cfg.url, self._unreachable_note)

    def _on_connect(
        self,
        client: mqtt.Client,
        _userdata: Any,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        _props: Properties | None,
    ) -> None:
        if reason.is_failure:
            if reason.value == UNSUPPORTED_PROTOCOL and self.v5 and self.cfg.protocol == "auto":
                # Never wait for the lock here: stop() holds it while it joins this thread.
                if not self._lock.acquire(blocking=False):
                    return  # stopping, or a downgrade is already under way
                try:
                    if self._downgrading or self._stopping:
                        return
                    self._downgrading = True
                finally:
                    self._lock.release()
                log.info("the broker does not speak MQTT v5; switching to MQTT 3.1.1")
                threading.Thread(target=self._downgrade, name="mqtt-downgrade", daemon=True).start()
                return
            log.error("broker %s refused the connection: %s", self.cfg.url, reason)
            return
        self._unreachable_logged = False
        log.info(
            "connected to %s as %s (session %s)",
            self.cfg.url,
            self.client_id,
            "resumed" if flags.session_present else "new",
        )
        filters = self.subscriptions()
        if filters:
            _, self._sub_mid = client.subscribe([(f, 1) for f in filters])
        self._connected.set()
        if self._on_connect_cb is not None:
            self._on_connect_cb()

    def _downgrade(self) -> None:
        """Reconnect with MQTT 3.1.1: a new paho client (the old one's network thread is
        the one that learnt it, so this runs on its own thread), same settings."""
        with self._lock:
            if self._stopping:
                return
            old = self.client
            with contextlib.suppress(Exception):
                old.disconnect()
            old.loop_stop()
            self._generation += 1
            self.protocol = MQTTProtocolVersion.MQTTv311
            if self._shared_group:
                log.warning("MQTT 3.1.1 has no shared subscriptions: this client takes all")
            self.client = self._make_client()
            self._connect()
            self.client.loop_start()
            self._downgrading = False

    def _on_subscribe(
        self,
        _client: mqtt.Client,
        _userdata: Any,
        mid: int,
        reasons: list[ReasonCode],
        _props: Properties | None,
    ) -> None:
        if mid != self._sub_mid:
            return
        failed = [str(r) for r in reasons if r.is_failure]
        if failed:
            log.error(
                "broker refused the subscriptions %s: %s", self.subscriptions(), ", ".join(failed)
            )
            return
        self._subscribed.set()

    def _on_disconnect(
        self,
        _client: mqtt.Client,
        _userdata: Any,
        _flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        _props: Properties | None,
    ) -> None:
        was_connected = self._connected.is_set()
        self._connected.clear()
        self._subscribed.clear()
        self._generation += 1
        if was_connected and not (self._stopping or self._downgrading):
            log.warning("disconnected from %s (%s); reconnecting", self.cfg.url, reason)

    def _on_publish(
        self,
        _client: mqtt.Client,
        _userdata: Any,
        _mid: int,
        reason: ReasonCode,
        _props: Properties | None,
    ) -> None:
        if self._on_publish_cb is not None:
            self._on_publish_cb(reason)

    def _on_message(self, _client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        """A message no `subscribe()` handler matches: dropped (and PUBACKed, or the
        broker would hand it over again and again)."""
        log.warning("ignored a message on unexpected topic %s", msg.topic)
        self.ack(msg.mid, msg.qos)


def _bare(handler: MessageHandler) -> Callable[[mqtt.Client, Any, mqtt.MQTTMessage], None]:
    """paho's per-topic callback signature around a handler that only wants the message."""
    return lambda _client, _userdata, msg: handler(msg)
