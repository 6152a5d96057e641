"""The owner's dashboard page (`/`): self-contained, bilingual, no prompt(), no XSS.

The page test always runs. The browser test renders the page in headless Chromium
(`--dump-dom`) against a real uvicorn server; the set-up installs Chromium, and under
CI=true a missing one fails the run like any other missing component.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from html.parser import HTMLParser
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import uvicorn
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI
from fastapi.testclient import TestClient

from cloud_bridge.activities import ActivityService
from cloud_bridge.api import create_app
from cloud_bridge.commands import CommandService
from cloud_bridge.config import BridgeConfig
from cloud_bridge.db import Repository
from o2o_protocol.config_file import validate_config
from o2o_protocol.messages import Event, EventType, Reason, Status, new_event_id
from o2o_protocol.timeutil import rfc3339
from tests.support import free_port, missing_component, wait_for_port

TOKEN = "t0ken-for-dashboard-tests-0123"
CHROMIUM = shutil.which("chromium") or (
    "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None
)
XSS = '<img src=x onerror="document.title=1">'


@pytest.fixture
def app(tmp_path: Path, repo: Repository) -> FastAPI:
    config = validate_config(
        tmp_path / "bridge.toml", {"store": "s1", "kiosks": ["k1"]}, BridgeConfig
    )
    return create_app(config, repo, token=TOKEN, signing_key=Ed25519PrivateKey.generate())


def _strings(page: str, lang: str) -> dict[str, str]:
    """The page's STRINGS[lang] entries, read from the JS source."""
    block = re.search(rf"^  {lang}: \{{\n(.*?)^  \}},", page, flags=re.S | re.M)
    assert block, f"no {lang} block in STRINGS"
    return dict(re.findall(r'"([\w.]+)":\s*"((?:[^"\\]|\\.)*)"', block.group(1)))


def test_the_page_is_self_contained_bilingual_and_safe(app: FastAPI) -> None:
    r = TestClient(app).get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = r.text
    # Self-contained: nothing loaded from elsewhere (this network has no CDN).
    assert not re.search(r"<script[^>]*\bsrc=", page, flags=re.I)
    assert not re.search(r"<link[^>]*rel=.?stylesheet", page, flags=re.I)
    assert not re.search(r"https?://", page)
    # An in-page form, not a prompt(); data only ever put on the page as text.
    assert "prompt(" not in page and "innerHTML" not in page and "insertAdjacentHTML" not in page
    assert 'id="login"' in page and 'id="token"' in page and 'id="logout"' in page
    assert "localStorage" in page and "/api/v1/" in page

    zh, en = _strings(page, "zh_CN"), _strings(page, "en")
    assert set(zh) == set(en), set(zh) ^ set(en)
    assert zh["title"] == "今日门店概况" and en["title"] == "Today at the shop"
    # The page wants the read-only token (dashboard.token), and says so.
    assert (
        zh["login.label"] == "仪表盘令牌（只读）"
        and en["login.label"] == "Dashboard token (read-only)"
    )
    assert "API" not in zh["login.label"] + en["login.label"]
    assert "{file}" in zh["login.hint"] and 'file.textContent = "dashboard.token"' in page
    for reason in Reason:  # every rejection reason has a plain phrase in both languages
        assert f"reason.{reason.value}" in zh
    for event_type in EventType:  # every event type becomes a sentence
        assert f'case "{event_type.value}"' in page
    assert "reservations" in page and "double_redemptions" in page and "joins" in page

    # Second line of defence: only the page's own inline script and style may run.
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    for tag in ("script", "style"):
        (body,) = re.findall(rf"<{tag}>(.*?)</{tag}>", page, flags=re.S)
        digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in csp


# --- in a real browser ----------------------------------------------------------------


def _ev(type_: str, seq: int, ts: float, kiosk: str = "k1", **data: object) -> Event:
    return Event(
        id=new_event_id(), seq=seq, type=type_, ts=rfc3339(ts), store="s1", kiosk=kiosk, data=data
    )


