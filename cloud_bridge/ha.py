"""Home Assistant MQTT device discovery for the store's own figures (one retained message).

Home Assistant builds one device per store from it, one entity per component; every
entity reads the retained `o2o/v1/{store}/stats` document the bridge already publishes,
so a dashboard shows the shop without any set-up and without extra traffic. The device is
available while the bridge is: it reads the bridge's retained `o2o/v1/{store}/bridge`
status, whose Last Will says `{"online": false}`. Announced on every connect and again
whenever Home Assistant publishes `online` on `homeassistant/status` (it forgets devices
when it restarts), as the kiosks do (kiosk/ha.py).

Among several workers (`leases.py`), discovery is the lease holder's job (`active`), and
the status is every worker's: each says online when it connects, and one that sees the
status say offline (another worker died and its Last Will fired, or it stopped) says
online again while it runs (`watch`). The status ends offline only when the last worker
is gone.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import paho.mqtt.client as mqtt

from o2o_protocol import topics
from o2o_protocol.messages import dumps
from o2o_protocol.mqtt import MqttLink, Will

log = logging.getLogger(__name__)

try:
    VERSION = version("o2o-kiosk")  # one distribution holds the kiosk and the bridge
except PackageNotFoundError:  # running from a checkout that is not installed
    VERSION = "0.0.0"

#: One component: (id, platform, name, value template, extra settings).
_Component = tuple[str, str, str, str, dict[str, Any]]


def _figure(key: str, name: str, icon: str) -> _Component:
    """A count of the stats document, as a measurement sensor."""
    extra = {"state_class": "measurement", "icon": icon}
    return (key, "sensor", name, f"{{{{ value_json.{key} }}}}", extra)


def _alert(key: str, name: str) -> _Component:
    """One of the stats document's `alerts`, as a problem binary sensor."""
    template = f"{{{{ 'ON' if value_json.alerts.{key} else 'OFF' }}}}"
    return (key, "binary_sensor", name, template, {"device_class": "problem"})


_COMPONENTS: tuple[_Component, ...] = (
    _figure("checkins", "Check-ins today", "mdi:door-open"),
    _figure("redemptions", "Coupons redeemed today", "mdi:ticket-percent"),
    _figure("pickups", "Pickups today", "mdi:locker"),
    _figure("joins", "New members today", "mdi:account-plus"),
    _figure("kiosks_online", "Kiosks online", "mdi:tablet"),
    _figure("ratings_today", "Ratings today", "mdi:star"),
    (
        "rating_average_today",
        "sensor",
        "Average rating today",
        # No rating yet today: null, which Home Assistant shows as unknown.
        "{{ value_json.rating_average_today if value_json.rating_average_today is not none"
        " else 'unknown' }}",
        {"icon": "mdi:star-half-full"},
    ),
    _figure("overdrawn_members", "Members overdrawn", "mdi:account-alert"),
    _figure("card_overuses", "Visit cards overused today", "mdi:card-remove"),
    _figure("double_redemptions", "Double redemptions today", "mdi:content-duplicate"),
    _alert("kiosk_offline", "A kiosk is offline"),
    _alert("printer_fault", "A printer needs attention"),
    _alert("locker_fault", "A locker has a fault"),
    _alert("double_redemption", "Double redemption or overused card today"),
    _alert("overdraft", "A member is overdrawn"),
)


def discovery(store: str) -> tuple[str, dict[str, Any]]:
    """The discovery topic and payload for the store's figures."""
    node = f"o2o_{store}"
    stats = topics.stats_topic(store)
    components = {
        f"{node}_{cid}": {
            "p": platform,
            "name": name,
            "unique_id": f"{node}_{cid}",
            "state_topic": stats,
            "value_template": template,
            **extra,
        }
        for cid, platform, name, template, extra in _COMPONENTS
    }
    payload = {
        "dev": {
            "ids": [node],
            "name": f"Shop {store}",
            "mf": "o2o-bridge",
            "mdl": "Shop figures",
            "sw": VERSION,
        },
        "o": {"name": "o2o-bridge", "sw": VERSION},
        "cmps": components,
        "availability": [
            {
                "topic": topics.bridge_topic(store),
                "value_template": "{{ 'online' if value_json.online else 'offline' }}",
            }
        ],
        "qos": 1,
    }
    return topics.ha_store_discovery_topic(store), payload


