"""`/api/v1/members` as the shop's online side uses it: create members (crediting who
shared the link), read balances and ledgers, earn and spend points, safely repeated."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient

from cloud_bridge.api import create_app
from cloud_bridge.commands import CommandService
from cloud_bridge.config import BridgeConfig
from cloud_bridge.db import Repository
from cloud_bridge.members import MemberService
from cloud_bridge.rewards import RewardService
from o2o_protocol.codes import Code, CodeType, key_id, verify_code
from o2o_protocol.config_file import validate_config
from o2o_protocol.messages import Event, new_event_id
from o2o_protocol.timeutil import parse_rfc3339, rfc3339
from tests.support import free_port, missing_component, wait_for_port
from tests.test_dashboard import CHROMIUM, _dump_dom, _parse

TOKEN = "t0ken-for-tests-0123456789"
READ = "read-0nly-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
READ_AUTH = {"Authorization": f"Bearer {READ}"}


@pytest.fixture
def client(tmp_path: Path, repo: Repository) -> TestClient:
    raw = {"store": "s1", "kiosks": ["k1", "k2"], "members": {"referral_points": 50}}
    config = validate_config(tmp_path / "bridge.toml", raw, BridgeConfig)
    app = create_app(
        config, repo, token=TOKEN, read_token=READ, signing_key=Ed25519PrivateKey.generate()
    )
    return TestClient(app)


def post(client: TestClient, path: str, body: Any, **headers: str) -> Any:
    return client.post(path, json=body, headers={**AUTH, **headers})


def points(client: TestClient, member: str, delta: Any, reason: Any = "test", **h: str) -> Any:
    return post(client, f"/api/v1/members/{member}/points", {"delta": delta, "reason": reason}, **h)


def test_create_read_and_rename_a_member(client: TestClient) -> None:
    r = post(client, "/api/v1/members", {"id": "ada", "name": "Ada"})
    assert r.status_code == 201
    body = r.json()
    assert {k: body[k] for k in ("id", "name", "points", "visits", "last_visit")} == {
        "id": "ada",
        "name": "Ada",
        "points": 0,
        "visits": 0,
        "last_visit": None,
    }
    assert (body["source"], body["referrer"], body["overdrawn"]) == ("online", None, False)
    parse_rfc3339(body["joined_at"])
    # Again: it existed (200), renamed since a name was given.
    r = post(client, "/api/v1/members", {"id": "ada", "name": "Ada L."})
    assert r.status_code == 200 and r.json()["name"] == "Ada L."
    assert post(client, "/api/v1/members", {"id": "ada"}).json()["name"] == "Ada L."
    got = client.get("/api/v1/members/ada", headers=READ_AUTH)
    assert got.status_code == 200 and got.json()["name"] == "Ada L."
    assert client.get("/api/v1/members/nobody", headers=AUTH).status_code == 404
    listed = client.get("/api/v1/members", headers=READ_AUTH).json()["members"]
    assert [m["id"] for m in listed] == ["ada"]


def test_a_member_created_online_gets_a_link_to_its_page(tmp_path: Path, repo: Repository) -> None:
    raw = {"store": "s1", "kiosks": ["k1"], "members": {"page_url": "https://shop.example"}}
    config = validate_config(tmp_path / "bridge.toml", raw, BridgeConfig)
    key = Ed25519PrivateKey.generate()
    client = TestClient(create_app(config, repo, token=TOKEN, read_token=READ, signing_key=key))
    created = post(client, "/api/v1/members", {"id": "u-8812", "name": "Li"})
    got = client.get("/api/v1/members/u-8812", headers=READ_AUTH)
    assert (created.status_code, got.status_code) == (201, 200)
    for url in (created.json()["page_url"], got.json()["page_url"]):
        base, _, token = url.rpartition("/m/")
        assert base == "https://shop.example"
        trusted = {key_id(key.public_key()): key.public_key()}
        code = verify_code(token, trusted, store="s1", now=time.time() + 400 * 86400)
        assert isinstance(code, Code), code  # a member code of this store, no expiry
        assert (code.type, code.id) == (CodeType.MEMBER, "u-8812")
        page = client.get(f"/m/{token}")
        assert page.status_code == 200 and "Li" in page.text
    # Codes signed without a key (a reward service built without one): no field.
    keyless = TestClient(
        create_app(
            config,
            repo,
            token=TOKEN,
            read_token=READ,
            signing_key=key,
            rewards=RewardService(repo, config, None, CommandService(repo, "s1")),
        )
    )
    assert "page_url" not in keyless.get("/api/v1/members/u-8812", headers=READ_AUTH).json()


def test_a_shared_link_credits_the_referrer_once(client: TestClient) -> None:
    post(client, "/api/v1/members", {"id": "ada", "name": "Ada"})
    r = post(client, "/api/v1/members", {"id": "bob", "name": "Bob", "referrer": "ada"})
    assert r.status_code == 201 and r.json()["referrer"] == "ada"
    post(client, "/api/v1/members", {"id": "bob", "name": "Bob", "referrer": "ada"})
    ada = client.get("/api/v1/members/ada", headers=AUTH).json()
    assert ada["points"] == 50
    ledger = client.get("/api/v1/members/ada/ledger", headers=AUTH).json()["entries"]
    assert [(e["delta"], e["reason"], e["ref"]) for e in ledger] == [
        (50, "referral:bob", "referral:bob")
    ]


def test_earn_and_spend_with_an_idempotency_key(client: TestClient, repo: Repository) -> None:
    post(client, "/api/v1/members", {"id": "ada", "name": "Ada"})
    r = points(client, "ada", 40, "birthday", **{"Idempotency-Key": "order 77/a"})
    assert (r.status_code, r.json()) == (200, {"id": "ada", "points": 40})
    r = points(client, "ada", 40, "birthday", **{"Idempotency-Key": "order 77/a"})
    assert (r.status_code, r.json()) == (200, {"id": "ada", "points": 40})
    assert points(client, "ada", -15, "coffee voucher").json() == {"id": "ada", "points": 25}
    # A key once used for another change is a conflict, not a silent success.
    r = points(client, "ada", -40, "birthday", **{"Idempotency-Key": "order 77/a"})
    assert r.status_code == 409
    ledger = client.get("/api/v1/members/ada/ledger?limit=5", headers=READ_AUTH).json()
    assert [(e["delta"], e["reason"], e["source"]) for e in ledger["entries"]] == [
        (-15, "coffee voucher", "online"),
        (40, "birthday", "online"),
    ]
    assert ledger["entries"][1]["ref"] == "key:order 77/a"
    assert ledger["entries"][1]["overdraft"] is False
    # Every kiosk heard the new balance.
    for kiosk in ("k1", "k2"):
        sent = [c.data for c in repo.commands_after("s1", kiosk, 0) if c.name == "member.upsert"]
        assert sent[-1]["points"] == 25


def test_a_spend_below_zero_is_refused_409(client: TestClient) -> None:
    post(client, "/api/v1/members", {"id": "ada"})
    points(client, "ada", 10)
    r = points(client, "ada", -11, "too much")
    assert r.status_code == 409 and "below zero" in r.json()["detail"]
    assert client.get("/api/v1/members/ada", headers=AUTH).json()["points"] == 10
    assert len(client.get("/api/v1/members/ada/ledger", headers=AUTH).json()["entries"]) == 1


def test_overdrawn_members_are_listed(client: TestClient, repo: Repository) -> None:
    members: MemberService = client.app.state.members  # type: ignore[attr-defined]
    now = rfc3339(parse_rfc3339("2026-12-01T10:00:00Z").timestamp())
    events = [
        Event(id=new_event_id(), seq=1, type="checkin", ts=now, store="s1", kiosk="k1",
              data={"member_id": "ada", "name": "Ada", "points_earned": 20, "counted": True}),
        Event(id=new_event_id(), seq=2, type="points.redeemed", ts=now, store="s1", kiosk="k1",
              data={"member_id": "ada", "reward_id": "tea", "points": 20}),
        Event(id=new_event_id(), seq=1, type="points.redeemed", ts=now, store="s1", kiosk="k2",
              data={"member_id": "ada", "reward_id": "tea", "points": 20}),
    ]  # fmt: skip
    members.after_stored(events, set(repo.add_events(events)))
    post(client, "/api/v1/members", {"id": "bob"})
    r = client.get("/api/v1/members?overdrawn=true", headers=READ_AUTH)
    assert r.status_code == 200
    assert [(m["id"], m["points"], m["overdrawn"]) for m in r.json()["members"]] == [
        ("ada", -20, True)
    ]
    assert client.get("/api/v1/stats", headers=AUTH).json()["overdrawn_members"] == 1
    ledger = client.get("/api/v1/members/ada/ledger", headers=AUTH).json()["entries"]
    assert [e["overdraft"] for e in ledger] == [True, False, False]
    # Paid back online: the owner no longer sees it.
    assert points(client, "ada", 20, "settled").json()["points"] == 0
    assert client.get("/api/v1/members?overdrawn=true", headers=AUTH).json()["members"] == []


def test_tokens(client: TestClient) -> None:
    assert client.get("/api/v1/members/ada").status_code == 401
    assert client.post("/api/v1/members", json={"id": "ada"}).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert client.get("/api/v1/members/ada/ledger", headers=wrong).status_code == 401
    # The read-only token reads but changes nothing.
    r = client.post("/api/v1/members", json={"id": "ada"}, headers=READ_AUTH)
    assert r.status_code == 403
    r = client.post(
        "/api/v1/members/ada/points", json={"delta": 5, "reason": "x"}, headers=READ_AUTH
    )
    assert r.status_code == 403
    assert client.get("/api/v1/members/ada", headers=READ_AUTH).status_code == 404


@pytest.mark.parametrize(
    ("path", "body", "headers"),
    [
        ("/api/v1/members", {"id": ""}, {}),
        ("/api/v1/members", {"id": "x" * 257}, {}),
        ("/api/v1/members", {"id": "a\nb"}, {}),
        ("/api/v1/members", {"id": "ada", "name": "n" * 101}, {}),
        ("/api/v1/members", {"id": "ada", "extra": 1}, {}),
        ("/api/v1/members", {"id": 5}, {}),
        ("/api/v1/members/ada/points", {"delta": 0, "reason": "nothing"}, {}),
        ("/api/v1/members/ada/points", {"delta": "5", "reason": "text"}, {}),
        ("/api/v1/members/ada/points", {"delta": True, "reason": "bool"}, {}),
        ("/api/v1/members/ada/points", {"delta": 2.5, "reason": "half"}, {}),
        ("/api/v1/members/ada/points", {"delta": 10**12, "reason": "huge"}, {}),
        ("/api/v1/members/ada/points", {"delta": 5, "reason": ""}, {}),
        ("/api/v1/members/ada/points", {"delta": 5}, {}),
        ("/api/v1/members/ada/points", {"delta": 5, "reason": "x"}, {"Idempotency-Key": "k" * 201}),
        ("/api/v1/members/ada/points", {"delta": 5, "reason": "x"}, {"Idempotency-Key": "a\tb"}),
    ],
)
def test_bad_input_is_a_422(
    client: TestClient, path: str, body: dict[str, Any], headers: dict[str, str]
) -> None:
    post(client, "/api/v1/members", {"id": "ada"})
    r = post(client, path, body, **headers)
    assert r.status_code == 422, r.text
    assert isinstance(r.json()["detail"], list)
    assert client.get("/api/v1/members/ada", headers=AUTH).json()["points"] == 0


def test_unknown_members_are_404(client: TestClient) -> None:
    assert points(client, "ghost", 5).status_code == 404
    assert client.get("/api/v1/members/ghost/ledger", headers=AUTH).status_code == 404
    assert client.get("/api/v1/members/ghost", headers=AUTH).json() == {
        "detail": "no member 'ghost'"
    }
    assert client.get("/api/v1/members/ghost", headers=AUTH).status_code == 404
    assert client.get("/api/v1/members/%00", headers=AUTH).status_code == 422


def test_the_openapi_document_lists_the_member_routes(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert set(paths["/api/v1/members"]) == {"get", "post"}
    change = paths["/api/v1/members/{member_id}/points"]["post"]
    assert {"404", "409", "422", "401", "403"} <= set(change["responses"])
    assert any(p["name"] == "Idempotency-Key" for p in change["parameters"])


def test_the_dashboard_names_overdrawn_members(tmp_path: Path, repo: Repository) -> None:
    if CHROMIUM is None:
        missing_component("chromium", "apt-get install chromium, or run scripts/setup.sh")
    config = validate_config(tmp_path / "bridge.toml", {"store": "s1"}, BridgeConfig)
    app = create_app(config, repo, token=TOKEN, signing_key=Ed25519PrivateKey.generate())
    members: MemberService = app.state.members
    members.create("ada", "Ada")
    members.create("bob", "Bob")
    now = rfc3339(time.time())
    spends = [
        Event(id=new_event_id(), seq=1, type="points.redeemed", ts=now, store="s1", kiosk=k,
              data={"member_id": "ada", "reward_id": "tea", "points": 20})
        for k in ("k1", "k2")
    ]  # fmt: skip
    members.after_stored(spends, set(repo.add_events(spends)))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for_port("127.0.0.1", port, 10)
        url = f"http://127.0.0.1:{port}/#token={TOKEN}"
        dom = _dump_dom(url, tmp_path, "en-US")
        page = dom.split("<script>")[0]
        assert "alerts" not in _parse(dom).hidden, page[-3000:]
        assert "Members below zero points (two offline kiosks spent the same points): <b>1</b>" in (
            page
        )
        dom = _dump_dom(url, tmp_path, "zh-CN")
        assert "<b>1</b> 位会员积分为负" in dom.split("<script>")[0]
        # Settled: the line goes.
        members.change_points("ada", 40, "settled")
        page = _dump_dom(url, tmp_path, "en-US").split("<script>")[0]
        assert "Members below zero points" not in page
    finally:
        server.should_exit = True
        thread.join(10)