@pytest.fixture
def server(app: FastAPI, repo: Repository) -> Iterator[tuple[str, float]]:
    now = time.time()
    slot = float(int(now) + 300)
    repo.add_events(
        [
            _ev("checkin", 1, now - 60, name="王小明", points_earned=10, points=40, counted=True),
            _ev("coupon.redeemed", 2, now - 50, coupon_id="c1", campaign="Spring", value="¥10 off"),
            _ev(
                "reservation.arrived",
                3,
                now - 40,
                reservation_id="r1",
                at=slot,
                service="Latte class",
                name="Ada",
                timing="on_time",
                minutes_late=-5,
            ),
            _ev("pickup.opened", 4, now - 30, order="A12", locker=2, confirmed=True),
            _ev("printer.fault", 5, now - 25, fault="paper_out", detail="x"),
            # A forged code's unverified id, and a hostile name: shown as text, never run.
            _ev(
                "scan.rejected",
                6,
                now - 20,
                reason="bad_signature",
                claimed_type="c",
                claimed_id=XSS,
            ),
            _ev("checkin", 7, now - 10, name=XSS, points_earned=10, points=10, counted=True),
            _ev("scan.rejected", 8, now - 5, reason="unknown_order", code_type="p", code_id="p1"),
        ]
    )
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    wait_for_port("127.0.0.1", port, 10)
    yield f"http://127.0.0.1:{port}/", slot
    srv.should_exit = True
    thread.join(10)


def _dump_dom(url: str, tmp_path: Path, lang: str) -> str:
    assert CHROMIUM is not None
    profile = tmp_path / f"profile-{lang}-{time.monotonic_ns()}"
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        f"--lang={lang}",
        f"--accept-lang={lang}",
        "--virtual-time-budget=8000",
        "--dump-dom",
        url,
    ]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TZ": "Asia/Shanghai", "LANG": "C.UTF-8"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=90, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


