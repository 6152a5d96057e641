"""Ids become MQTT topic levels: only whole-string matches pass, never "door1\\n".

A trailing newline slipped past a `$`-anchored check; the topic it made got the bridge
dropped by the broker ("malformed packet") on every reconnect.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient
from pydantic import ValidationError

from cloud_bridge.api import create_app
from cloud_bridge.config import BridgeConfig
from cloud_bridge.db import Repository
from o2o_protocol.codes import b64url_decode
from o2o_protocol.config_file import validate_config
from o2o_protocol.messages import Event, check_id, new_event_id
from o2o_protocol.timeutil import parse_when
from o2o_protocol.topics import parse_kiosk_topic

TOKEN = "t0ken-for-id-tests-0123456789"
BAD_IDS = ["door1\n", "door1\r\n", "\ndoor1", "door 1", "door1/x", "+", "#", "", "d" * 65]


@pytest.mark.parametrize("bad", BAD_IDS)
def test_ids_match_as_a_whole(bad: str) -> None:
    with pytest.raises(ValueError):
        check_id(bad)
    assert parse_kiosk_topic(f"o2o/v1/shop/{bad}/events") is None
    assert parse_kiosk_topic(f"o2o/v1/{bad}/door1/events") is None
    assert check_id("door-1_A") == "door-1_A"


def test_envelope_fields_refuse_a_trailing_newline() -> None:
    good = {
        "id": new_event_id(),
        "seq": 1,
        "type": "checkin",
        "ts": "2026-12-01T10:00:00Z",
        "store": "shop",
        "kiosk": "door1",
        "data": {},
    }
    Event.model_validate(good)
    for key in ("id", "type", "ts", "store", "kiosk"):
        with pytest.raises(ValidationError):
            Event.model_validate({**good, key: good[key] + "\n"})


def test_relative_times_and_base64_match_as_a_whole() -> None:
    assert parse_when("+2h", 0) == 7200
    with pytest.raises(ValueError):
        parse_when("+2h\n+1d", 0)
    with pytest.raises(ValueError):
        b64url_decode("QUJD\n")
    assert b64url_decode("QUJD") == b"ABC"


def test_api_refuses_a_kiosk_id_ending_in_a_newline(tmp_path: Path, repo: Repository) -> None:
    raw = {"store": "shop", "kiosks": ["door1"]}
    config = validate_config(tmp_path / "bridge.toml", raw, BridgeConfig)
    client = TestClient(
        create_app(config, repo, token=TOKEN, signing_key=Ed25519PrivateKey.generate())
    )
    auth = {"Authorization": f"Bearer {TOKEN}"}
    body = {"name": "code.revoke", "data": {"id": "c1"}}
    r = client.post("/api/v1/kiosks/door1%0A/commands", json=body, headers=auth)
    assert r.status_code == 422, r.text
    assert repo.commands_after("shop", "door1\n", 0) == []
    assert client.post("/api/v1/kiosks/door1/commands", json=body, headers=auth).status_code == 201
    assert [c.name for c in repo.commands_after("shop", "door1", 0)] == ["code.revoke"]
