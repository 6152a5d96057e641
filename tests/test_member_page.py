"""The member's own page (`/m/{token}`), as a phone shows it: headless Chromium at phone
size against a real uvicorn server and a real SQLite database.

What a member relies on: the link on their slip opens their balance, visits and points
history in their language; the code on it scans at the kiosk and stops working soon
after (a screenshot is no card); and nobody gets anything from a link that is not theirs.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image
from pyzbar import pyzbar

from cloud_bridge.api import create_app
from cloud_bridge.config import BridgeConfig
from cloud_bridge.db import Repository
from cloud_bridge.issuing import issue
from o2o_protocol.codes import Code, CodeType, key_id, verify_code
from o2o_protocol.config_file import validate_config
from o2o_protocol.messages import Event, new_event_id
from o2o_protocol.timeutil import rfc3339
from tests.support import free_port, missing_component, wait_for_port
from tests.test_dashboard import CHROMIUM, _dump_dom

TOKEN = "member-page-test-token-0123456"
LIVE_S = 120


@dataclass
class Site:
    url: str
    app: FastAPI
    key: Ed25519PrivateKey
    token: str  # Ada's member code, as printed on her join slip

    def get(self, path: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
        req = urllib.request.Request(self.url + path, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()


def _event(seq: int, type_: str, **data: object) -> Event:
    return Event(
        id=new_event_id(),
        seq=seq,
        type=type_,
        ts=rfc3339(time.time() - 100 + seq),
        store="s1",
        kiosk="k1",
        data=data,
    )


@pytest.fixture
def site(tmp_path: Path, repo: Repository) -> Iterator[Site]:
    port = free_port()
    config = validate_config(
        tmp_path / "bridge.toml",
        {
            "store": "s1",
            "kiosks": ["k1"],
            "members": {"live_code_s": LIVE_S, "page_url": f"http://127.0.0.1:{port}"},
        },
        BridgeConfig,
    )
    key = Ed25519PrivateKey.generate()
    app = create_app(config, repo, token=TOKEN, signing_key=key)
    latte = app.state.rewards.add(name="拿铁", name_en="Latte", points=15)
    # Ada's history: two visits, a latte, a gift from the shop online, a friend she invited.
    events = [
        _event(1, "checkin", member_id="m-ada", name="Ada 王", points_earned=10, counted=True),
        _event(2, "checkin", member_id="m-ada", name="Ada 王", points_earned=10, counted=True),
        _event(3, "points.redeemed", member_id="m-ada", reward_id=latte.id, points=15),
    ]
    repo.add_events(events)
    members = app.state.members
    members.after_stored(events, {e.id for e in events})
    members.change_points("m-ada", 25, "生日礼物", key="gift-1")
    members.create("m-bob", "Bob", referrer="m-ada")
    token = issue(key, "member", store="s1", id="m-ada", name="Ada 王").token

    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    wait_for_port("127.0.0.1", port, 10)
    yield Site(f"http://127.0.0.1:{port}", app, key, token)
    srv.should_exit = True
    thread.join(10)


def _screenshot(url: str, tmp_path: Path, out: Path, lang: str) -> None:
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
        f"--user-data-dir={tmp_path / f'profile-shot-{lang}'}",
        f"--lang={lang}",
        f"--accept-lang={lang}",
        "--virtual-time-budget=5000",
        "--window-size=390,844",
        f"--screenshot={out}",
        url,
    ]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TZ": "Asia/Shanghai", "LANG": "C.UTF-8"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=90, env=env)
    assert done.returncode == 0, done.stderr[-2000:]


def _verify(text: str, key: Ed25519PrivateKey) -> Code:
    code = verify_code(
        text, {key_id(key.public_key()): key.public_key()}, store="s1", now=time.time()
    )
    assert isinstance(code, Code), code
    return code


def test_the_members_page_on_a_phone(site: Site, tmp_path: Path) -> None:
    if CHROMIUM is None:
        missing_component("chromium", "apt-get install chromium, or run scripts/setup.sh")
    url = f"{site.url}/m/{site.token}"

    # A Chinese phone: Chinese words, the balance and the history, newest first.
    dom = _dump_dom(url, tmp_path, "zh-CN")
    page = dom.split("<script>")[0]
    assert 'lang="zh-CN"' in dom and "Ada 王" in page
    assert 'id="points" class="">80<' in page  # 10 + 10 - 15 + 25 + 50
    assert "到店 <strong>2</strong> 次" in page
    history = [
        "推荐好友加入",  # Bob joined with her link: +50
        "生日礼物",  # the shop's own words, as given
        "兑换：拿铁",
        "到店签到",
        "到店签到",
    ]
    positions = [page.index(w) for w in history[:3]] + [page.index("到店签到")]
    assert positions == sorted(positions), page
    assert page.count("到店签到") == 2
    assert ">+50<" in page and ">−15<" in page
    # The share link: the store's join page, naming her as the referrer.
    assert f'href="{site.url}/j?ref=m-ada&amp;store=s1"' in page

    # English from the browser, or from ?lang=en on a Chinese phone.
    for lang, suffix in (("en-US", ""), ("zh-CN", "?lang=en")):
        page = _dump_dom(url + suffix, tmp_path, lang).split("<script>")[0]
        assert "Points history" in page and "Reward: Latte" in page, page
        assert "A friend you invited joined" in page and "Visit" in page
        assert "<strong>2</strong> visits" in page and "生日礼物" in page

    # On the phone's screen: the live code loaded, and it scans.
    for lang in ("zh-CN", "en-US"):
        shot = Path(os.environ.get("O2O_MEMBER_SCREENSHOT_DIR") or tmp_path) / f"member-{lang}.png"
        _screenshot(url, tmp_path, shot, lang)
        symbols = pyzbar.decode(Image.open(shot))
        assert len(symbols) == 1, f"no code readable on the {lang} page"
        live = _verify(symbols[0].data.decode(), site.key)
        assert live.type is CodeType.MEMBER and live.id == "m-ada" and live.name == "Ada 王"
        assert live.expires is not None and 0 < live.expires - time.time() <= LIVE_S
        assert live.token != site.token


def test_the_live_code_is_fresh_and_short_lived(site: Site) -> None:
    status, headers, body = site.get(f"/m/{site.token}/code.svg")
    assert status == 200 and headers["content-type"] == "image/svg+xml"
    assert headers["cache-control"] == "no-store" and headers["referrer-policy"] == "no-referrer"
    assert body.startswith(b"<svg") and b"<script" not in body
    # Signed afresh on each request: codes carry times to the second, so once the clock
    # has moved on the next one differs.
    second = int(time.time())
    first = site.get(f"/m/{site.token}/code.svg")[2]
    while int(time.time()) <= second + 1:
        time.sleep(0.05)
    assert site.get(f"/m/{site.token}/code.svg")[2] != first


def test_links_that_are_not_a_members_give_nothing_away(site: Site) -> None:
    other = Ed25519PrivateKey.generate()
    signed, _, sig = site.token.rpartition(".")
    forged = f"{signed}.{'A' if sig[0] != 'A' else 'B'}{sig[1:]}"
    now = int(time.time())
    refused = {
        "forged": forged,
        "another key": issue(other, "member", store="s1", id="m-ada").token,
        "another store": issue(site.key, "member", store="s2", id="m-ada").token,
        "a coupon": issue(site.key, "coupon", store="s1", campaign="x").token,
        "expired": issue(
            site.key, "member", store="s1", id="m-ada", expires=now - 50, now=now - 100
        ).token,
        "junk": "hello",
    }
    for what, token in refused.items():
        status, headers, body = site.get(f"/m/{token}")
        assert status == 404, what
        assert b"Ada" not in body and b"m-ada" not in body and b"points" not in body.lower()
        assert headers["cache-control"] == "no-store"
        assert site.get(f"/m/{token}/code.svg")[0] == 404, what


def test_a_member_the_bridge_does_not_know_yet_sees_zero(site: Site, tmp_path: Path) -> None:
    token = issue(site.key, "member", store="s1", id="m-new", name="Neo").token
    status, headers, body = site.get(f"/m/{token}", **{"Accept-Language": "en-GB,en;q=0.9"})
    page = body.decode()
    assert status == 200 and 'id="points" class="">0<' in page and "Neo" in page
    assert "No points yet." in page
    # Safe to open anywhere: never cached, no referrer, only its own script and style.
    assert headers["cache-control"] == "no-store" and headers["referrer-policy"] == "no-referrer"
    csp = headers["content-security-policy"]
    assert "default-src 'none'" in csp and "img-src 'self'" in csp and "script-src 'sha256-" in csp
    assert "http" not in csp
    # Pages, not API: nothing of them in the OpenAPI document.
    paths = site.app.openapi()["paths"]
    assert not [p for p in paths if p.startswith(("/m/", "/j"))]


def test_the_join_page_in_both_languages(site: Site) -> None:
    status, _, body = site.get("/j?ref=m-ada")
    page = body.decode()
    assert status == 200 and "加入 s1" in page and "您是受会员邀请而来的" in page
    page = site.get("/j?lang=en")[2].decode()
    assert "Join s1" in page and "Ask at the shop" in page and "invited" not in page


def test_a_live_code_does_not_open_the_page(site: Site) -> None:
    """A screenshot of the page's live code (a member code with an expiry) scans at a
    kiosk, but opens neither the page nor more live codes."""
    now = int(time.time())
    live = issue(
        site.key, "member", store="s1", id="m-ada", name="Ada 王", expires=now + LIVE_S, now=now
    ).token
    status, _, body = site.get(f"/m/{live}")
    assert status == 404 and b"Ada" not in body
    assert site.get(f"/m/{live}/code.svg")[0] == 404
    assert site.get(f"/m/{site.token}")[0] == 200  # the slip's code still opens it


def test_the_share_link_is_the_shops_join_page(tmp_path: Path, repo: Repository) -> None:
    """With `join_url` the share link is the shop's own sign-up page with `ref=`;
    without it, the bridge's `/j` page."""
    key = Ed25519PrivateKey.generate()
    token = issue(key, "member", store="s1", id="m-ada", name="Ada").token
    cases = {
        "https://shop.example/join": "https://shop.example/join?ref=m-ada",
        "https://shop.example/mp?from=slip": "https://shop.example/mp?from=slip&amp;ref=m-ada",
        "": "https://bridge.example/j?ref=m-ada&amp;store=s1",
    }
    for join_url, share in cases.items():
        members = {"page_url": "https://bridge.example", "join_url": join_url}
        config = validate_config(
            tmp_path / "bridge.toml", {"store": "s1", "members": members}, BridgeConfig
        )
        page = TestClient(create_app(config, repo, token=TOKEN, signing_key=key)).get(f"/m/{token}")
        assert page.status_code == 200
        assert f'<a id="share" href="{share}">' in page.text, join_url