class _Tags(HTMLParser):
    """Elements of the rendered DOM: tag names, and ids of those with `hidden`."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.hidden: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        a = dict(attrs)
        if "hidden" in a and a.get("id"):
            self.hidden.add(a["id"] or "")


def _parse(dom: str) -> _Tags:
    p = _Tags()
    p.feed(dom)
    return p


def test_dashboard_in_headless_chromium(server: tuple[str, float], tmp_path: Path) -> None:
    if CHROMIUM is None:
        missing_component("chromium", "apt-get install chromium, or run scripts/setup.sh")
    url, slot = server
    local_slot = datetime.fromtimestamp(slot, ZoneInfo("Asia/Shanghai")).strftime("%H:%M")
    utc_slot = datetime.fromtimestamp(slot, ZoneInfo("UTC")).strftime("%H:%M")

    # A Chinese browser, signed in through the URL fragment: Chinese sentences.
    dom = _dump_dom(url + "#token=" + TOKEN, tmp_path, "zh-CN")
    tags = _parse(dom)
    assert "login" in tags.hidden and "dash" not in tags.hidden, dom[-3000:]
    assert "今日门店概况" in dom
    assert "<b>王小明</b> 签到，积分 +<b>10</b>（共 <b>40</b>）" in dom
    assert "核销优惠券：<b>Spring</b> · <b>¥10 off</b>" in dom
    assert "优惠券被拒：签名无效（可能伪造或损坏）" in dom
    assert "取货码被拒：找不到该订单" in dom
    assert "打印机故障：缺纸" in dom
    assert f"<b>{local_slot}</b>" in dom  # the reservation slot, in the browser's local time
    if utc_slot != local_slot:
        assert f"<b>{utc_slot}</b>" not in dom
    # No raw codes on screen (they stay in the row's tooltip).
    assert ">scan.rejected<" not in dom and ">unknown_order<" not in dom
    # The hostile values are text: no element was made from them.
    assert tags.tags.count("script") == 1 and "img" not in tags.tags
    assert "&lt;img src=x" in dom

    # An English browser: English, and the same figures.
    dom = _dump_dom(url + "#token=" + TOKEN, tmp_path, "en-US")
    assert "Today at the shop" in dom
    assert "<b>王小明</b> checked in: +<b>10</b> points (<b>40</b> in all)" in dom
    assert "Coupon refused: invalid signature (forged or damaged)" in dom
    assert "Pickup code refused: order not found" in dom
    assert "<b>Ada</b> arrived for <b>Latte class</b> booked at" in dom
    assert "img" not in _parse(dom).tags

    # `lang=` in the fragment wins over the browser's language.
    dom = _dump_dom(url + "#token=" + TOKEN + "&lang=en", tmp_path, "zh-CN")
    assert "Today at the shop" in dom and "今日门店概况" not in dom.split("<script>")[0]

    # A wrong token: the sign-in form again, with a message, and no data.
    dom = _dump_dom(url + "#token=wrong", tmp_path, "en-US")
    tags = _parse(dom)
    assert "login" not in tags.hidden and "dash" in tags.hidden
    assert "That token was not accepted" in dom
    assert "王小明" not in dom.split("<script>")[0]


# --- alerts: printers, lockers, quarantined events, kiosk clocks ----------------------


@pytest.fixture
def alert_server(tmp_path: Path, repo: Repository) -> Iterator[str]:
    config = validate_config(
        tmp_path / "bridge.toml", {"store": "s1", "kiosks": ["k1", "k2", "k3"]}, BridgeConfig
    )
    app = create_app(config, repo, token=TOKEN, signing_key=Ed25519PrivateKey.generate())
    now = time.time()
    at = datetime.fromtimestamp
    utc = ZoneInfo("UTC")
    # k1 ran out of paper after its last status: an alert until a status says ok.
    repo.set_status("s1", "k1", Status(online=True, printer="ok"), seen=at(now - 120, utc))
    repo.add_events([_ev("printer.fault", 1, now - 20, "k1", fault="paper_out", detail="x")])
    # k3's paper ran out too, but a later status says its printer is ok again: no alert.
    repo.add_events(
        [_ev("printer.fault", 1, now - 300, "k3", fault="paper_out", detail="x")],
        now=at(now - 300, utc),
    )
    repo.set_status("s1", "k3", Status(online=True, printer="ok"), seen=at(now - 10, utc))
    # k2: a locker fault in its status.
    lockers = {"type": "gpio", "count": 4, "open": 0, "faults": 1, "lockers": []}
    repo.set_status(
        "s1", "k2", Status(online=True, printer="ok", lockers=lockers), seen=at(now - 5, utc)
    )
    # One visit that counted, one within the cool-down (earned nothing).
    repo.add_events(
        [
            _ev("checkin", 2, now - 60, "k1", name="Nora Now", points_earned=10, counted=True),
            _ev("checkin", 3, now - 50, "k1", name="Again Al", points_earned=0, counted=False),
        ]
    )
    # A kiosk clock in 2999, ten minutes ago: marked, and not on top for good.
    future = _ev("checkin", 9, 0, "k2", name="Future Fred", points_earned=10, counted=True)
    repo.add_events(
        [future.model_copy(update={"ts": "2999-01-01T00:00:00Z"})], now=at(now - 600, utc)
    )
    # An event the bridge could never store (quarantined, acked).
    repo.reject("ev-too-deep", "s1", "k2", '{"id":"ev-too-deep"}', "event.data: nested deeper")
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    wait_for_port("127.0.0.1", port, 10)
    yield f"http://127.0.0.1:{port}/"
    srv.should_exit = True
    thread.join(10)


def _screenshot(url: str, tmp_path: Path, out: Path) -> None:
    assert CHROMIUM is not None
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'profile-shot'}",
        "--lang=en-US",
        "--virtual-time-budget=8000",
        "--window-size=1100,1100",
        f"--screenshot={out}",
        url,
    ]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TZ": "Asia/Shanghai", "LANG": "C.UTF-8"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=90, env=env)
    assert done.returncode == 0, done.stderr[-2000:]


def test_dashboard_alerts_in_headless_chromium(alert_server: str, tmp_path: Path) -> None:
    if CHROMIUM is None:
        missing_component("chromium", "apt-get install chromium, or run scripts/setup.sh")
    url = alert_server + "#token=" + TOKEN
    dom = _dump_dom(url, tmp_path, "en-US")
    page = dom.split("<script>")[0]
    assert "alerts" not in _parse(dom).hidden, page[-3000:]
    assert "Needs attention" in page
    assert "<b>k1</b>: printer out of paper" in page
    assert "<b>k3</b>: printer" not in page  # cleared by the later status
    assert "<b>k2</b>: lockers with a fault: <b>1</b>" in page
    assert "Events that could not be stored, quarantined in the last 7 days: <b>1</b>" in page
    assert "event.data: nested deeper" in page
    # Check-ins: Nora's and Fred's (2999, counted on the day it arrived); Al's earned
    # nothing (within the cool-down), so it is not one.
    assert re.search(r'id="f-checkins">2<', page), page
    # The 2999 event is shown when it arrived, below newer ones, and marked.
    assert page.index("Nora Now") < page.index("Future Fred")
    assert page.count('class="skew"') == 1
    assert "2999" not in page.split("Future Fred")[0].rsplit("<tr", 1)[-1]

    # Chinese, too.
    dom = _dump_dom(url, tmp_path, "zh-CN")
    assert "需要处理" in dom and "<b>k1</b>：打印机缺纸" in dom

    shot = Path(os.environ.get("O2O_DASHBOARD_SCREENSHOT") or tmp_path / "dashboard.png")
    _screenshot(url.replace("#token=", "#lang=en&token="), tmp_path, shot)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- campaigns and activities ---------------------------------------------------------


@pytest.fixture
def views_server(tmp_path: Path, repo: Repository) -> Iterator[str]:
    """A Shanghai shop with two campaigns (one a visit card) and two activities, one over,
    all made through the API as the shop's online side makes them."""
    config = validate_config(
        tmp_path / "bridge.toml",
        {"store": "s1", "kiosks": ["k1"], "timezone": "Asia/Shanghai"},
        BridgeConfig,
    )
    clock = [time.time()]
    key = Ed25519PrivateKey.generate()
    commands = CommandService(repo, "s1")
    activities = ActivityService(repo, config, key, commands, clock=lambda: clock[0])
    app = create_app(
        config, repo, token=TOKEN, signing_key=key, commands=commands, activities=activities
    )
    api = TestClient(app)
    auth = {"Authorization": f"Bearer {TOKEN}"}

    def post(path: str, body: object) -> dict[str, object]:
        r = api.post("/api/v1/" + path, json=body, headers=auth)
        assert r.status_code == 201, r.text
        return r.json()  # type: ignore[no-any-return]

    spring = post("campaigns", {"name": "春季团购", "kind": "group_buy", "value": "双人套餐"})
    card = post(
        "campaigns", {"name": "Coffee card", "kind": "visit_card", "value": "1 latte", "uses": 3}
    )
    spring_codes = post(f"campaigns/{spring['id']}/codes", {"count": 4})["codes"]
    card_codes = post(f"campaigns/{card['id']}/codes", {"count": 2})["codes"]
    now = time.time()
    used = "coupon.redeemed"
    first_card = {
        "coupon_id": card_codes[0]["id"],
        "campaign": card["id"],
        "campaign_name": "Coffee card",
        "uses": 3,
    }
    group = {"campaign": spring["id"], "campaign_name": "春季团购", "value": "双人套餐"}
    redeemed = [
        _ev(used, 1, now - 60, coupon_id=spring_codes[0]["id"], **group),
        # One card used twice, the other not yet: one card of two redeemed, two uses.
        _ev(used, 2, now - 50, use=1, **first_card),
        _ev(used, 3, now - 40, use=2, **first_card),
    ]
    repo.add_events(redeemed)
    # A class starting in an hour (three of four places taken), and a tasting that was
    # on a few hours ago: two signed up, one came.
    soon = datetime.fromtimestamp(now + 3600, ZoneInfo("Asia/Shanghai"))
    latte = post(
        "activities", {"title": "Latte art", "at": soon.strftime("%Y-%m-%dT%H:%M"), "capacity": 4}
    )
    for _ in range(3):
        post(f"activities/{latte['id']}/signups", {})
    clock[0] = now - 5 * 3600
    earlier = datetime.fromtimestamp(now - 4 * 3600, ZoneInfo("UTC")).isoformat()
    tasting = post("activities", {"title": "Tea tasting", "at": earlier, "capacity": 10})
    came = post(f"activities/{tasting['id']}/signups", {"name": "Ada"})
    post(f"activities/{tasting['id']}/signups", {"name": "Bo"})
    arrival = _ev(
        "reservation.arrived",
        4,
        now - 4 * 3600 + 60,
        reservation_id=came["id"],
        activity=tasting["id"],
        at=int(now - 4 * 3600),
        service="Tea tasting",
        name="Ada",
        timing="late",
        minutes_late=1,
    )
    [stored] = repo.add_events([arrival])
    activities.after_stored([arrival], {stored})
    clock[0] = time.time()
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    wait_for_port("127.0.0.1", port, 10)
    yield f"http://127.0.0.1:{port}/"
    srv.should_exit = True
    thread.join(10)


