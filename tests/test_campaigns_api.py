"""`/api/v1/campaigns` as the shop's online side calls it (docs/rest-api.md), on real SQLite
and PostgreSQL: make a campaign, ask for its codes, read what it brought."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient

from cloud_bridge.api import create_app
from cloud_bridge.config import BridgeConfig
from cloud_bridge.db import Repository
from o2o_protocol.codes import Code, key_id, verify_code
from o2o_protocol.config_file import validate_config
from o2o_protocol.messages import Event, new_event_id
from o2o_protocol.timeutil import rfc3339

STORE = "s1"
TOKEN = "campaigns-test-token-0123456789"
READ = "campaigns-read-token-0123456789"
FULL = {"Authorization": f"Bearer {TOKEN}"}
READ_ONLY = {"Authorization": f"Bearer {READ}"}


class Shop:
    def __init__(self, api: TestClient, key: Ed25519PrivateKey, repo: Repository) -> None:
        self.api = api
        self.key = key
        self.repo = repo

    def create(self, **body: Any) -> dict[str, Any]:
        r = self.api.post("/api/v1/campaigns", json=body, headers=FULL)
        assert r.status_code == 201, r.text
        out: dict[str, Any] = r.json()
        return out

    def codes(self, id: str, **body: Any) -> Any:
        return self.api.post(f"/api/v1/campaigns/{id}/codes", json=body, headers=FULL)


@pytest.fixture
def shop(tmp_path: Path, any_repo: Repository) -> Shop:
    config = validate_config(
        tmp_path / "bridge.toml",
        {"store": STORE, "kiosks": ["k1"], "api": {"code_url": "https://shop.example/c/"}},
        BridgeConfig,
    )
    key = Ed25519PrivateKey.generate()
    app = create_app(config, any_repo, token=TOKEN, read_token=READ, signing_key=key)
    return Shop(TestClient(app), key, any_repo)


def test_a_campaign_made_issued_and_counted_through_the_api(shop: Shop) -> None:
    hours = [{"days": [2, 3, 4, 5], "from": "14:00", "to": "17:00"}]
    made = shop.create(
        name="春季团购",
        kind="group_buy",
        value="双人套餐",
        quantity=100,
        per_member=1,
        hours=hours,
        starts="2026-03-01",
        ends="2099-05-31T23:59:59+08:00",
    )
    assert made["id"].startswith("cp-") and made["name"] == "春季团购"
    assert (made["issued"], made["redeemed"], made["left"]) == (0, 0, 100)
    assert made["hours"] == hours and made["ends"] == "2099-05-31T15:59:59.000Z"

    r = shop.codes(made["id"], count=1, member="m-ada")
    assert r.status_code == 201, r.text
    [code] = r.json()["codes"]
    assert code["url"] == "https://shop.example/c/" + code["code"]
    keys = {key_id(shop.key.public_key()): shop.key.public_key()}
    verified = verify_code(code["code"], keys, store=STORE, now=time.time())
    assert isinstance(verified, Code) and verified.id == code["id"]
    assert verified.campaign == made["id"]

    # One each: Ada's second is refused, and nothing is issued.
    r = shop.codes(made["id"], count=1, member="m-ada")
    assert r.status_code == 409 and "at most 1 each" in r.json()["detail"]

    shop.repo.add_events(
        [
            Event(
                id=new_event_id(),
                seq=1,
                type="coupon.redeemed",
                ts=rfc3339(time.time()),
                store=STORE,
                kiosk="k1",
                data={"coupon_id": code["id"], "campaign": made["id"]},
            )
        ]
    )
    got = shop.api.get(f"/api/v1/campaigns/{made['id']}", headers=READ_ONLY).json()
    assert (got["issued"], got["redeemed"], got["left"]) == (1, 1, 99)
    assert len(got["redeemed_by_hour"]) == 24 and sum(got["redeemed_by_hour"]) == 1
    assert "uses_redeemed" not in got
    listed = shop.api.get("/api/v1/campaigns", headers=READ_ONLY).json()["campaigns"]
    assert [(c["id"], c["redeemed"]) for c in listed] == [(made["id"], 1)]


def test_the_last_flash_sale_codes_go_to_exactly_as_many_as_there_are(shop: Shop) -> None:
    sale = shop.create(name="秒杀", kind="flash_sale", value="1元拿铁", quantity=15)
    assert shop.codes(sale["id"], count=5).status_code == 201
    barrier = threading.Barrier(20)
    answers: list[int] = []

    def ask() -> None:
        barrier.wait()
        answers.append(shop.codes(sale["id"], count=1).status_code)

    threads = [threading.Thread(target=ask) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(answers) == [201] * 10 + [409] * 10
    r = shop.codes(sale["id"], count=2)
    assert r.status_code == 409 and r.json()["detail"] == "only 0 code(s) left, 2 asked for"
    got = shop.api.get(f"/api/v1/campaigns/{sale['id']}", headers=FULL).json()
    assert (got["issued"], got["left"]) == (15, 0)


def test_a_visit_card_campaign_says_its_uses(shop: Shop) -> None:
    card = shop.create(name="洗车次卡", kind="visit_card", value="洗车一次", uses=5)
    assert card["uses"] == 5 and card["uses_redeemed"] == 0
    assert len(shop.codes(card["id"], count=3).json()["codes"]) == 3


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"kind": "visit_card"}, "uses"),
        ({"uses": 3}, "uses"),
        ({"kind": "lottery"}, "kind"),
        ({"quantity": 0}, "quantity"),
        ({"per_member": 0}, "per_member"),
        ({"hours": [{"days": [1, 1], "from": "09:00", "to": "10:00"}]}, "hours"),
        ({"hours": [{"days": [1], "from": "9:00", "to": "10:00"}]}, "hours"),
        ({"starts": "2027-02-01", "ends": "2027-01-01"}, "ends"),
        ({"starts": "soon"}, "starts"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_a_bad_campaign_is_422_naming_the_field(
    shop: Shop, body: dict[str, Any], field: str
) -> None:
    r = shop.api.post(
        "/api/v1/campaigns",
        json={"name": "Spring", "kind": "coupon", "value": "10% off", **body},
        headers=FULL,
    )
    assert r.status_code == 422, r.text
    assert field in str(r.json()["detail"][0]["loc"]) + r.json()["detail"][0]["msg"]
    assert shop.api.get("/api/v1/campaigns", headers=FULL).json() == {"campaigns": []}


def test_unknown_campaigns_bad_counts_and_tokens(shop: Shop) -> None:
    assert shop.codes("cp-00000000", count=1).status_code == 404
    assert shop.api.get("/api/v1/campaigns/cp-00000000", headers=FULL).status_code == 404
    c = shop.create(name="Spring", kind="coupon", value="10% off")
    for count in (0, 1001, "3"):
        assert shop.codes(c["id"], count=count).status_code == 422
    # The read-only token reads, and may neither make campaigns nor issue codes.
    assert shop.api.get(f"/api/v1/campaigns/{c['id']}", headers=READ_ONLY).status_code == 200
    r = shop.api.post(f"/api/v1/campaigns/{c['id']}/codes", json={}, headers=READ_ONLY)
    assert r.status_code == 403
    r = shop.api.post(
        "/api/v1/campaigns", json={"name": "x", "kind": "coupon", "value": "y"}, headers=READ_ONLY
    )
    assert r.status_code == 403
    assert shop.api.get("/api/v1/campaigns").status_code == 401
