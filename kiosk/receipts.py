"""What a receipt says: pure builders from an event's type and data, in Chinese or English.

Kept apart from the printer so the wording is tested without hardware, and so the
simulated printer, the screen and a real ESC/POS printer all show the same slip.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kiosk.decisions import share_link
from o2o_protocol.codes import Rejected, decode_unverified
from o2o_protocol.messages import EventType


@dataclass(frozen=True)
class Receipt:
    title: str
    lines: tuple[str, ...] = ()
    #: Text of a QR code printed under the lines (a next-visit coupon link), or None.
    qr: str | None = None
    footer: str = ""


STRINGS: dict[str, dict[str, str]] = {
    "zh_CN": {
        "checkin": "签到成功",
        "member": "会员：{name}",
        "visits": "到店次数：{visits}",
        "earned": "本次积分：+{points_earned}",
        "points": "积分余额：{points}",
        "not_counted": "刚刚已签到，本次不计积分",
        "coupon": "优惠券已核销",
        "campaign": "活动：{campaign}",
        "value": "优惠：{value}",
        "coupon_id": "券号：{coupon_id}",
        "card_use": "第 {use} 次，共 {uses} 次",
        "card_left": "剩余次数：{left}",
        "pickup": "取货凭证",
        "order": "订单号：{order_id}",
        "locker": "柜门：{locker} 号",
        "test": "打印测试",
        "test_line": "中文打印正常：你好，欢迎光临！",
        "time": "时间：{ts}",
        "next_visit": "扫码领取下次到店优惠",
        "thanks": "谢谢惠顾，欢迎再来！",
        "joined": "欢迎加入会员",
        "joined_known": "您已经是本店会员",
        "joined_welcome": "感谢加入！到店出示会员码即可积分。",
        "joined_scan": "用手机扫码，完成会员注册",
        "joined_scan_known": "用手机扫码，打开您的会员页面",
        "member_id": "会员号：{member_id}",
        "joined_page": "用手机扫码，打开您的会员页面（也是您的会员卡）",
        "share": "邀请好友加入：{url}",
        "voucher": "积分兑换券",
        "reward": "奖品：{reward}",
        "spent": "使用积分：{points}",
        "balance_after": "剩余积分：{balance}",
        "valid_until": "有效期至：{date}",
        "voucher_show": "到柜台出示此码领取",
    },
    "en": {
        "checkin": "Checked in",
        "member": "Member: {name}",
        "visits": "Visits: {visits}",
        "earned": "Points earned: +{points_earned}",
        "points": "Points balance: {points}",
        "not_counted": "Already checked in: no points this time",
        "coupon": "Coupon redeemed",
        "campaign": "Offer: {campaign}",
        "value": "Value: {value}",
        "coupon_id": "Coupon: {coupon_id}",
        "card_use": "Use {use} of {uses}",
        "card_left": "Uses left: {left}",
        "pickup": "Pickup receipt",
        "order": "Order: {order_id}",
        "locker": "Locker: {locker}",
        "test": "Printer test",
        "test_line": "Chinese text: 你好，欢迎光临！",
        "time": "Time: {ts}",
        "next_visit": "Scan for a next-visit coupon",
        "thanks": "Thank you, see you soon!",
        "joined": "Welcome to our membership",
        "joined_known": "You are already a member",
        "joined_welcome": "Thanks for joining! Show your member code to earn points.",
        "joined_scan": "Scan with your phone to finish signing up",
        "joined_scan_known": "Scan with your phone to open your member page",
        "member_id": "Member no.: {member_id}",
        "joined_page": "Scan to open your member page (it is your member card too)",
        "share": "Invite a friend: {url}",
        "voucher": "Reward voucher",
        "reward": "Reward: {reward}",
        "spent": "Points used: {points}",
        "balance_after": "Points left: {balance}",
        "valid_until": "Valid until: {date}",
        "voucher_show": "Show this code at the counter",
    },
}


def _t(language: str, key: str, **values: Any) -> str:
    table = STRINGS.get(language, STRINGS["en"])
    return table[key].format(**values)


def _line(language: str, key: str, data: Mapping[str, Any], *fields: str) -> list[str]:
    """One formatted line, or none when the event lacks a field it needs."""
    values = {f: data.get(f) for f in fields}
    if any(v is None or v == "" for v in values.values()):
        return []
    return [_t(language, key, **values)]


def _finish(
    title: str,
    lines: list[str],
    language: str,
    ts: str | None,
    next_visit_url: str | None,
) -> Receipt:
    if ts:
        lines.append(_t(language, "time", ts=ts))
    qr = next_visit_url or None
    if qr:
        lines.append(_t(language, "next_visit"))
    return Receipt(title, tuple(lines), qr, _t(language, "thanks"))


def checkin_receipt(
    data: Mapping[str, Any],
    *,
    language: str = "zh_CN",
    ts: str | None = None,
    next_visit_url: str | None = None,
    join_url: str | None = None,
) -> Receipt:
    lines = _line(language, "member", data, "name")
    lines += _line(language, "visits", data, "visits")
    if data.get("counted", True):
        lines += _line(language, "earned", data, "points_earned")
    else:
        lines.append(_t(language, "not_counted"))
    lines += _line(language, "points", data, "points")
    lines += _share(language, data, join_url)
    return _finish(_t(language, "checkin"), lines, language, ts, next_visit_url)


def coupon_receipt(
    data: Mapping[str, Any],
    *,
    language: str = "zh_CN",
    ts: str | None = None,
    next_visit_url: str | None = None,
    join_url: str | None = None,
) -> Receipt:
    # A campaign's code is named by its display name; an old coupon by its campaign id.
    named = "campaign_name" if data.get("campaign_name") else "campaign"
    lines = _line(language, "campaign", {"campaign": data.get(named)}, "campaign")
    lines += _line(language, "value", data, "value")
    use, uses = data.get("use"), data.get("uses")
    if isinstance(use, int) and isinstance(uses, int):
        lines.append(_t(language, "card_use", use=use, uses=uses))
        lines.append(_t(language, "card_left", left=max(uses - use, 0)))
    lines += _line(language, "coupon_id", data, "coupon_id")
    return _finish(_t(language, "coupon"), lines, language, ts, next_visit_url)


def pickup_receipt(
    data: Mapping[str, Any],
    *,
    language: str = "zh_CN",
    ts: str | None = None,
    next_visit_url: str | None = None,
    join_url: str | None = None,
) -> Receipt:
    values = dict(data)
    values.setdefault("order_id", values.get("order"))
    lines = _line(language, "order", values, "order_id")
    lines += _line(language, "locker", values, "locker")
    return _finish(_t(language, "pickup"), lines, language, ts, next_visit_url)


def joined_receipt(
    data: Mapping[str, Any],
    *,
    language: str = "zh_CN",
    ts: str | None = None,
    next_visit_url: str | None = None,
    join_url: str | None = None,
) -> Receipt:
    """The new member's slip. With a member code from the kiosk's pool, the QR is the
    member's own page (`page_url`, a member card as well). Without one (a kiosk holds
    public keys only and cannot mint a code), it is the sign-up link carrying the member
    id: the customer finishes on the phone and gets a member code there. No next-visit
    coupon: the one QR on the slip is the member's."""
    known = bool(data.get("known"))
    lines = [_t(language, "joined_welcome")] if not known else []
    lines += _line(language, "member_id", data, "member_id")
    page = str(data.get("page_url") or "")
    url = str(data.get("join_url") or "")
    qr: str | None = None
    if "://" in page:
        qr = page
        lines.append(_t(language, "joined_page"))
    elif "://" in url:  # without a sign-up page the "link" is the bare member id
        qr = url
        lines.append(_t(language, "joined_scan_known" if known else "joined_scan"))
    lines += _share(language, data, join_url)
    if ts:
        lines.append(_t(language, "time", ts=ts))
    title = _t(language, "joined_known" if known else "joined")
    return Receipt(title, tuple(lines), qr, _t(language, "thanks"))