def _cells(page: str, name: str) -> list[str]:
    """The texts of the cells of the table row whose first cell starts with `name`."""
    row = "<td>" + name + page.split(">" + name, 1)[1].split("</tr>", 1)[0]
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row, flags=re.S)
    return [" ".join(re.sub(r"<[^>]+>", " ", c).split()) for c in cells]


def test_campaigns_and_activities_in_headless_chromium(views_server: str, tmp_path: Path) -> None:
    if CHROMIUM is None:
        missing_component("chromium", "apt-get install chromium, or run scripts/setup.sh")
    url = views_server + "#token=" + TOKEN
    dom = _dump_dom(url + "&lang=en", tmp_path, "en-US")
    page = dom.split("<script>")[0]
    hidden = _parse(dom).hidden
    assert "campaigns-view" not in hidden and "activities-view" not in hidden, page[-3000:]
    assert "Campaigns" in page and "Activities" in page
    # Name (value), kind, issued, redeemed, rate.
    assert _cells(page, "春季团购") == ["春季团购 双人套餐", "group buy", "4", "1", "25%"]
    card = ["Coffee card 1 latte", "visit card", "2", "1 2 uses in all", "50%"]
    assert _cells(page, "Coffee card") == card
    # Title, when (the shop's clock), signed up / places, came, no-shows (once over).
    latte = _cells(page, "Latte art")
    soon = datetime.fromtimestamp(time.time() + 3600, ZoneInfo("Asia/Shanghai"))
    assert latte[0] == "Latte art" and latte[1].startswith(soon.strftime("%Y-%m-%d"))
    assert latte[2:] == ["3 / 4", "0", "–"]
    assert _cells(page, "Tea tasting")[2:] == ["2 / 10", "1", "1"]
    assert page.index("Tea tasting") < page.index("Latte art")  # soonest first
    # A redemption names its campaign, not the campaign's id.
    assert "Coupon redeemed: <b>春季团购</b> · <b>双人套餐</b>" in page

    dom = _dump_dom(url, tmp_path, "zh-CN")
    assert "营销活动" in dom and "店内活动" in dom and "团购" in dom and "次卡" in dom
    assert "共用 <" not in dom and "共用 2 次" in dom

    shot = Path(os.environ.get("O2O_DASHBOARD_VIEWS_SCREENSHOT") or tmp_path / "views.png")
    _screenshot(url.replace("#token=", "#lang=en&token="), tmp_path, shot)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- over time (GET /api/v1/insights) -------------------------------------------------


