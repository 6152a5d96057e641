"""The owner's dashboard over time (`/`, GET /api/v1/insights) in a real headless Chromium.

Weeks of a Shanghai shop's check-ins are stored as kiosks send them; the page, driven over
the DevTools protocol, must draw what the API answers: the 168 cells of the heat map, the
daily line and the forecast with its band, the funnel; create the suggested flash sale with
one click (the owner's token only); and download a CSV with the same numbers. Screenshots:
desktop and phone, Chinese and English (O2O_DASHBOARD_SHOTS names a folder to keep them).
Under CI=true a missing Chromium fails the run.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import shutil
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import uvicorn
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient
from websockets.sync.client import ClientConnection, connect

from cloud_bridge.api import create_app
from cloud_bridge.config import BridgeConfig
from cloud_bridge.db import Repository
from o2o_protocol.config_file import validate_config
from o2o_protocol.messages import Event, new_event_id
from o2o_protocol.timeutil import rfc3339
from tests.support import free_port, missing_component, wait_for_port

TOKEN = "t0ken-for-insights-dashboard-0123"
READ_TOKEN = "read-only-t0ken-for-insights-0123"
SHOP = ZoneInfo("Asia/Shanghai")
CHROMIUM = shutil.which("chromium") or (
    "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None
)
# Open Tuesday to Sunday, 08:00-18:00; a regular crowd at noon, Wednesday 15:00 quiet.
HOURS = [{"days": [2, 3, 4, 5, 6, 7], "from": "08:00", "to": "18:00"}]


def _visits(weekday: int, hour: int, week: int) -> int:
    """Check-ins in one open hour of a past week: a known, uneven pattern."""
    if weekday == 0 or not 8 <= hour < 18:
        return 0
    if (weekday, hour) == (2, 15):
        return week % 2  # the slow hour
    return 1 + (hour in (11, 12, 13)) * 3 + (weekday >= 5) * 2 + (hour * 7 + weekday * 3) % 3


def _events(today: date) -> list[Event]:
    """Five weeks up to yesterday in shop time, six regulars and one member long gone."""
    events: list[Event] = []
    seq = 0

    def checkin(at: datetime, member: str, name: str) -> None:
        nonlocal seq
        seq += 1
        data = {"member_id": member, "name": name, "points_earned": 10, "points": 10 * seq}
        events.append(
            Event(
                id=new_event_id(),
                seq=seq,
                type="checkin",
                ts=rfc3339(at.timestamp()),
                store="s1",
                kiosk="k1",
                data={**data, "counted": True},
            )
        )

    for back in range(35, 0, -1):
        day = today - timedelta(days=back)
        for hour in range(24):
            for i in range(_visits(day.weekday(), hour, back // 7)):
                at = datetime(day.year, day.month, day.day, hour, 5 + 7 * i, tzinfo=SHOP)
                n = (back + hour + i) % 6
                checkin(at, f"m{n}", f"Regular {n}")
    for back in (60, 53):
        day = today - timedelta(days=back)
        checkin(datetime(day.year, day.month, day.day, 10, 30, tzinfo=SHOP), "m9", "Lapsed Lily")
    return events


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --- the bridge, serving ------------------------------------------------------------------


@dataclass
class Shop:
    url: str
    api: TestClient


@pytest.fixture
def shop(tmp_path: Path, repo: Repository) -> Iterator[Shop]:
    settings = {
        "store": "s1",
        "kiosks": ["k1"],
        "timezone": "Asia/Shanghai",
        "opening_hours": HOURS,
    }
    config = validate_config(tmp_path / "bridge.toml", settings, BridgeConfig)
    app = create_app(
        config, repo, token=TOKEN, read_token=READ_TOKEN, signing_key=Ed25519PrivateKey.generate()
    )
    repo.add_events(_events(datetime.now(SHOP).date()))
    api = TestClient(app)
    # A campaign with codes, one of them redeemed: the funnel's first stages.
    made = api.post(
        "/api/v1/campaigns",
        json={"name": "Spring", "kind": "coupon", "value": "¥5"},
        headers=_auth(TOKEN),
    )
    assert made.status_code == 201, made.text
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    wait_for_port("127.0.0.1", port, 10)
    yield Shop(f"http://127.0.0.1:{port}/", api)
    srv.should_exit = True
    thread.join(10)


# --- a headless Chromium, driven over the DevTools protocol --------------------------------


def _wait(what: str, cond: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Browser:
    """One Chromium tab: evaluate JavaScript, click, size the window, take screenshots."""

    def __init__(self, tmp_path: Path, lang: str) -> None:
        assert CHROMIUM is not None
        self.profile = tmp_path / f"cdp-{time.monotonic_ns()}"
        self.downloads = tmp_path / f"downloads-{time.monotonic_ns()}"
        self.downloads.mkdir()
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": str(tmp_path),
            "TZ": "Asia/Shanghai",
            "LANG": "C.UTF-8",
        }
        self.proc = subprocess.Popen(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                f"--user-data-dir={self.profile}",
                f"--lang={lang}",
                f"--accept-lang={lang}",
                "--remote-debugging-port=0",
                "about:blank",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        port_file = self.profile / "DevToolsActivePort"
        lines = _wait(
            "DevTools port",
            lambda: (
                port_file.exists()
                and len(port_file.read_text().split()) >= 2
                and port_file.read_text().split()
            ),
        )
        base = f"127.0.0.1:{lines[0]}"
        self.browser_ws = connect(f"ws://{base}{lines[1]}", max_size=None)
        targets = json.loads(urllib.request.urlopen(f"http://{base}/json/list", timeout=10).read())
        page = next(t for t in targets if t["type"] == "page")
        self.ws = connect(page["webSocketDebuggerUrl"], max_size=None)
        self.ids = 0
        self._call(
            self.browser_ws,
            "Browser.setDownloadBehavior",
            behavior="allow",
            downloadPath=str(self.downloads),
        )

    def _call(self, ws: ClientConnection, method: str, **params: Any) -> dict[str, Any]:
        self.ids += 1
        ws.send(json.dumps({"id": self.ids, "method": method, "params": params}))
        while True:
            msg = json.loads(ws.recv(timeout=60))
            if msg.get("id") == self.ids:
                assert "error" not in msg, msg
                return msg["result"]  # type: ignore[no-any-return]

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        return self._call(self.ws, method, **params)

    def js(self, expression: str) -> Any:
        r = self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        assert "exceptionDetails" not in r, r
        return r["result"].get("value")

    def size(self, width: int, height: int) -> None:
        self.call(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=width < 600,
        )

    def open(self, url: str) -> None:
        """Navigate, and wait until the new page has loaded (not the one before it)."""
        # Through a blank page: a URL that differs only in its #fragment would not reload.
        self.call("Page.navigate", url="about:blank")
        _wait("a blank page", lambda: self.js("location.href === 'about:blank'"))
        self.call("Page.navigate", url=url)
        _wait(
            url,
            lambda: self.js("location.protocol === 'http:' && document.readyState === 'complete'"),
        )

    def shot(self, path: Path) -> None:
        """The whole page, as tall as it is."""
        width = self.js("document.documentElement.clientWidth")
        height = self.js("document.documentElement.scrollHeight")
        r = self.call(
            "Page.captureScreenshot",
            format="png",
            captureBeyondViewport=True,
            clip={"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
        )
        path.write_bytes(base64.b64decode(r["data"]))

    def close(self) -> None:
        self.ws.close()
        self.browser_ws.close()
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Callable[[str], Browser]]:
    if CHROMIUM is None:
        missing_component("chromium", "apt-get install chromium, or run scripts/setup.sh")
    opened: list[Browser] = []

    def make(lang: str) -> Browser:
        b = Browser(tmp_path, lang)
        opened.append(b)
        return b

    yield make
    for b in opened:
        b.close()


def _shots_dir(tmp_path: Path) -> Path:
    d = Path(os.environ.get("O2O_DASHBOARD_SHOTS") or tmp_path / "shots")
    d.mkdir(parents=True, exist_ok=True)
    return d


DRAWN = "document.querySelectorAll('#heat rect.cell').length === 168"


def test_the_page_draws_what_the_api_answers(
    shop: Shop, browser: Callable[[str], Browser], tmp_path: Path
) -> None:
    answer = shop.api.get("/api/v1/insights", headers=_auth(READ_TOKEN)).json()
    b = browser("en-US")
    b.size(1280, 900)
    b.open(shop.url + "#lang=en&token=" + READ_TOKEN)
    _wait("the heat map", lambda: b.js(DRAWN))

    # The heat map: 7 x 24 cells, Monday first, each the API's count.
    cells = b.js(
        "[...document.querySelectorAll('#heat rect.cell')].map(r => "
        "[+r.dataset.weekday, +r.dataset.hour, +r.dataset.v])"
    )
    grid = answer["checkins_by_weekday_hour"]
    assert [[d, h, grid[d][h]] for d in range(7) for h in range(24)] == cells
    assert sum(map(sum, grid)) > 0
    # The slow hours are marked where the API says, and the open hours are outlined.
    slow = b.js(
        "[...document.querySelectorAll('#heat circle.slow')].map(c => "
        "[+c.dataset.weekday, +c.dataset.hour])"
    )
    assert slow == sorted([s["weekday"], s["hour"]] for s in answer["slow_hours"])
    assert answer["slow_hours"] and b.js("document.querySelectorAll('#heat line').length") > 0
    wed = b.js(
        'document.querySelector(\'#heat rect[data-weekday="2"][data-hour="15"]\')'
        ".querySelector('title').textContent"
    )
    assert wed == f"Wed 15:00: {grid[2][15]} check-ins"

    # The daily line, then the forecast and its band after the range.
    actual = b.js("document.getElementById('line-actual').dataset.values")
    assert [float(v) for v in actual.split(",")] == [d["checkins"] for d in answer["daily"]]
    ahead = b.js("document.getElementById('line-forecast').dataset.values")
    assert [float(v) for v in ahead.split(",")] == [f["checkins"] for f in answer["forecast"]]
    assert len(answer["forecast"]) == 7
    assert b.js("document.getElementById('fc-band').getAttribute('points').split(' ').length") == 14
    assert b.js("document.getElementById('fc-days').children.length") == 7
    # The range ends today (shop time): its point is "so far", not a day that was quiet.
    assert answer["to"] == datetime.now(SHOP).date().isoformat()
    today = b.js("document.querySelector('#daily circle.today title').textContent")
    assert today == f"{answer['to']} (today, so far): {answer['daily'][-1]['checkins']} check-ins"
    bt = answer["backtest"]
    if bt["mae"] is not None and bt["seasonal_naive_mae"] is not None:
        said = b.js("document.getElementById('backtest').textContent")
        assert said.startswith(
            f"Forecast error {round(bt['mae'], 1):g}/day vs "
            f"{round(bt['seasonal_naive_mae'], 1):g} for same-day-last-week"
        )

    # The funnel: the four stages, named, with the API's counts.
    funnel = b.js(
        "[...document.querySelectorAll('#funnel .frow')].map(r => "
        "[r.dataset.stage, r.querySelector('small').textContent, "
        "+r.querySelector('.n').textContent])"
    )
    assert funnel == [[s["stage"], s["name"], s["count"]] for s in answer["funnel"]]
    assert [s[0] for s in funnel] == ["discover", "attract", "experience", "retain"]
    # The lapsed member, with her last visit and points.
    lapsed = b.js("document.getElementById('lapsed').textContent")
    assert "Lapsed Lily" in lapsed or "m9" in lapsed

    # Another language: the charts again, in its words.
    b.js("document.getElementById('lang').click()")
    _wait(
        "Chinese",
        lambda: b.js(
            "[...document.querySelectorAll('#heat text')].some(e => e.textContent === '周三')"
        ),
    )
    assert b.js("document.querySelector('#funnel .frow b').textContent") == "发现"
    b.js("document.getElementById('lang').click()")

    # A narrower range: the page asks for it and draws its days.
    first = (date.fromisoformat(answer["to"]) - timedelta(days=6)).isoformat()
    b.js(
        f"document.getElementById('from').value = '{first}'; "
        "document.getElementById('range').requestSubmit()"
    )
    _wait(
        "a week's line",
        lambda: (
            b.js("document.getElementById('line-actual').dataset.values.split(',').length") == 7
        ),
    )
    assert b.js("document.getElementById('insights-tz').textContent").endswith(
        f"{first} to {answer['to']}"
    )


def test_csv_download_has_the_same_numbers(shop: Shop, browser: Callable[[str], Browser]) -> None:
    answer = shop.api.get("/api/v1/insights", headers=_auth(READ_TOKEN)).json()
    b = browser("en-US")
    b.size(1280, 900)
    b.open(shop.url + "#lang=en&token=" + READ_TOKEN)
    _wait("the heat map", lambda: b.js(DRAWN))
    b.js("document.querySelector('[data-csv=\"daily\"]').click()")
    done = _wait(
        "the daily CSV", lambda: [p for p in b.downloads.glob("*.csv") if p.stat().st_size > 0]
    )
    assert done[0].name == f"daily_{answer['from']}_{answer['to']}.csv"
    rows = list(csv.DictReader(io.StringIO(done[0].read_text("utf-8"))))
    assert [(r["date"], int(r["checkins"])) for r in rows] == [
        (d["date"], d["checkins"]) for d in answer["daily"]
    ]


def test_the_suggestion_becomes_a_campaign_with_the_owners_token(
    shop: Shop, browser: Callable[[str], Browser]
) -> None:
    answer = shop.api.get("/api/v1/insights", headers=_auth(READ_TOKEN)).json()
    suggestion = answer["suggestion"]
    assert suggestion is not None
    name = suggestion["campaign"]["name"]

    def names() -> list[str]:
        listed = shop.api.get("/api/v1/campaigns", headers=_auth(TOKEN)).json()["campaigns"]
        return [c["name"] for c in listed]

    # The read-only token: the button says it needs the owner's token; nothing is made.
    b = browser("en-US")
    b.size(1280, 900)
    b.open(shop.url + "#lang=en&token=" + READ_TOKEN)
    _wait("the suggestion", lambda: b.js("!document.getElementById('suggest-btn').hidden"))
    assert b.js("document.getElementById('suggest-text').textContent") == suggestion["text"]["en"]
    assert b.js("document.getElementById('suggest-btn').textContent") == "Create this flash sale"
    b.js("document.getElementById('suggest-btn').click()")
    _wait(
        "the refusal",
        lambda: (
            b.js("document.getElementById('suggest-btn').textContent")
            == "Needs the owner's token (api.token) to create"
        ),
    )
    assert b.js("document.getElementById('suggest-btn').disabled")
    assert name not in names()

    # The owner's token, in Chinese: one click, and the campaign is there.
    b = browser("zh-CN")
    b.size(1280, 900)
    b.open(shop.url + "#token=" + TOKEN)
    _wait("the suggestion", lambda: b.js("!document.getElementById('suggest-btn').hidden"))
    assert b.js("document.getElementById('suggest-btn').textContent") == "创建这个限时抢购"
    assert (
        b.js("document.getElementById('suggest-text').textContent") == suggestion["text"]["zh_CN"]
    )
    b.js("document.getElementById('suggest-btn').click()")
    _wait(
        "the campaign", lambda: name in b.js("document.getElementById('suggest-msg').textContent")
    )
    assert b.js("document.getElementById('suggest-msg').textContent") == f"已创建营销活动 {name}。"
    assert name in names()
    # …and the page's campaign table lists it on the next refresh.
    _wait("the table", lambda: name in b.js("document.getElementById('campaigns').textContent"))


@pytest.mark.parametrize("lang", ["en", "zh_CN"])
def test_screenshots_desktop_and_phone(
    shop: Shop, browser: Callable[[str], Browser], tmp_path: Path, lang: str
) -> None:
    shots = _shots_dir(tmp_path)
    b = browser("en-US")
    for width, height, name in ((1280, 900, "desktop"), (390, 844, "phone")):
        b.size(width, height)
        b.open(shop.url + f"#lang={lang}&token=" + READ_TOKEN)
        _wait("the charts", lambda: b.js(DRAWN + " && !!document.getElementById('line-actual')"))
        # Nothing wider than the screen but what scrolls inside its own box.
        assert b.js("document.documentElement.scrollWidth") <= width
        # The heat map fits without scrolling (on a phone: hours down, weekdays across).
        fits = "(e => e.scrollWidth <= e.clientWidth)(document.getElementById('heat-box'))"
        assert b.js(fits), name
        out = shots / f"insights-{name}-{lang}.png"
        b.shot(out)
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    heading = b.js("document.querySelector('[data-i18n=\"h.heat\"]').textContent")
    assert heading == (
        "每周各时段签到（周一至周日 × 0–23 点）"
        if lang == "zh_CN"
        else "Check-ins by weekday and hour (Mon–Sun × 0–23)"
    )


def test_a_phone_turned_redraws_the_heat_map(shop: Shop, browser: Callable[[str], Browser]) -> None:
    """Drawn for the width it has: a desktop window narrowed to a phone's gets hours down."""
    b = browser("en-US")
    b.size(1280, 900)
    b.open(shop.url + "#lang=en&token=" + READ_TOKEN)
    _wait("the heat map", lambda: b.js(DRAWN))
    wide = "document.getElementById('heat').getAttribute('width')"
    assert int(b.js(wide)) > 700
    b.size(390, 844)
    _wait("the phone's heat map", lambda: int(b.js(wide)) <= 390)
    fits = "(e => e.scrollWidth <= e.clientWidth)(document.getElementById('heat-box'))"
    assert b.js(fits) and b.js(DRAWN)
