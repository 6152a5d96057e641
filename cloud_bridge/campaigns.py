"""Campaigns (docs/campaigns.md): coupons, group-buy vouchers, flash sales, visit cards.

One service for the API (`api_campaigns.py`) and the command line (`o2o-bridge codes`),
so a code issued either way carries the same rules and is counted the same: the
campaign's name, kind, value, hours and uses are signed into every code (kiosks decide
offline), and every code handed out is recorded (`db/campaigns.py`).
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud_bridge.config import BridgeConfig
from cloud_bridge.db import Repository, format_ts
from cloud_bridge.db.campaigns import (
    CampaignRecord,
    Campaigns,
    MemberLimit,
    NewIssuedCode,
    NotEnoughLeft,
)
from cloud_bridge.issuing import DAY, MAX_SPAN_S, IssuedCode, issue
from o2o_protocol.hours import parse_hours, shop_zone

KINDS = ("coupon", "group_buy", "flash_sale", "visit_card")
#: Codes one request may ask for.
MAX_COUNT = 1000
#: A visit card's uses.
MIN_USES, MAX_USES = 2, 1000
#: How long a code of a campaign without an end lives.
DEFAULT_LIFE_S = 365 * DAY
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")

__all__ = ["KINDS", "CampaignError", "CampaignService", "Refused", "shop_time_zone"]


def shop_time_zone(config: BridgeConfig) -> tzinfo:
    """The shop's zone: the config's `timezone` (absent: this machine's)."""
    return shop_zone(getattr(config, "timezone", None))


def new_campaign_id() -> str:
    return "cp-" + secrets.token_hex(4)


class CampaignError(ValueError):
    """A campaign or a request for codes that cannot be; `field` names what is wrong."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class Refused(Exception):
    """Codes refused for the campaign as it stands (409): none are issued."""


@dataclass(frozen=True)
class CampaignCode:
    id: str
    code: str
    url: str | None

    def as_dict(self) -> dict[str, Any]:
        out = {"id": self.id, "code": self.code}
        if self.url:
            out["url"] = self.url
        return out


def parse_time(value: str, zone: tzinfo, now: float, *, field: str, end: bool = False) -> datetime:
    """RFC 3339, or a date `YYYY-MM-DD` in the shop's zone (an end date: to its end);
    within 200 years of now, as every time of a code."""
    if not isinstance(value, str):
        raise CampaignError(field, "a time is RFC 3339 text or a date YYYY-MM-DD")
    try:
        if _DATE.fullmatch(value):
            day = datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=zone)
            when = (day + timedelta(days=1) if end else day).astimezone(UTC)
        else:
            text = value.upper()
            if "T" not in text:
                raise ValueError
            when = datetime.fromisoformat(text.replace("Z", "+00:00"))
            if when.tzinfo is None:
                raise ValueError
            when = when.astimezone(UTC)
    except (ValueError, OverflowError):
        raise CampaignError(
            field, f"{value!r} is not RFC 3339 (with an offset or Z) or a date YYYY-MM-DD"
        ) from None
    if abs(when.timestamp() - now) > MAX_SPAN_S:
        raise CampaignError(field, f"{value!r} is more than 200 years from now")
    return when


def _ts(when: datetime | None) -> str | None:
    return None if when is None else format_ts(when)


class CampaignService:
    """Makes campaigns, issues their codes, and counts what they brought."""

    def __init__(
        self,
        repo: Repository,
        config: BridgeConfig,
        key: Ed25519PrivateKey | None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Without `key` campaigns are kept but no code can be issued."""
        self.config = config
        self.store = config.store
        self.key = key
        self.db = Campaigns(repo, config.store)
        self.clock = clock

    @property
    def zone(self) -> tzinfo:
        return shop_time_zone(self.config)

    # -- campaigns --------------------------------------------------------------------

    def create(
        self,
        *,
        name: str,
        kind: str,
        value: str,
        quantity: int | None = None,
        per_member: int | None = None,
        uses: int | None = None,
        hours: Any = None,
        starts: str | None = None,
        ends: str | None = None,
    ) -> CampaignRecord:
        """A new campaign; CampaignError names the field that is wrong."""
        if not isinstance(name, str) or not 1 <= len(name) <= 100:
            raise CampaignError("name", "1 to 100 characters")
        if kind not in KINDS:
            raise CampaignError("kind", f"one of {', '.join(KINDS)}")
        if not isinstance(value, str) or not 1 <= len(value) <= 100:
            raise CampaignError("value", "1 to 100 characters")
        for field, n in (("quantity", quantity), ("per_member", per_member)):
            if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
                raise CampaignError(field, "at least 1 when given")
        if kind == "visit_card":
            if uses is None:
                raise CampaignError("uses", "a visit card needs its number of uses")
            if isinstance(uses, bool) or not isinstance(uses, int):
                raise CampaignError("uses", "a whole number")
            if not MIN_USES <= uses <= MAX_USES:
                raise CampaignError("uses", f"{MIN_USES} to {MAX_USES}")
        elif uses is not None:
            raise CampaignError("uses", "only a visit card has uses")
        try:
            windows = parse_hours(hours)
        except ValueError as exc:
            raise CampaignError("hours", str(exc)) from None
        zone, at = self.zone, self.clock()
        start = None if starts is None else parse_time(starts, zone, at, field="starts")
        end = None if ends is None else parse_time(ends, zone, at, field="ends", end=True)
        if start is not None and end is not None and start >= end:
            raise CampaignError("ends", "must be after starts")
        now = datetime.fromtimestamp(at, UTC)
        record = CampaignRecord(
            id=new_campaign_id(),
            name=name,
            kind=kind,
            value=value,
            quantity=quantity,
            issued=0,
            per_member=per_member,
            uses=uses,
            hours=[w.wire() for w in windows] or None,
            starts=start,
            ends=end,
            created_at=now,
        )
        # Refuse now what could never be signed (a code longer than kiosks read).
        try:
            # (As if before the end: a campaign that has ended is kept, issues no code.)
            at = min(at, end.timestamp() - 1) if end is not None else at
            self._sign(Ed25519PrivateKey.generate(), record, at)
        except ValueError as exc:
            raise CampaignError("name", str(exc)) from None
        return self.db.add(record)

    def campaign(self, id: str) -> CampaignRecord | None:
        return self.db.campaign(id)

    def campaigns(self) -> list[CampaignRecord]:
        return self.db.campaigns()

    # -- codes ------------------------------------------------------------------------

    def _sign(self, key: Ed25519PrivateKey, c: CampaignRecord, now: float) -> IssuedCode:
        """One code of the campaign (docs/codes.md): its id, name, kind, value, hours and
        uses; valid from its start (when later than now) to its end, or for a year."""
        nbf = int(c.starts.timestamp()) if c.starts is not None else None
        exp = int(c.ends.timestamp()) if c.ends is not None else int(now) + DEFAULT_LIFE_S
        rules = {"cn": c.name, "ck": c.kind, "hrs": c.hours or None, "uses": c.uses}
        return issue(
            key,
            "coupon",
            store=self.store,
            campaign=c.id,
            value=c.value,
            not_before=nbf if nbf is not None and nbf > now else None,
            expires=exp,
            now=now,
            rules={k: v for k, v in rules.items() if v is not None},
        )

    def issue(self, id: str, count: int, *, member: str | None = None) -> list[CampaignCode]:
        """Sign `count` codes and record them, all or none.

        LookupError: no such campaign; Refused: the campaign ended, fewer are left than
        asked for, or the member's limit would be passed; CampaignError: a bad request."""
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_COUNT:
            raise CampaignError("count", f"1 to {MAX_COUNT}")
        if member is not None and (not isinstance(member, str) or not 1 <= len(member) <= 256):
            raise CampaignError("member", "1 to 256 characters")
        if self.key is None:
            raise RuntimeError("the bridge has no signing key: it cannot issue codes")
        c = self.db.campaign(id)
        if c is None:
            raise LookupError(id)
        now = self.clock()
        if c.ends is not None and c.ends.timestamp() <= now:
            raise Refused(f"campaign {id} ended at {format_ts(c.ends)}")
        if c.left is not None and c.left < count:
            raise Refused(self._left(c.left, count))
        url = self.config.api.code_url
        codes, records = [], []
        issued_at = datetime.fromtimestamp(now, UTC)
        for _ in range(count):
            try:
                signed = self._sign(self.key, c, now)
            except ValueError as exc:  # it ended while being read
                raise Refused(f"campaign {id}: {exc}") from None
            assert signed.exp is not None
            expires = datetime.fromtimestamp(signed.exp, UTC)
            codes.append(CampaignCode(signed.id, signed.token, url + signed.token if url else None))
            records.append(NewIssuedCode(signed.id, member, issued_at, expires))
        try:
            self.db.record_issue(id, records)
        except NotEnoughLeft as exc:
            raise Refused(self._left(exc.left, count)) from None
        except MemberLimit as exc:
            raise Refused(
                f"member {member} holds {exc.held} code(s) of campaign {id}; "
                f"at most {exc.limit} each"
            ) from None
        return codes

    @staticmethod
    def _left(left: int, count: int) -> str:
        return f"only {left} code(s) left, {count} asked for"

    # -- what it brought --------------------------------------------------------------

    def as_dict(self, c: CampaignRecord, *, detail: bool = False) -> dict[str, Any]:
        """The campaign as the API answers it, with its issued and redeemed counts;
        `detail` adds the redemptions by hour of the shop's day."""
        redemptions = self.db.redemptions(c.id)
        out: dict[str, Any] = {
            "id": c.id,
            "name": c.name,
            "kind": c.kind,
            "value": c.value,
            "quantity": c.quantity,
            "per_member": c.per_member,
            "uses": c.uses,
            "hours": c.hours,
            "starts": _ts(c.starts),
            "ends": _ts(c.ends),
            "created_at": format_ts(c.created_at),
            "issued": c.issued,
            "left": c.left,
        }
        if c.kind == "visit_card":
            # A card counts once however often it was used; its uses are counted apart.
            out["redeemed"] = len({r.coupon for r in redemptions})
            out["uses_redeemed"] = len(redemptions)
        else:
            out["redeemed"] = len(redemptions)
        if detail:
            zone = self.zone
            by_hour = [0] * 24
            for r in redemptions:
                by_hour[r.ts.astimezone(zone).hour] += 1
            out["redeemed_by_hour"] = by_hour
        return out
