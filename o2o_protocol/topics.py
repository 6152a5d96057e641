"""MQTT topic names (docs/mqtt.md). Build and parse topics here, never by hand elsewhere."""

from __future__ import annotations

from typing import NamedTuple

from o2o_protocol.messages import ID_PATTERN

ROOT = "o2o/v1"

STATUS = "status"
EVENTS = "events"
ACKS = "acks"
CMD = "cmd"
KIOSK_LEAVES = (STATUS, EVENTS, ACKS, CMD)

HA_PREFIX = "homeassistant"
HA_STATUS = f"{HA_PREFIX}/status"

#: What the bridge subscribes to.
ALL_EVENTS = f"{ROOT}/+/+/{EVENTS}"
ALL_STATUS = f"{ROOT}/+/+/{STATUS}"


def kiosk_topic(store: str, kiosk: str, leaf: str) -> str:
    return f"{ROOT}/{store}/{kiosk}/{leaf}"


def stats_topic(store: str) -> str:
    return f"{ROOT}/{store}/stats"


def bridge_topic(store: str) -> str:
    """The bridge's own retained `{"online": bool}` (its Last Will says false)."""
    return f"{ROOT}/{store}/bridge"


def ha_discovery_topic(store: str, kiosk: str) -> str:
    return f"{HA_PREFIX}/device/o2o_{store}_{kiosk}/config"


def ha_store_discovery_topic(store: str) -> str:
    """The store's own figures as one Home Assistant device (the bridge announces it)."""
    return f"{HA_PREFIX}/device/o2o_{store}/config"


def shared(topic: str, group: str) -> str:
    """An MQTT v5 shared subscription, so several bridge workers split the ingest."""
    return f"$share/{group}/{topic}"


class KioskTopic(NamedTuple):
    store: str
    kiosk: str
    leaf: str


def parse_kiosk_topic(topic: str) -> KioskTopic | None:
    """Split `o2o/v1/{store}/{kiosk}/{leaf}`; None for anything else."""
    parts = topic.split("/")
    if len(parts) != 5 or f"{parts[0]}/{parts[1]}" != ROOT:
        return None
    store, kiosk, leaf = parts[2], parts[3], parts[4]
    ids_ok = ID_PATTERN.fullmatch(store) and ID_PATTERN.fullmatch(kiosk)
    if not ids_ok or leaf not in KIOSK_LEAVES:
        return None
    return KioskTopic(store, kiosk, leaf)
