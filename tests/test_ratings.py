"""Ratings customers give at the kiosk (`review.submitted`), summed up for the owner:
`GET /api/v1/ratings`, today's figures and the dashboard (SQLite and PostgreSQL)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import uvicorn
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI
from fastapi.testclient import TestClient

from cloud_bridge.api import create_app
from cloud_bridge.config import BridgeConfig
from cloud_bridge.db import Repository
from o2o_protocol.config_file import validate_config
from o2o_protocol.messages import Event, new_event_id
from o2o_protocol.timeutil import rfc3339
from tests.support import free_port, missing_component, wait_for_port
from tests.test_dashboard import CHROMIUM, _dump_dom

TOKEN = "ratings-test-token-0123456789"
FULL = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def db(any_repo: Repository) -> Repository:
    """The bridge's repository on SQLite and on PostgreSQL, every table emptied first."""
    return any_repo


def _review(seq: int, at: datetime, rating: object, subject: str, store: str = "s1") -> Event:
    return Event(
        id=new_event_id(),
        seq=seq,
        type="review.submitted",
        ts=rfc3339(at.timestamp()),
        store=store,
        kiosk="k1",
        data={"rating": rating, "subject": subject, "event": f"ev-{seq}"},
    )


def _app(tmp_path: Path, repo: Repository) -> FastAPI:
    config = validate_config(
        tmp_path / "bridge.toml", {"store": "s1", "kiosks": ["k1"]}, BridgeConfig
    )
    return create_app(config, repo, token=TOKEN, signing_key=Ed25519PrivateKey.generate())


def test_ratings_summed_up_by_period_and_subject(tmp_path: Path, db: Repository) -> None:
    now = datetime.now(UTC)
    last_week = now - timedelta(days=7)
    db.add_events(
        [
            _review(1, now - timedelta(seconds=30), 5, "checkin"),
            _review(2, now - timedelta(seconds=20), 4, "checkin"),
            _review(3, now - timedelta(seconds=10), 2, "pickup"),
            _review(4, last_week, 1, "reservation"),
            # Not ratings: out of range, not a whole number, text; and another store's.
            _review(5, now, 9, "checkin"),
            _review(6, now, 4.5, "checkin"),
            _review(7, now, "5", "checkin"),
            _review(8, now, 5, "checkin", store="s2"),
        ]
    )
    api = TestClient(_app(tmp_path, db))
    everything = api.get("/api/v1/ratings", headers=FULL).json()
    assert everything == {
        "count": 4,
        "average": 3.0,
        "distribution": {"1": 1, "2": 1, "3": 0, "4": 1, "5": 1},
        "by_subject": {
            "checkin": {"count": 2, "average": 4.5},
            "pickup": {"count": 1, "average": 2.0},
            "reservation": {"count": 1, "average": 1.0},
        },
    }
    # The last three days: last week's rating is left out. A date `to` is the whole day.
    since = (now - timedelta(days=3)).strftime("%Y-%m-%d")
    today = now.strftime("%Y-%m-%d")
    recent = api.get(f"/api/v1/ratings?from={since}&to={today}", headers=FULL).json()
    assert recent["count"] == 3 and recent["average"] == 3.67
    assert recent["distribution"] == {"1": 0, "2": 1, "3": 0, "4": 1, "5": 1}
    # An RFC 3339 `to` is exclusive, to the second.
    cut = rfc3339((now - timedelta(seconds=15)).timestamp())
    r = api.get("/api/v1/ratings", params={"from": since, "to": cut}, headers=FULL)
    assert r.json()["count"] == 2 and r.json()["average"] == 4.5
    # Nothing in range: no average rather than a made-up one.
    old = api.get("/api/v1/ratings?to=2020-01-01", headers=FULL).json()
    assert old["count"] == 0 and old["average"] is None and old["by_subject"] == {}
    # Bad bounds are the client's error; no token, no ratings.
    r = api.get("/api/v1/ratings?from=yesterday", headers=FULL)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "from"]
    assert api.get("/api/v1/ratings").status_code == 401

    # Today's figures carry today's count and average.
    stats = api.get("/api/v1/stats", headers=FULL).json()
    assert stats["ratings_today"] == 3 and stats["rating_average_today"] == 3.67


def test_the_dashboard_shows_todays_rating(repo: Repository, tmp_path: Path) -> None:
    if CHROMIUM is None:
        missing_component("chromium", "apt-get install chromium, or run scripts/setup.sh")
    now = datetime.now(UTC)
    repo.add_events(
        [_review(1, now - timedelta(seconds=10), 5, "checkin"), _review(2, now, 4, "pickup")]
    )
    app = _app(tmp_path, repo)
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    try:
        wait_for_port("127.0.0.1", port, 10)
        url = f"http://127.0.0.1:{port}/#token={TOKEN}"
        page = _dump_dom(url, tmp_path, "en-US").split("<script>")[0]
        assert "Today's rating: <b>4.5</b> (<b>2</b> ratings)" in page, page[-3000:]
        assert "Rated <b>4</b> / 5 · pickup" in page
        page = _dump_dom(url, tmp_path, "zh-CN").split("<script>")[0]
        assert "今日评分 <b>4.5</b>（<b>2</b> 条评价）" in page
        assert "收到评分：<b>5</b> / 5 · 签到" in page
    finally:
        srv.should_exit = True
        thread.join(10)