def bridge_will(store: str) -> Will:
    """The bridge's Last Will: its status says offline when its connection dies."""
    return Will(topics.bridge_topic(store), dumps({"online": False}))


class HaAnnouncer:
    """Says the bridge is online and announces the store's device on every connect
    (`connected()`, wired as the link's `on_connect`) and on Home Assistant's birth
    message; says offline on `stop()`, before the link goes."""

    def __init__(
        self, store: str, *, active: Callable[[], bool] | None = None, watch: bool = False
    ) -> None:
        """`active`: whether this process announces now (None: always); `watch`: say
        online again whenever the status says offline (one of several workers)."""
        self.store = store
        self.active = active
        self.watch = watch
        self.link: MqttLink | None = None
        self._stopping = False
        self._lock = threading.Lock()
        self._announced: int | None = None  # the link generation last announced on

    def attach(self, link: MqttLink) -> None:
        """Take the link and subscribe to Home Assistant's birth and will messages (and,
        for a worker, to the bridge's own status)."""
        self.link = link
        link.subscribe([topics.HA_STATUS], self._ha_status)
        if self.watch:
            link.subscribe([topics.bridge_topic(self.store)], self._bridge_status)

    def subscriptions(self) -> list[str]:
        """The topics every worker must get in full (never a shared subscription)."""
        return [topics.HA_STATUS, topics.bridge_topic(self.store)]

    def connected(self) -> None:
        """Say online and announce, once per connection: the link's connect and a lease
        taken (runtime.py) may both call this as the connection comes up."""
        if self.link is None:
            return
        with self._lock:
            self._publish_online(True)
            if self._announced != self.link.generation:
                self.announce()

    def forget(self) -> None:
        """This worker stopped announcing (its lease went): the next `connected()`
        announces again, even on the same connection."""
        with self._lock:
            self._announced = None

    def announce(self) -> None:
        if self.link is None or (self.active is not None and not self.active()):
            return
        topic, payload = discovery(self.store)
        self._announced = self.link.generation
        self.link.publish(topic, dumps(payload), qos=1, retain=True)

    def _publish_online(self, online: bool) -> None:
        if self.link is not None:
            self.link.publish(
                topics.bridge_topic(self.store), dumps({"online": online}), qos=1, retain=True
            )

    def _ha_status(self, msg: mqtt.MQTTMessage) -> None:
        """Home Assistant (re)started: announce again. Never raises (network thread)."""
        try:
            if self.link is not None:
                self.link.ack(msg.mid, msg.qos)
            if msg.payload.strip() == b"online":
                self.announce()
        except Exception:
            log.exception("could not answer Home Assistant's birth message")

    def _bridge_status(self, msg: mqtt.MQTTMessage) -> None:
        """The bridge's status changed: if it says offline while this worker runs, another
        worker has gone; say online again. Never raises (network thread)."""
        try:
            if self.link is not None:
                self.link.ack(msg.mid, msg.qos)
            if self._stopping:
                return
            try:
                online = json.loads(msg.payload).get("online")
            except (ValueError, AttributeError):
                online = None
            if online is False:
                log.info("the bridge's status says offline while this worker runs: online")
                self._publish_online(True)
        except Exception:
            log.exception("could not answer the bridge's status")

    def start(self) -> None:
        """Nothing to start: `connected()` announces once the link is up."""
        self._stopping = False

    def stop(self) -> None:
        """Say offline while the link is still up (a clean stop sends no Last Will)."""
        self._stopping = True
        if self.link is None or not self.link.connected:
            return
        try:
            info = self.link.publish(
                topics.bridge_topic(self.store), dumps({"online": False}), qos=1, retain=True
            )
            info.wait_for_publish(2)
        except Exception:
            log.warning("could not say offline to Home Assistant")
