"""Traffic for chosen hours, end to end (docs/campaigns.md): a shop in Shanghai made by
`o2o-bridge init --timezone`, the real `o2o-bridge run` on a real Mosquitto, two doors
built from the files `init` wrote. The owner's figures match what happened at the doors.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from kiosk.runtime import KioskRuntime
from o2o_protocol.codes import Code, verify_code
from o2o_protocol.messages import EventType, Reason
from tests.support import MosquittoBroker
from tests.test_members_e2e import Shop, door, two_door_shop
from tests.test_sync import wait_until

SHANGHAI = ZoneInfo("Asia/Shanghai")


@pytest.fixture(params=["sqlite", "postgresql"])
def shop(
    request: pytest.FixtureRequest, tmp_path: Path, mosquitto_broker: MosquittoBroker
) -> Iterator[Shop]:
    """A shop in Shanghai, whatever this machine's own zone."""
    yield from two_door_shop(request, tmp_path, mosquitto_broker.url, "--timezone", "Asia/Shanghai")


def _today() -> int:
    return datetime.now(SHANGHAI).isoweekday()


#: Valid all day, every day: a window whose end is its start runs the whole day round.
ALWAYS = [{"days": [1, 2, 3, 4, 5, 6, 7], "from": "00:00", "to": "00:00"}]


def _not_today() -> list[dict[str, object]]:
    """Valid all day on every day but today (in Shanghai)."""
    days = [d for d in range(1, 8) if d != _today()]
    return [{"days": days, "from": "00:00", "to": "23:59"}]


def uses_known(kiosk: KioskRuntime, token: str) -> int:
    """How many uses of a coupon this door knows of (its own and those the bridge told)."""
    code = verify_code(token, kiosk.cfg.public_keys(), store="s1", now=time.time())
    assert isinstance(code, Code)
    facts = kiosk.db.facts_for(code)
    return max(facts.coupon_uses, 1 if facts.coupon_used_at is not None else 0)


def campaign(shop: Shop, **body: object) -> dict[str, object]:
    status, made = shop.api("POST", "/campaigns", body)
    assert status == 201, made
    return made


def codes(shop: Shop, campaign_id: object, count: int) -> tuple[int, object]:
    return shop.api("POST", f"/campaigns/{campaign_id}/codes", {"count": count})


def test_issued_and_redeemed_match_what_happened_at_the_doors(shop: Shop) -> None:
    flash = campaign(shop, name="午后秒杀", kind="flash_sale", value="半价拿铁", quantity=4)
    status, batch = codes(shop, flash["id"], 4)
    assert status == 201, batch
    assert codes(shop, flash["id"], 1)[0] == 409  # none left
    tokens = [c["code"] for c in batch["codes"]]  # type: ignore[index]
    with door(shop, "k1") as d1, door(shop, "k2") as d2:
        results = [d1.scan(tokens[0]), d1.scan(tokens[1]), d2.scan(tokens[2])]
        assert all(r.event.type == EventType.COUPON_REDEEMED for r in results)
        assert results[0].event.data["campaign_name"] == "午后秒杀"
        # The same code at the other door once the bridge has told it: refused.
        wait_until(lambda: uses_known(d2, tokens[0]) == 1, what="door 2 to hear of it")
        assert d2.scan(tokens[0]).decision.reason is Reason.ALREADY_USED

        def counted() -> dict[str, object]:
            return shop.api("GET", f"/campaigns/{flash['id']}")[1]

        wait_until(lambda: counted()["redeemed"] == 3, what="three redemptions counted")
        got = counted()
        assert (got["issued"], got["redeemed"]) == (4, 3)
        hour = datetime.now(SHANGHAI).hour
        assert got["redeemed_by_hour"][hour] == 3  # type: ignore[index]


def test_hours_and_uses_hold_at_every_door(shop: Shop) -> None:
    card = campaign(
        shop, name="咖啡次卡", kind="visit_card", value="一杯美式", uses=3, hours=ALWAYS
    )
    later = campaign(shop, name="周末团购", kind="group_buy", value="双人套餐", hours=_not_today())
    card_code = codes(shop, card["id"], 1)[1]["codes"][0]["code"]  # type: ignore[index]
    later_code = codes(shop, later["id"], 1)[1]["codes"][0]["code"]  # type: ignore[index]
    with door(shop, "k1") as d1, door(shop, "k2") as d2:
        refused = d1.scan(later_code)
        assert refused.decision.reason is Reason.OUTSIDE_HOURS
        assert refused.event.data["hours"] == later["hours"]
        # Each door uses the card once it knows of every use before: 1, 2, 3, then no.
        used = []
        for n, d in enumerate((d1, d2, d1), start=1):
            wait_until(lambda d=d, n=n: uses_known(d, card_code) == n - 1, what=f"use {n}")  # type: ignore[misc]
            used.append(d.scan(card_code).event.data.get("use"))
        assert used == [1, 2, 3]
        wait_until(lambda: uses_known(d2, card_code) == 3, what="door 2 to hear of use 3")
        assert d2.scan(card_code).decision.reason is Reason.ALREADY_USED
        wait_until(
            lambda: shop.api("GET", f"/campaigns/{card['id']}")[1]["uses_redeemed"] == 3,
            what="the uses counted",
        )
        got = shop.api("GET", f"/campaigns/{card['id']}")[1]
        assert (got["issued"], got["redeemed"], got["uses_redeemed"]) == (1, 1, 3)
    assert shop.api("GET", f"/campaigns/{later['id']}")[1]["redeemed"] == 0


def test_an_activity_fills_up_and_its_tickets_count_at_the_door(shop: Shop) -> None:
    at = datetime.now(SHANGHAI).replace(microsecond=0) + timedelta(minutes=10)
    body = {"title": "手冲咖啡分享会", "at": at.isoformat(), "capacity": 2}
    status, activity = shop.api("POST", "/activities", body)
    assert status == 201, activity
    signups = f"/activities/{activity['id']}/signups"
    first = shop.api("POST", signups, {"name": "Ann"})[1]
    second = shop.api("POST", signups, {"name": "Bo"})[1]
    assert shop.api("POST", signups, {"name": "Cy"})[0] == 409  # full
    with door(shop, "k1") as d1:
        arrived = d1.scan(first["code"])
        assert arrived.event.type == EventType.RESERVATION_ARRIVED
        assert arrived.event.data["activity"] == activity["id"]
        # Bo cancels online: the place is free again, and the ticket no longer opens.
        status, _ = shop.api("DELETE", f"{signups}/{second['id']}")
        assert status in (200, 204)
        code = verify_code(second["code"], d1.cfg.public_keys(), store="s1", now=time.time())
        assert isinstance(code, Code)
        wait_until(lambda: d1.db.facts_for(code).revoked, what="the door to hear of it")
        assert d1.scan(second["code"]).decision.reason is Reason.REVOKED
    assert shop.api("POST", signups, {"name": "Cy"})[0] == 201
    wait_until(
        lambda: shop.api("GET", f"/activities/{activity['id']}")[1]["attended"] == 1,
        what="the arrival counted",
    )
    got = shop.api("GET", f"/activities/{activity['id']}")[1]
    assert (got["signed_up"], got["attended"], got["no_shows"]) == (2, 1, None)
