"""Campaigns at the bridge (docs/campaigns.md), on real SQLite and PostgreSQL and a real
Mosquitto.

What a shop relies on: a code carries its campaign's rules so a kiosk decides offline; a
flash sale never hands out more codes than it has, however many ask at once; a member
gets no more than the limit; what a campaign brought is counted from what the kiosks
stored; a visit card's uses at one door reach the other doors, and uses past its number
(doors offline at once) are flagged for the owner.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud_bridge.campaigns import CampaignError, CampaignService, Refused, shop_time_zone
from cloud_bridge.config import BridgeConfig
from cloud_bridge.db import Repository
from cloud_bridge.db.campaigns import Campaigns
from cloud_bridge.runtime import BridgeRuntime
from o2o_protocol.codes import Code, CodeType, key_id, verify_code
from o2o_protocol.config_file import validate_config
from o2o_protocol.messages import Event, new_event_id
from o2o_protocol.timeutil import rfc3339
from tests.support import MosquittoBroker, all_at_once
from tests.test_rewards import Kiosk

STORE = "s1"


@pytest.fixture
def db(any_repo: Repository) -> Repository:
    return any_repo


def _config(tmp_path: Path, broker: MosquittoBroker | None = None, **extra: Any) -> BridgeConfig:
    raw: dict[str, Any] = {"store": STORE, "kiosks": ["k1", "k2"], **extra}
    if broker is not None:
        raw["mqtt"] = {"url": broker.url, "client_id": f"bridge-{uuid.uuid4().hex[:8]}"}
    return validate_config(tmp_path / "bridge.toml", raw, BridgeConfig)


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def service(tmp_path: Path, db: Repository, key: Ed25519PrivateKey) -> CampaignService:
    return CampaignService(db, _config(tmp_path), key)


def _verify(token: str, key: Ed25519PrivateKey, now: float | None = None) -> Code:
    keys = {key_id(key.public_key()): key.public_key()}
    code = verify_code(token, keys, store=STORE, now=now if now is not None else time.time())
    assert isinstance(code, Code), code
    return code


def _signed(token: str) -> dict[str, Any]:
    """The payload exactly as signed (what a kiosk reads)."""
    body = token.split(".")[1]
    out: dict[str, Any] = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    return out


def _redeemed(kiosk: str, coupon: str, at: datetime | None = None, **data: Any) -> Event:
    return Event(
        id=new_event_id(),
        seq=1,
        type="coupon.redeemed",
        ts=rfc3339((at or datetime.now(UTC)).timestamp()),
        store=STORE,
        kiosk=kiosk,
        data={"coupon_id": coupon, **data},
    )


# --- codes carry the campaign's rules ----------------------------------------------------


def test_codes_carry_the_campaign_and_its_rules(
    service: CampaignService, key: Ed25519PrivateKey, db: Repository
) -> None:
    hours = [{"days": [2, 3, 4, 5], "from": "14:00", "to": "17:00"}]
    starts = datetime.now(UTC) + timedelta(days=2)
    card = service.create(
        name="午后次卡",
        kind="visit_card",
        value="咖啡一杯",
        uses=3,
        hours=hours,
        starts=starts.strftime("%Y-%m-%dT%H:%M:%SZ"),
        ends="2099-12-31",
    )
    assert card.id.startswith("cp-") and len(card.id) == 11
    codes = service.issue(card.id, 2, member="m-1")
    assert len({c.id for c in codes}) == 2
    code = _verify(codes[0].code, key, now=starts.timestamp() + 60)
    assert code.type is CodeType.COUPON and code.id == codes[0].id
    assert code.campaign == card.id and code.value == "咖啡一杯"
    payload = _signed(codes[0].code)
    assert payload["cn"] == "午后次卡" and payload["ck"] == "visit_card"
    assert payload["hrs"] == hours and payload["uses"] == 3
    # Not valid before the campaign starts; to the end of its last day (shop time).
    assert payload["nbf"] == int(starts.replace(microsecond=0).timestamp())
    last_day = datetime(2099, 12, 31, tzinfo=shop_time_zone(service.config))
    assert payload["exp"] == int((last_day + timedelta(days=1)).timestamp())
    # Not a member card's field: the member is kept at the bridge only.
    assert "mb" not in payload and "m-1" not in str(payload)
    recorded = Campaigns(db, STORE).issued_codes(card.id)
    assert {(r.id, r.member) for r in recorded} == {(c.id, "m-1") for c in codes}

    # A coupon without hours, uses or an end: none of those fields, a year to live.
    plain = service.create(name="新客券", kind="coupon", value="9折")
    token = service.issue(plain.id, 1)[0].code
    _verify(token, key)
    payload = _signed(token)
    assert not {"hrs", "uses", "nbf"} & set(payload)
    assert abs(payload["exp"] - (time.time() + 365 * 86400)) < 60


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"kind": "raffle"}, "kind"),
        ({"value": ""}, "value"),
        ({"value": "x" * 101}, "value"),
        ({"quantity": 0}, "quantity"),
        ({"per_member": 0}, "per_member"),
        ({"kind": "visit_card"}, "uses"),
        ({"kind": "visit_card", "uses": 1}, "uses"),
        ({"kind": "visit_card", "uses": 1001}, "uses"),
        ({"uses": 3}, "uses"),
        ({"hours": [{"days": [8], "from": "14:00", "to": "17:00"}]}, "hours"),
        ({"hours": [{"days": [1], "from": "25:00", "to": "17:00"}]}, "hours"),
        ({"starts": "2027-02-01", "ends": "2027-01-01"}, "ends"),
        ({"starts": "next week"}, "starts"),
        ({"ends": "2027-01-01T10:00:00"}, "ends"),
    ],
)
def test_a_campaign_that_cannot_be_is_refused_naming_the_field(
    service: CampaignService, fields: dict[str, Any], field: str
) -> None:
    body = {"name": "Spring", "kind": "coupon", "value": "10% off", **fields}
    with pytest.raises(CampaignError) as refused:
        service.create(**body)
    assert refused.value.field == field
    assert service.campaigns() == []


# --- exact quantities ----------------------------------------------------------------


def test_twenty_at_once_for_the_last_ten_flash_sale_codes_get_exactly_ten(
    service: CampaignService, db: Repository
) -> None:
    sale = service.create(name="秒杀", kind="flash_sale", value="1元咖啡", quantity=30)
    assert len(service.issue(sale.id, 20)) == 20
    results = all_at_once(20, lambda: service.issue(sale.id, 1))
    won = [r for r in results if isinstance(r, list)]
    lost = [r for r in results if isinstance(r, Refused)]
    assert (len(won), len(lost)) == (10, 10), results
    assert all("0 code(s) left" in str(r) for r in lost)
    issued = {c.id for r in won for c in r}
    assert len(issued) == 10
    after = service.campaign(sale.id)
    assert after is not None and (after.issued, after.left) == (30, 0)
    assert len(Campaigns(db, STORE).issued_codes(sale.id)) == 30


def test_a_request_for_more_than_are_left_gets_none(
    service: CampaignService, db: Repository
) -> None:
    sale = service.create(name="Flash", kind="flash_sale", value="free tea", quantity=5)
    service.issue(sale.id, 3)
    with pytest.raises(Refused, match="only 2 code"):
        service.issue(sale.id, 3)
    assert service.campaign(sale.id).issued == 3  # type: ignore[union-attr]
    assert len(Campaigns(db, STORE).issued_codes(sale.id)) == 3
    assert len(service.issue(sale.id, 2)) == 2


def test_a_member_gets_no_more_than_the_limit_even_askingall_at_once(
    service: CampaignService, db: Repository
) -> None:
    buy = service.create(name="团购", kind="group_buy", value="双人套餐", per_member=2)
    results = all_at_once(6, lambda: service.issue(buy.id, 1, member="m-ada"))
    assert sum(isinstance(r, list) for r in results) == 2, results
    assert all(isinstance(r, list | Refused) for r in results)
    with pytest.raises(Refused, match="at most 2 each"):
        service.issue(buy.id, 1, member="m-ada")
    # Another member, and codes for no one, are not held to Ada's count.
    assert len(service.issue(buy.id, 2, member="m-bo")) == 2
    assert len(service.issue(buy.id, 5)) == 5
    after = service.campaign(buy.id)
    assert after is not None and after.issued == 9
    assert len(Campaigns(db, STORE).issued_codes(buy.id)) == 9


def test_no_codes_after_the_campaign_ended(tmp_path: Path, db: Repository) -> None:
    now = [time.time()]
    service = CampaignService(
        db, _config(tmp_path), Ed25519PrivateKey.generate(), clock=lambda: now[0]
    )
    ends = datetime.fromtimestamp(now[0] + 3600, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    c = service.create(name="Tonight", kind="coupon", value="1 free", ends=ends)
    assert len(service.issue(c.id, 1)) == 1
    now[0] += 7200
    with pytest.raises(Refused, match="ended"):
        service.issue(c.id, 1)
    with pytest.raises(LookupError):
        service.issue("cp-00000000", 1)


# --- what it brought ---------------------------------------------------------------------


def test_redeemed_counts_the_campaigns_redemptions_by_hour(
    service: CampaignService, db: Repository
) -> None:
    buy = service.create(name="团购", kind="group_buy", value="双人套餐")
    other = service.create(name="Other", kind="coupon", value="x")
    codes = service.issue(buy.id, 3)
    zone = shop_time_zone(service.config)
    at = datetime.now(zone).replace(hour=15, minute=10) - timedelta(days=1)
    db.add_events(
        [
            # A kiosk that names the campaign...
            _redeemed("k1", codes[0].id, at, campaign=buy.id, kind="group_buy"),
            # ... an older kiosk that does not: the code was recorded as the campaign's.
            _redeemed("k2", codes[1].id, at + timedelta(hours=2)),
            # Not this campaign's.
            _redeemed("k1", "someone-else", at, campaign=other.id),
            _redeemed("k1", "free-text", at, campaign="spring"),
        ]
    )
    got = service.as_dict(service.campaign(buy.id), detail=True)  # type: ignore[arg-type]
    assert (got["issued"], got["redeemed"]) == (3, 2)
    assert len(got["redeemed_by_hour"]) == 24
    assert got["redeemed_by_hour"][15] == 1 and got["redeemed_by_hour"][17] == 1
    assert sum(got["redeemed_by_hour"]) == 2
    listed = {c.id: service.as_dict(c) for c in service.campaigns()}
    assert listed[other.id]["redeemed"] == 1 and "redeemed_by_hour" not in listed[other.id]


def test_a_visit_cards_uses_are_counted_apart_from_the_cards(
    service: CampaignService, db: Repository
) -> None:
    card = service.create(name="次卡", kind="visit_card", value="洗车", uses=3)
    a, b = service.issue(card.id, 2)
    db.add_events(
        [
            _redeemed("k1", a.id, campaign=card.id, use=1, uses=3),
            _redeemed("k2", a.id, campaign=card.id, use=2, uses=3),
            _redeemed("k1", b.id, campaign=card.id, use=1, uses=3),
        ]
    )
    got = service.as_dict(service.campaign(card.id), detail=True)  # type: ignore[arg-type]
    assert (got["issued"], got["redeemed"], got["uses_redeemed"]) == (2, 2, 3)
    # A card's second use is a use, not a double redemption.
    stats = db.today_stats(STORE)
    assert (stats["double_redemptions"], stats["card_overuses"]) == (0, 0)


def test_uses_past_a_cards_number_are_flagged_not_other_redemptions(db: Repository) -> None:
    events = [_redeemed(k, "card-1", use=n, uses=2) for k, n in (("k1", 1), ("k1", 2))]
    db.add_events(events)
    # Two doors offline at once both let the card in for its last use.
    db.add_events([_redeemed("k2", "card-1", use=2, uses=2)])
    # A kiosk that wrote nonsense as `uses` makes no card (and breaks no figure).
    db.add_events([_redeemed("k1", "odd", uses="many"), _redeemed("k2", "odd", uses="many")])
    stats = db.today_stats(STORE)
    assert stats["card_overuses"] == 1
    assert stats["double_redemptions"] == 1  # the "odd" coupon, single use
    db.add_events([_redeemed("k1", "card-1", use=3, uses=2)])
    assert db.today_stats(STORE)["card_overuses"] == 2


# --- across doors, over a real broker ------------------------------------------------


@pytest.fixture
def runtime(
    tmp_path: Path, mosquitto_broker: MosquittoBroker, db: Repository
) -> Iterator[BridgeRuntime]:
    rt = BridgeRuntime(_config(tmp_path, mosquitto_broker), db, stats_interval_s=0.2)
    rt.start()
    assert rt.wait_ready(10), "bridge did not subscribe"
    yield rt
    rt.stop()


def test_a_cards_use_at_one_door_reaches_the_other_with_the_count(
    runtime: BridgeRuntime, mosquitto_broker: MosquittoBroker, db: Repository
) -> None:
    k1, k2 = Kiosk(mosquitto_broker, "k1"), Kiosk(mosquitto_broker, "k2")
    try:
        k1.send("coupon.redeemed", coupon_id="card-7", campaign="cp-0000000a", use=1, uses=3)
        assert k2.command("coupon.used")["data"]["count"] == 1
        k1.send("coupon.redeemed", coupon_id="card-7", campaign="cp-0000000a", use=2, uses=3)
        used = k2.command("coupon.used")
        assert used["data"]["id"] == "card-7" and used["data"]["count"] == 2
        assert used["data"]["kiosk"] == "k1"
        # k2 uses it too: k1 hears the store-wide count, 3 of 3.
        k2.send("coupon.redeemed", coupon_id="card-7", use=3, uses=3)
        assert k1.command("coupon.used")["data"]["count"] == 3
        assert db.today_stats(STORE)["card_overuses"] == 0
        # k1 was offline and let it in once more: a fourth use of three, flagged.
        k1.send("coupon.redeemed", coupon_id="card-7", use=3, uses=3)
        assert k2.command("coupon.used")["data"]["count"] == 4
        stats = db.today_stats(STORE)
        assert (stats["card_overuses"], stats["double_redemptions"]) == (1, 0)
        # A single-use coupon's command is as before (no count: 1).
        k1.send("coupon.redeemed", coupon_id="plain-1")
        assert "count" not in k2.command("coupon.used")["data"]
    finally:
        k1.close()
        k2.close()