def test_the_insights_views_ask_for_what_the_bridge_serves(app: FastAPI) -> None:
    """Every CSV link names a figure the bridge exports; the four stages and the backtest
    have words in both languages. (The drawing itself: tests/test_dashboard_insights.py.)"""
    client = TestClient(app)
    page = client.get("/").text
    assert "/api/v1/insights" in page and "/api/v1/insights/suggestion" in page
    figures = set(re.findall(r'data-csv="(\w+)"', page))
    assert figures == {
        "checkins_by_weekday_hour",
        "slow_hours",
        "daily",
        "forecast",
        "campaigns",
        "lapsed_members",
    }
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for figure in sorted(figures):
        r = client.get(f"/api/v1/insights.csv?figure={figure}", headers=auth)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv"), figure
    zh, en = _strings(page, "zh_CN"), _strings(page, "en")
    for stage in ("discover", "attract", "experience", "retain"):
        assert zh[f"stage.{stage}"] and en[f"stage.{stage}"] and zh[f"what.{stage}"]
    assert zh["stage.discover"] == "发现" and zh["stage.retain"] == "留存"
    for words in (zh["backtest"], en["backtest"]):
        assert "{mae}" in words and "{naive}" in words
    assert en["backtest"].startswith("Forecast error {mae}/day vs {naive} for same-day-last-week")
    assert len(zh["weekdays"].split(",")) == len(en["weekdays"].split(",")) == 7
