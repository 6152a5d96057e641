"""The REST API and dashboard, as the shop's online side and the owner see them."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient

from cloud_bridge.api import create_app
from cloud_bridge.config import BridgeConfig
from cloud_bridge.db import Repository
from o2o_protocol.codes import Code, key_id, verify_code
from o2o_protocol.config_file import validate_config
from o2o_protocol.messages import Event, Status, new_event_id
from o2o_protocol.timeutil import rfc3339

TOKEN = "t0ken-for-tests-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
KEY = Ed25519PrivateKey.generate()


@pytest.fixture
def client(tmp_path: Path, repo: Repository) -> TestClient:
    raw = {"store": "s1", "kiosks": ["k1", "k2"], "api": {"code_url": "https://shop.example/c/"}}
    config = validate_config(tmp_path / "bridge.toml", raw, BridgeConfig)
    return TestClient(create_app(config, repo, token=TOKEN, signing_key=KEY))


def problems(r: object) -> str:
    """A 422's `detail` (always FastAPI's list of {loc, msg, type}) as one text to search."""
    detail = r.json()["detail"]  # type: ignore[attr-defined]
    assert isinstance(detail, list) and all({"loc", "msg", "type"} <= set(d) for d in detail)
    return json.dumps(detail, ensure_ascii=False)


def ev(type_: str, seq: int, ts: float, kiosk: str = "k1", **data: object) -> Event:
    return Event(
        id=new_event_id(), seq=seq, type=type_, ts=rfc3339(ts), store="s1", kiosk=kiosk, data=data
    )


@pytest.mark.parametrize("path", ["/api/v1/events", "/api/v1/stats", "/api/v1/kiosks"])
def test_api_needs_the_token(client: TestClient, path: str) -> None:
    assert client.get(path).status_code == 401
    assert client.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get(path, headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401
    assert client.get(path, headers=AUTH).status_code == 200
    assert client.post("/api/v1/codes", json={"type": "member"}).status_code == 401


def test_events_newest_first_with_filters(client: TestClient, repo: Repository) -> None:
    now = time.time()
    repo.add_events(
        [
            ev("checkin", 1, now - 7200),
            ev("scan.rejected", 2, now - 60, reason="expired"),
            ev("checkin", 1, now - 30, kiosk="k2"),
        ]
    )
    body = client.get("/api/v1/events", headers=AUTH).json()
    assert [(e["type"], e["kiosk"]) for e in body["events"]] == [
        ("checkin", "k2"),
        ("scan.rejected", "k1"),
        ("checkin", "k1"),
    ]
    first = body["events"][1]
    assert set(first) >= {"id", "seq", "type", "ts", "store", "kiosk", "data", "received_at"}
    assert first["data"] == {"reason": "expired"}

    def types(**params: object) -> list[str]:
        r = client.get("/api/v1/events", headers=AUTH, params=params)
        assert r.status_code == 200, r.text
        return [e["type"] for e in r.json()["events"]]

    assert types(type="checkin") == ["checkin", "checkin"]
    assert types(kiosk="k1", limit=1) == ["scan.rejected"]
    assert types(since="-1h") == ["checkin", "scan.rejected"]
    assert types(since=datetime.now(UTC).isoformat()) == []
    assert client.get("/api/v1/events?since=yesterday", headers=AUTH).status_code == 422
    assert client.get("/api/v1/events?limit=0", headers=AUTH).status_code == 422


def test_stats_and_kiosks(client: TestClient, repo: Repository) -> None:
    now = time.time()
    repo.add_events(
        [
            ev("checkin", 1, now),
            ev("coupon.redeemed", 2, now),
            ev("scan.rejected", 3, now, reason="already_used"),
        ]
    )
    repo.set_status("s1", "k1", Status(online=True, outbox=2), seen=datetime.now(UTC))
    stats = client.get("/api/v1/stats", headers=AUTH).json()
    assert (stats["checkins"], stats["redemptions"], stats["rejected"]) == (1, 1, 1)
    assert stats["rejections"] == {"already_used": 1}
    kiosks = {k["kiosk"]: k for k in client.get("/api/v1/kiosks", headers=AUTH).json()["kiosks"]}
    assert kiosks["k1"]["online"] is True and kiosks["k1"]["status"]["outbox"] == 2
    assert kiosks["k1"]["last_seen"] is not None
    assert kiosks["k2"] == {
        "store": "s1",
        "kiosk": "k2",
        "online": False,
        "last_seen": None,
        "status": None,
    }


@pytest.mark.parametrize(
    "body",
    [
        {"type": "member", "name": "小明"},
        {"type": "coupon", "campaign": "spring", "value": "¥10 off"},
        {"type": "pickup", "order": "A12"},
        {"type": "staff", "id": "alice"},
        {"type": "reservation", "at": "+2h", "service": "haircut"},
    ],
)
def test_post_codes_gives_codes_a_kiosk_accepts(client: TestClient, body: dict[str, str]) -> None:
    r = client.post("/api/v1/codes", headers=AUTH, json=body)
    assert r.status_code == 201, r.text
    out = r.json()
    keys = {key_id(KEY.public_key()): KEY.public_key()}
    code = verify_code(out["code"], keys, store="s1", now=time.time())
    assert isinstance(code, Code), code
    assert code.id == out["id"]
    assert out["url"] == "https://shop.example/c/" + out["code"]
    assert isinstance(verify_code(out["url"], keys, store="s1", now=time.time()), Code)


def test_post_codes_refuses_bad_requests(client: TestClient) -> None:
    assert client.post("/api/v1/codes", headers=AUTH, json={"type": "pickup"}).status_code == 422
    assert client.post("/api/v1/codes", headers=AUTH, json={"type": "gold"}).status_code == 422
    r = client.post("/api/v1/codes", headers=AUTH, json={"type": "member", "colour": "red"})
    assert r.status_code == 422


def test_dashboard_health_and_openapi_are_public(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "/api/v1/" in page.text and "localStorage" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # no CDN
    assert client.get("/health").json()["status"] == "ok"
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/api/v1/events", "/api/v1/stats", "/api/v1/kiosks", "/api/v1/codes"} <= set(paths)


def test_commands_are_queued_per_kiosk(client: TestClient, repo: Repository) -> None:
    url = "/api/v1/kiosks/k1/commands"
    body = {"name": "preorder.upsert", "data": {"order": "A12", "locker": 2}}
    assert client.post(url, json=body).status_code == 401
    r = client.post(url, headers=AUTH, json=body)
    assert r.status_code == 201, r.text
    assert r.json() == {"kiosk": "k1", "seq": 1, **body}
    revoke = {"name": "code.revoke", "data": {"id": "c1"}}
    assert client.post(url, headers=AUTH, json=revoke).json()["seq"] == 2
    assert client.post("/api/v1/kiosks/k2/commands", headers=AUTH, json=body).json()["seq"] == 1
    assert [c.seq for c in repo.commands_after("s1", "k1", 0)] == [1, 2]
    assert client.post(url, headers=AUTH, json={"data": {}}).status_code == 422


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "bEaReR"])
def test_the_auth_scheme_is_case_insensitive(client: TestClient, scheme: str) -> None:
    ok = client.get("/api/v1/stats", headers={"Authorization": f"{scheme} {TOKEN}"})
    assert ok.status_code == 200
    wrong = client.get("/api/v1/stats", headers={"Authorization": f"{scheme} {TOKEN}x"})
    assert wrong.status_code == 401


@pytest.mark.parametrize(
    ("body", "expect"),
    [
        ({"name": "self.destruct", "data": {}}, "does not match any of the expected tags"),
        ({"name": "locker.open", "data": {}}, "locker"),
        ({"name": "locker.open", "data": {"locker": "three"}}, "locker"),
        ({"name": "preorder.upsert", "data": {"size": "XL", "order": "A1"}}, "size"),
        ({"name": "code.revoke", "data": {}}, "id"),
    ],
)
def test_bad_commands_are_refused_and_not_queued(
    client: TestClient, repo: Repository, body: dict[str, object], expect: str
) -> None:
    r = client.post("/api/v1/kiosks/k1/commands", headers=AUTH, json=body)
    assert r.status_code == 422, r.text
    assert expect in problems(r)
    assert repo.commands_after("s1", "k1", 0) == []


def test_locker_open_gets_a_short_expiry(client: TestClient, repo: Repository) -> None:
    url = "/api/v1/kiosks/k1/commands"
    before = int(time.time())
    r = client.post(url, headers=AUTH, json={"name": "locker.open", "data": {"locker": 3}})
    assert r.status_code == 201, r.text
    expires = r.json()["data"]["expires"]
    assert before + 300 <= expires <= int(time.time()) + 300
    assert repo.commands_after("s1", "k1", 0)[0].data == {"locker": 3, "expires": expires}
    own = {"name": "locker.open", "data": {"locker": 3, "expires": before + 60}}
    assert client.post(url, headers=AUTH, json=own).json()["data"]["expires"] == before + 60


def test_rejected_events_are_listed(client: TestClient, repo: Repository) -> None:
    bad = ev("checkin", 1, time.time(), note="a\u0000b")
    repo.reject_event(bad, "UnstorableEvent: NUL")
    assert client.get("/api/v1/rejected-events").status_code == 401
    r = client.get("/api/v1/rejected-events", headers=AUTH)
    assert r.status_code == 200, r.text
    [q] = r.json()["rejected_events"]
    assert (q["id"], q["store"], q["kiosk"], q["error"]) == (
        bad.id,
        "s1",
        "k1",
        "UnstorableEvent: NUL",
    )
    assert json.loads(q["raw"]) == bad.model_dump() and q["received_at"].endswith("Z")
    later = client.get("/api/v1/rejected-events", headers=AUTH, params={"since": "+1h"})
    assert later.json() == {"rejected_events": []}
    assert "/api/v1/rejected-events" in client.get("/openapi.json").json()["paths"]


def test_bad_input_is_422_not_500(client: TestClient) -> None:
    long_name = {"type": "member", "name": "字" * 700}
    r = client.post("/api/v1/codes", headers=AUTH, json=long_name)
    assert r.status_code == 422 and "at most 100 characters" in problems(r)
    for since in ("+99999999999999999999d", "-99999999999999999999d", "yesterday", "2026-02-30"):
        for path in ("/api/v1/events", "/api/v1/rejected-events"):
            r = client.get(path, headers=AUTH, params={"since": since})
            assert r.status_code == 422, (path, since, r.text)
            assert '"since"' in problems(r)


def test_since_takes_what_openapi_says(client: TestClient) -> None:
    """RFC 3339 date-times (any year), dates and bounded offsets; far times match nothing
    or everything rather than failing."""
    for since in (
        "9999-12-31T23:00:00-05:00",
        "0001-01-01T00:00:00+01:00",
        "2026-12-01t10:00:00.123456789z",
        "2026-12-01",
        "-999999999w",
        "+1.5h",
    ):
        r = client.get("/api/v1/events", headers=AUTH, params={"since": since})
        assert r.status_code == 200, (since, r.text)
    schema = client.get("/openapi.json").json()["paths"]["/api/v1/events"]["get"]
    [param] = [p for p in schema["parameters"] if p["name"] == "since"]
    formats = {s.get("format") for s in param["schema"]["anyOf"]}
    assert {"date-time", "date"} <= formats


def test_stats_show_double_redemptions(client: TestClient, repo: Repository) -> None:
    now = time.time()
    repo.add_events([ev("coupon.redeemed", 1, now, coupon_id="c9")])
    repo.add_events([ev("coupon.redeemed", 1, now, kiosk="k2", coupon_id="c9")])
    assert client.get("/api/v1/stats", headers=AUTH).json()["double_redemptions"] == 1
    assert "double_redemptions" in client.get("/").text


def test_the_read_only_token_reads_but_cannot_issue_or_command(
    tmp_path: Path, repo: Repository
) -> None:
    config = validate_config(
        tmp_path / "bridge.toml", {"store": "s1", "kiosks": ["k1"]}, BridgeConfig
    )
    reader = "r" * 32
    app = TestClient(create_app(config, repo, token=TOKEN, read_token=reader, signing_key=KEY))
    as_reader = {"Authorization": f"Bearer {reader}"}
    assert app.get("/api/v1/stats", headers=as_reader).status_code == 200
    assert app.get("/api/v1/events", headers=as_reader).status_code == 200
    assert app.post("/api/v1/codes", json={"type": "staff"}, headers=as_reader).status_code == 403
    denied = app.post(
        "/api/v1/kiosks/k1/commands",
        headers=as_reader,
        json={"name": "locker.open", "data": {"locker": 1}},
    )
    assert denied.status_code == 403
    as_owner = {"Authorization": f"Bearer {TOKEN}"}
    assert app.post("/api/v1/codes", json={"type": "staff"}, headers=as_owner).status_code == 201


def test_events_flag_a_kiosk_clock_far_off(client: TestClient, repo: Repository) -> None:
    now = time.time()
    ahead, fine = ev("checkin", 1, now + 400 * 86400), ev("checkin", 2, now)
    repo.add_events([ahead, fine])
    events = client.get("/api/v1/events", headers=AUTH).json()["events"]
    assert {e["id"]: e["ts_flag"] for e in events} == {ahead.id: "ahead", fine.id: None}