def voucher_receipt(
    data: Mapping[str, Any],
    *,
    language: str = "zh_CN",
    ts: str | None = None,
    next_visit_url: str | None = None,
    join_url: str | None = None,
) -> Receipt:
    """A reward taken with points: the voucher's QR is a signed coupon code from the
    kiosk's pool, redeemed at the counter (or any kiosk) like any coupon, once."""
    code = str(data.get("voucher_code") or "")
    lines = _line(language, "reward", data, "reward")
    lines += _line(language, "spent", data, "points")
    until = _valid_until(code)
    if until:
        lines.append(_t(language, "valid_until", date=until))
    lines += _line(language, "balance_after", data, "balance")
    if code:
        lines.append(_t(language, "voucher_show"))
    if ts:
        lines.append(_t(language, "time", ts=ts))
    return Receipt(_t(language, "voucher"), tuple(lines), code or None, _t(language, "thanks"))


def _valid_until(code: str) -> str | None:
    """The day the voucher's code expires (the shop's local day), read from the code."""
    payload = decode_unverified(code) if code else None
    if payload is None or isinstance(payload, Rejected) or payload.exp is None:
        return None
    return datetime.fromtimestamp(payload.exp).strftime("%Y-%m-%d")


def _share(language: str, data: Mapping[str, Any], join_url: str | None) -> list[str]:
    """The member's invitation link, when the shop has a sign-up page."""
    member = data.get("member_id")
    url = share_link(join_url or "", str(member)) if member else None
    return [_t(language, "share", url=url)] if url else []


def selftest_receipt(*, language: str = "zh_CN", qr: str | None = "O2O self-test") -> Receipt:
    """The self-test slip: proves text, the code page and the QR command all print."""
    return Receipt(_t(language, "test"), (_t(language, "test_line"),), qr, _t(language, "thanks"))


_BUILDERS = {
    EventType.CHECKIN.value: checkin_receipt,
    EventType.COUPON_REDEEMED.value: coupon_receipt,
    EventType.PICKUP_OPENED.value: pickup_receipt,
    EventType.MEMBER_JOINED.value: joined_receipt,
    EventType.POINTS_REDEEMED.value: voucher_receipt,
}


def receipt_for(
    event_type: str,
    data: Mapping[str, Any],
    *,
    language: str = "zh_CN",
    ts: str | None = None,
    next_visit_url: str | None = None,
    join_url: str | None = None,
) -> Receipt | None:
    """The receipt for an event, or None when that event prints nothing.

    `join_url`: the shop's sign-up page; member slips then carry a share link.
    """
    build = _BUILDERS.get(str(event_type))
    if build is None:
        return None
    return build(data, language=language, ts=ts, next_visit_url=next_visit_url, join_url=join_url)


def render_text(receipt: Receipt, width: int = 32) -> str:
    """Plain-text rendering (the simulated printer and logs show exactly this)."""
    rule = "-" * width
    out = [receipt.title.center(width).rstrip(), rule, *receipt.lines]
    if receipt.qr:
        out.append(f"[QR] {receipt.qr}")
    if receipt.footer:
        out += [rule, receipt.footer]
    return "\n".join(out) + "\n"
