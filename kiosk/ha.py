"""Home Assistant MQTT device discovery for a kiosk (one retained config message).

Home Assistant builds a device with one entity per component from it; the entities read
the kiosk's own retained `status` topic, so no extra telemetry traffic is needed. Any
other MQTT dashboard app can subscribe to the same status topic directly.
"""

from __future__ import annotations

from typing import Any

from o2o_protocol import topics

#: (component id, platform, name, value template, extra settings)
_COMPONENTS: tuple[tuple[str, str, str, str, dict[str, Any]], ...] = (
    (
        "outbox",
        "sensor",
        "Events waiting to sync",
        "{{ value_json.outbox }}",
        {"state_class": "measurement", "unit_of_measurement": "events", "icon": "mdi:tray-full"},
    ),
    (
        "camera",
        "sensor",
        "Camera",
        "{{ value_json.camera | default('unknown') }}",
        {"icon": "mdi:cctv"},
    ),
    (
        "printer",
        "sensor",
        "Printer",
        "{{ value_json.printer.state | default(value_json.printer) | default('unknown') }}",
        {"icon": "mdi:printer-pos"},
    ),
    (
        "lockers_open",
        "sensor",
        "Lockers open",
        "{{ value_json.lockers.open | default(0) }}",
        {"state_class": "measurement", "icon": "mdi:locker-multiple"},
    ),
    (
        "locker_faults",
        "sensor",
        "Locker faults",
        "{{ value_json.lockers.faults | default(0) }}",
        {"state_class": "measurement", "icon": "mdi:alert"},
    ),
    (
        "last_cmd_seq",
        "sensor",
        "Last command applied",
        "{{ value_json.last_cmd_seq }}",
        {"entity_category": "diagnostic"},
    ),
    (
        "version",
        "sensor",
        "Software version",
        "{{ value_json.version }}",
        {"entity_category": "diagnostic"},
    ),
)


def discovery(store: str, kiosk: str, version: str) -> tuple[str, dict[str, Any]]:
    """The discovery topic and payload for one kiosk."""
    node = f"o2o_{store}_{kiosk}"
    status = topics.kiosk_topic(store, kiosk, topics.STATUS)
    components = {
        f"{node}_{cid}": {
            "p": platform,
            "name": name,
            "unique_id": f"{node}_{cid}",
            "value_template": template,
            **extra,
        }
        for cid, platform, name, template, extra in _COMPONENTS
    }
    payload = {
        "dev": {
            "ids": [node],
            "name": f"Kiosk {kiosk} ({store})",
            "mf": "o2o-kiosk",
            "mdl": "Shop door kiosk",
            "sw": version,
        },
        "o": {"name": "o2o-kiosk", "sw": version},
        "cmps": components,
        "state_topic": status,
        "availability": [
            {
                "topic": status,
                "value_template": "{{ 'online' if value_json.online else 'offline' }}",
            }
        ],
        "qos": 1,
    }
    return topics.ha_discovery_topic(store, kiosk), payload
