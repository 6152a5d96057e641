"""`/api/v1/insights` as the owner's dashboard and the online side use it: who may read it,
what a bad range gets, the CSV of every list equal to the JSON, campaigns, activities and
preorders of the range, and the suggested flash sale made with one call."""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from cloud_bridge.db import Repository
from cloud_bridge.insights import CSV_FIGURES
from o2o_protocol.messages import Event, new_event_id
from o2o_protocol.timeutil import rfc3339
from tests.test_insights import (
    AUTH,
    FIRST,
    LAST,
    OPEN,
    READ_AUTH,
    SHANGHAI,
    STORE,
    client_for,
    config_for,
    insights,
    shop_traffic,
)

RANGE = f"from={FIRST}&to={LAST}"


@pytest.fixture
def client(tmp_path: Path, any_repo: Repository) -> TestClient:
    any_repo.add_events(shop_traffic().events)
    return client_for(config_for(tmp_path, opening_hours=OPEN), any_repo)


def test_reading_needs_a_token_and_making_the_sale_the_full_one(client: TestClient) -> None:
    for path in ("/api/v1/insights", "/api/v1/insights.csv?figure=daily"):
        assert client.get(path).status_code == 401
        bad = client.get(path, headers={"Authorization": "Bearer wrong-token-0123456789"})
        assert bad.status_code == 401
        assert client.get(path, headers=READ_AUTH).status_code == 200
    sale = "/api/v1/insights/suggestion"
    assert client.post(sale).status_code == 401
    assert client.post(sale, headers=READ_AUTH).status_code == 403
    assert client.get("/api/v1/campaigns", headers=AUTH).json() == {"campaigns": []}


@pytest.mark.parametrize(
    "query",
    [
        "from=2026-11-02&to=2026-11-01",  # from after to
        "from=2025-10-31&to=2026-11-01",  # 367 days
        "from=2026-02-30&to=2026-03-01",  # no such day
        "from=1.10.2026",
        "to=tomorrow",
    ],
)
def test_a_bad_range_is_refused(client: TestClient, query: str) -> None:
    r = client.get(f"/api/v1/insights?{query}", headers=READ_AUTH)
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"][0] == "query"
    assert client.get(f"/api/v1/insights.csv?figure=daily&{query}", headers=AUTH).status_code == 422
    assert client.post(f"/api/v1/insights/suggestion?{query}", headers=AUTH).status_code == 422


def test_a_whole_year_is_allowed_and_the_default_is_the_last_28_days(client: TestClient) -> None:
    assert (
        client.get("/api/v1/insights?from=2025-11-01&to=2026-11-01", headers=AUTH).status_code
        == 200
    )
    got = client.get("/api/v1/insights", headers=READ_AUTH).json()
    today = datetime.now(UTC).astimezone(SHANGHAI).date()
    assert (got["from"], got["to"]) == ((today - timedelta(days=27)).isoformat(), today.isoformat())
    assert len(got["daily"]) == 28


def _csv(client: TestClient, figure: str) -> list[list[str]]:
    r = client.get(f"/api/v1/insights.csv?figure={figure}&{RANGE}", headers=READ_AUTH)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/csv")
    return list(csv.reader(io.StringIO(r.text)))


def _cell(value: Any) -> str:
    return "" if value is None else str(value)


def test_the_csv_of_every_list_is_the_json(client: TestClient) -> None:
    got = insights(client)
    grid = _csv(client, "checkins_by_weekday_hour")
    assert grid[0] == ["weekday", *map(str, range(24))]
    assert [list(map(int, row)) for row in grid[1:]] == [
        [wd, *row] for wd, row in enumerate(got["checkins_by_weekday_hour"])
    ]
    forecast = _csv(client, "forecast")
    assert forecast[0][:4] == ["date", "checkins", "low", "high"] and len(forecast[0]) == 28
    assert [r[0] for r in forecast[1:]] == [f["date"] for f in got["forecast"]]
    assert [[float(x) for x in r[4:]] for r in forecast[1:]] == [
        f["by_hour"] for f in got["forecast"]
    ]
    for figure in set(CSV_FIGURES) - {"checkins_by_weekday_hour", "forecast"}:
        rows = _csv(client, figure)
        items = got[figure]
        if items:
            assert rows[0] == list(items[0]), figure
        assert rows[1:] == [[_cell(v) for v in item.values()] for item in items], figure
    daily = _csv(client, "daily")
    assert len(daily) == 1 + 28 and daily[1] == ["2026-10-05", "31", "0", "0", "0"]
    lapsed = _csv(client, "lapsed_members")
    assert [r[0] for r in lapsed[1:]] == ["l2", "l1"]
    bad = client.get("/api/v1/insights.csv?figure=members", headers=READ_AUTH)
    assert bad.status_code == 422


