"""The member's own page (`/m/{token}`) and the join page (`/j`), docs/members.md.

No password: the member code in the link is the key, checked with the store's public key
like a kiosk checks it; anything else is a plain 404 that says nothing more. The page is
rendered here (every value escaped), runs only its own inline script (a CSP of hashes),
is never cached and sends no referrer, so the link does not leak to other sites. Its live
code (`/m/{token}/code.svg`) is signed afresh on each request and expires within
`members.live_code_s`, so a screenshot of it stops working.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import re
import time
from datetime import datetime
from importlib import resources
from string import Template
from urllib.parse import quote, urlencode

import segno
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from cloud_bridge.config import BridgeConfig
from cloud_bridge.issuing import issue
from cloud_bridge.members import MemberService
from cloud_bridge.rewards import RewardService
from o2o_protocol.codes import Code, CodeType, key_id, verify_code

#: Ledger entries the page shows, newest first.
LEDGER_ENTRIES = 20

STRINGS: dict[str, dict[str, str]] = {
    "zh": {
        "title": "我的会员卡",
        "member": "会员",
        "points": "积分",
        "visits": "到店 {n} 次",
        "last_visit": "上次到店 {when}",
        "code": "到店出示此码",
        "code.hint": "此码每 30 秒自动更新，截图无效。",
        "ledger": "积分记录",
        "ledger.empty": "还没有积分记录。",
        "checkin": "到店签到",
        "reward": "兑换：{name}",
        "referral": "推荐好友加入",
        "share": "邀请好友",
        "share.hint": "好友通过此链接加入，您可获得积分。",
        "other": "English",
        "join.title": "加入 {store}",
        "join.text": "请到店在自助机上扫码加入，或打开本店的会员注册页面。",
        "join.ref": "您是受会员邀请而来的。",
        "missing": "找不到此页面",
        "missing.text": "链接无效或已过期。",
    },
    "en": {
        "title": "My member card",
        "member": "Member",
        "points": "points",
        "visits": "{n} visits",
        "last_visit": "last visit {when}",
        "code": "Show this code at the shop",
        "code.hint": "It changes every 30 seconds; a screenshot will not work.",
        "ledger": "Points history",
        "ledger.empty": "No points yet.",
        "checkin": "Visit",
        "reward": "Reward: {name}",
        "referral": "A friend you invited joined",
        "share": "Invite a friend",
        "share.hint": "When a friend joins through this link, you earn points.",
        "other": "中文",
        "join.title": "Join {store}",
        "join.text": "Ask at the shop and scan the code on the kiosk, or open the shop's sign-up.",
        "join.ref": "A member invited you.",
        "missing": "Page not found",
        "missing.text": "This link is not valid or has expired.",
    },
}

_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Robots-Tag": "noindex",
}


def _hashes(page: str, tag: str) -> str:
    blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", page, flags=re.S)
    return " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(b.encode()).digest()).decode() + "'"
        for b in blocks
    )


def page_csp(page: str) -> str:
    """Only the page's own inline script and style run; images from the bridge only."""
    return "; ".join(
        [
            "default-src 'none'",
            f"script-src {_hashes(page, 'script')}",
            f"style-src {_hashes(page, 'style')}",
            "img-src 'self'",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )


def pick_language(query: str | None, accept: str | None) -> str:
    """`zh` or `en`: `?lang=` first, then the browser's preference; Chinese by default."""
    if query:
        q = query.lower()
        if q.startswith("en"):
            return "en"
        if q.startswith("zh"):
            return "zh"
    ranked: list[tuple[float, int, str]] = []
    for i, part in enumerate((accept or "").split(",")):
        tag, _, params = part.strip().partition(";")
        weight = 1.0
        m = re.search(r"q=([0-9.]+)", params)
        if m:
            try:
                weight = float(m.group(1))
            except ValueError:
                weight = 0.0
        ranked.append((-weight, i, tag.strip().lower()))
    for _, _, tag in sorted(ranked):
        if tag.startswith("en"):
            return "en"
        if tag.startswith("zh"):
            return "zh"
    return "zh"


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _local(dt: datetime) -> str:
    return dt.astimezone().strftime("%Y-%m-%d %H:%M")


class MemberPages:
    """Renders the pages of one store. A valid code of a member the bridge does not know
    yet (nobody has checked in with it) shows 0 points, not an error."""

    def __init__(
        self,
        config: BridgeConfig,
        key: Ed25519PrivateKey,
        rewards: RewardService,
        members: MemberService,
    ) -> None:
        self.config = config
        self.store = config.store
        self.key = key
        self.keys = {key_id(key.public_key()): key.public_key()}
        self.rewards = rewards
        self.members = members
        self.template = Template(
            resources.files("cloud_bridge").joinpath("static/member.html").read_text("utf-8")
        )
        self.headers = {**_HEADERS, "Content-Security-Policy": page_csp(self.template.template)}

    def verified(self, token: str) -> Code | None:
        """A member code of the store without an expiry: what a join slip carries. A
        code with `exp` (the page's own live code) is refused, or a screenshot of the
        live code would open the whole page and a chain of fresh live codes."""
        code = verify_code(token, self.keys, store=self.store, now=time.time())
        if not isinstance(code, Code) or code.type is not CodeType.MEMBER:
            return None
        if code.payload.exp is not None:
            return None
        return code

    def share_link(self, member: str) -> str:
        """The shop's own sign-up page (`members.join_url`) with `ref=<member>`, else the
        bridge's `/j` page."""
        ref = urlencode({"ref": member})
        join = self.config.members.join_url
        if join:
            sep = "" if join.endswith(("?", "&")) else "&" if "?" in join else "?"
            return f"{join}{sep}{ref}"
        # The service may serve several stores: name this one (the first store's page is
        # the default, and a single shop's `/j` ignores it).
        ref = urlencode({"ref": member, "store": self.config.store})
        return f"{self.config.member_page_base()}/j?{ref}"

    def _html(self, lang: str, title: str, main: str, status: int = 200) -> HTMLResponse:
        page = self.template.substitute(
            lang="en" if lang == "en" else "zh-CN", title=_e(title), main=main
        )
        return HTMLResponse(page, status_code=status, headers=self.headers)

    def missing(self, lang: str) -> HTMLResponse:
        s = STRINGS[lang]
        main = f'<h1>{_e(s["missing"])}</h1>\n<p class="empty">{_e(s["missing.text"])}</p>'
        return self._html(lang, s["missing"], main, 404)

    def reason_words(self, reason: str, lang: str, names: dict[str, str]) -> str:
        s = STRINGS[lang]
        if reason == "checkin":
            return s["checkin"]
        if reason.startswith("reward:"):
            rid = reason.removeprefix("reward:")
            return s["reward"].format(name=names.get(rid, rid))
        if reason.startswith("referral:"):
            return s["referral"]
        return reason

    def _names(self, lang: str) -> dict[str, str]:
        out = {}
        for r in self.rewards.rewards(include_retired=True):
            out[r.id] = (r.name_en or r.name) if lang == "en" else r.name
        return out

    def member(self, token: str, lang: str) -> HTMLResponse:
        code = self.verified(token)
        if code is None:
            return self.missing(lang)
        s = STRINGS[lang]
        view = self.members.get(code.id)
        entries = self.members.ledger(code.id, limit=LEDGER_ENTRIES) if view is not None else []
        name = (view.name if view is not None else None) or code.name or s["member"]
        points = view.points if view is not None else 0
        visits = view.visits if view is not None else 0
        last = view.last_visit if view is not None else None
        other = "zh" if lang == "en" else "en"
        facts = [f"<span>{_e(s['visits']).format(n=f'<strong>{visits}</strong>')}</span>"]
        if last is not None:
            facts.append(f"<span>{_e(s['last_visit'].format(when=_local(last)))}</span>")
        names = self._names(lang)
        rows = []
        for entry in entries:
            sign = "plus" if entry.delta >= 0 else "minus"
            delta = f"+{entry.delta}" if entry.delta >= 0 else f"−{-entry.delta}"
            rows.append(
                f'<li><span class="what">{_e(self.reason_words(entry.reason, lang, names))}'
                f'<span class="when">{_e(_local(entry.at))}</span></span>'
                f'<span class="delta {sign}">{_e(delta)}</span></li>'
            )
        ledger = (
            f'<ul class="ledger">{"".join(rows)}</ul>'
            if rows
            else f'<p class="empty">{_e(s["ledger.empty"])}</p>'
        )
        share = self.share_link(code.id)
        main = f"""<header><span class="store">{_e(self.store)}</span>
<a class="lang" href="?lang={other}">{_e(s["other"])}</a></header>
<h1 id="name">{_e(name)}</h1>
<section class="card balance"><b id="points" class="{"neg" if points < 0 else ""}">{points}</b>
<span>{_e(s["points"])}</span>
<div class="facts">{"".join(facts)}</div></section>
<section class="card code"><h2>{_e(s["code"])}</h2>
<img id="live-code" src="{_e(quote(token, safe=""))}/code.svg" alt="{_e(s["code"])}">
<p class="hint">{_e(s["code.hint"])}</p></section>
<section class="card"><h2>{_e(s["ledger"])}</h2>
{ledger}</section>
<section class="card share"><h2>{_e(s["share"])}</h2>
<a id="share" href="{_e(share)}">{_e(share)}</a>
<p class="hint">{_e(s["share.hint"])}</p></section>"""
        return self._html(lang, s["title"], main)

    def live_code(self, token: str) -> Response:
        """A fresh member code for the same member, valid `members.live_code_s`, as SVG."""
        code = self.verified(token)
        if code is None:
            return Response("not found", status_code=404, headers=_HEADERS, media_type="text/plain")
        now = time.time()
        fresh = issue(
            self.key,
            "member",
            store=self.store,
            id=code.id,
            name=code.name,
            expires=int(now) + self.config.members.live_code_s,
            now=now,
        )
        out = io.BytesIO()
        segno.make(fresh.token, error="m").save(
            out, kind="svg", scale=4, border=4, light="#fff", xmldecl=False
        )
        return Response(out.getvalue(), media_type="image/svg+xml", headers=self.headers)

    def join(self, ref: str | None, lang: str) -> HTMLResponse:
        s = STRINGS[lang]
        other = "zh" if lang == "en" else "en"
        query = urlencode({"lang": other, **({"ref": ref} if ref else {})})
        title = s["join.title"].format(store=self.store)
        main = (
            f'<header><span class="store">{_e(self.store)}</span>'
            f'<a class="lang" href="?{_e(query)}">{_e(s["other"])}</a></header>\n'
            f"<h1>{_e(title)}</h1>\n"
            f'<section class="card"><p>{_e(s["join.text"])}</p>'
            + (f'<p class="hint">{_e(s["join.ref"])}</p>' if ref else "")
            + "</section>"
        )
        return self._html(lang, title, main)


def member_page_router(pages: MemberPages) -> APIRouter:
    """`/m/{token}`, `/m/{token}/code.svg` and `/j`: public (the link is the key), and not
    in the OpenAPI document (they are pages, not API)."""
    router = APIRouter(include_in_schema=False)

    def lang_of(request: Request) -> str:
        query, accept = request.query_params.get("lang"), request.headers.get("accept-language")
        return pick_language(query, accept)

    @router.get("/m/{token}", response_class=HTMLResponse)
    def member_page(token: str, request: Request) -> HTMLResponse:
        return pages.member(token, lang_of(request))

    @router.get("/m/{token}/code.svg")
    def member_code(token: str) -> Response:
        return pages.live_code(token)

    @router.get("/j", response_class=HTMLResponse)
    def join_page(request: Request) -> HTMLResponse:
        ref = request.query_params.get("ref")
        return pages.join(ref[:256] if ref else None, lang_of(request))

    return router