def test_the_suggested_flash_sale_is_made_with_one_call(client: TestClient) -> None:
    suggestion = insights(client)["suggestion"]
    r = client.post(f"/api/v1/insights/suggestion?{RANGE}", headers=AUTH)
    assert r.status_code == 201, r.text
    made = r.json()
    assert made["kind"] == "flash_sale"
    assert made["hours"] == [{"days": [2], "from": "14:00", "to": "15:00"}]  # Tuesday
    assert (made["name"], made["value"]) == (
        suggestion["campaign"]["name"],
        suggestion["campaign"]["value"],
    )
    listed = client.get("/api/v1/campaigns", headers=AUTH).json()["campaigns"]
    assert [c["id"] for c in listed] == [made["id"]]
    # Its codes can be handed out at once, and the insights list it.
    codes = client.post(f"/api/v1/campaigns/{made['id']}/codes", json={"count": 2}, headers=AUTH)
    assert codes.status_code == 201, codes.text
    campaign = insights(client)["campaigns"][0]
    assert campaign == {
        "id": made["id"],
        "name": made["name"],
        "kind": "flash_sale",
        "issued": 2,
        "redeemed": 0,
        "conversion": 0.0,
    }


def test_no_open_hour_no_suggestion(tmp_path: Path, any_repo: Repository) -> None:
    client = client_for(config_for(tmp_path), any_repo)  # no hours, no traffic
    assert insights(client)["suggestion"] is None
    assert client.post("/api/v1/insights/suggestion", headers=AUTH).status_code == 409


def test_campaigns_activities_and_preorders_of_the_range(
    tmp_path: Path, any_repo: Repository
) -> None:
    client = client_for(config_for(tmp_path, opening_hours=OPEN), any_repo)
    today = datetime.now(UTC).astimezone(SHANGHAI).date()
    body = {"name": "Latte 9折", "kind": "coupon", "value": "10% off"}
    cp = client.post("/api/v1/campaigns", json=body, headers=AUTH).json()
    codes = client.post(f"/api/v1/campaigns/{cp['id']}/codes", json={"count": 4}, headers=AUTH)
    code_id = codes.json()["codes"][0]["id"]
    when = (today + timedelta(days=2)).isoformat() + "T10:00"
    ac = client.post(
        "/api/v1/activities", json={"title": "Cupping", "at": when, "capacity": 5}, headers=AUTH
    ).json()
    tickets = [
        client.post(f"/api/v1/activities/{ac['id']}/signups", json={"name": n}, headers=AUTH)
        for n in ("Ada", "Bo")
    ]
    now = rfc3339(datetime.now(UTC).timestamp())
    events = [
        Event(id=new_event_id(), seq=1, type="coupon.redeemed", ts=now, store=STORE,
              kiosk="k1", data={"coupon_id": code_id}),
        Event(id=new_event_id(), seq=2, type="reservation.arrived", ts=now, store=STORE,
              kiosk="k1", data={"reservation_id": tickets[0].json()["id"], "activity": ac["id"]}),
    ]  # fmt: skip
    any_repo.add_events(events)
    client.app.state.activities.after_stored(events, {e.id for e in events})  # type: ignore[attr-defined]
    # One order sent to two kiosks counts once; items are names or {name|item, qty}.
    order = {
        "order": "p1",
        "items": ["latte", {"name": "bagel", "qty": 3}, {"item": "latte", "qty": 2}],
    }
    for kiosk in ("k1", "k2"):
        sent = client.post(
            f"/api/v1/kiosks/{kiosk}/commands",
            json={"name": "preorder.upsert", "data": order},
            headers=AUTH,
        )
        assert sent.status_code == 201, sent.text
    later = {"order": "p2", "items": ["latte"]}
    client.post(
        "/api/v1/kiosks/k1/commands", json={"name": "preorder.upsert", "data": later}, headers=AUTH
    )

    got = insights(client, today - timedelta(days=1), today + timedelta(days=3))
    assert got["campaigns"] == [
        {"id": cp["id"], "name": "Latte 9折", "kind": "coupon", "issued": 4, "redeemed": 1,
         "conversion": 0.25}
    ]  # fmt: skip
    assert got["activities"] == [
        {"id": ac["id"], "title": "Cupping", "at": ac["at"], "signed_up": 2, "attended": 1,
         "conversion": 0.5}
    ]  # fmt: skip
    wd = today.weekday()
    assert got["preorder_demand"] == [
        {"item": "bagel", "weekday": wd, "count": 3},
        {"item": "latte", "weekday": wd, "count": 4},
    ]
    funnel = {f["stage"]: f["count"] for f in got["funnel"]}
    # 4 campaign codes and 2 activity tickets were issued: the funnel's discover counts
    # the campaign's (tickets are reservations, counted when they arrive).
    assert funnel == {"discover": 4, "attract": 2, "experience": 0, "retain": 0}
    # A range that ended before any of it: none of the activity, the orders or the codes.
    earlier = insights(client, date(2026, 1, 1), date(2026, 1, 31))
    assert earlier["activities"] == [] and earlier["preorder_demand"] == []
    assert earlier["funnel"][0]["count"] == 0
