"""Issuing signed codes (docs/codes.md), shared by `o2o-bridge issue` and `POST /api/v1/codes`.

One place decides the defaults (a random id, how long a coupon or pickup code lives), so
a code made on the command line and one made through the API look the same to a kiosk.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from o2o_protocol.codes import CodeType, issue_code
from o2o_protocol.messages import check_id
from o2o_protocol.timeutil import parse_when

#: The command line's and API's names for the code types.
TYPE_NAMES: dict[str, CodeType] = {
    "member": CodeType.MEMBER,
    "coupon": CodeType.COUPON,
    "pickup": CodeType.PICKUP,
    "staff": CodeType.STAFF,
    "reservation": CodeType.RESERVATION,
}

DAY = 86400
#: Default lifetimes where the contract requires an expiry.
DEFAULT_TTL_S = {CodeType.COUPON: 30 * DAY, CodeType.PICKUP: 7 * DAY}
#: A reservation code stays valid until a day after its slot.
RESERVATION_GRACE_S = DAY
#: How far from now any time of a code may be, however it is written: the 200 years an
#: offset (`+999999d`) is already held to, for Unix seconds and ISO 8601 too.
MAX_SPAN_S = 200 * 365 * DAY


@dataclass(frozen=True)
class IssuedCode:
    token: str
    type: str
    id: str
    store: str
    exp: int | None

    def as_dict(self, url_prefix: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "code": self.token,
            "type": self.type,
            "id": self.id,
            "store": self.store,
            "exp": self.exp,
        }
        if url_prefix:
            out["url"] = url_prefix + self.token
        return out


def new_code_id() -> str:
    return secrets.token_urlsafe(9)


def _when(value: str | int | None, now: float, what: str) -> int | None:
    """Unix seconds of a time given as Unix seconds or WHEN text, within 200 years of now."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"{what}: a time is Unix seconds or text (+2h, 2026-12-01T10:00Z)")
    if isinstance(value, str):
        try:
            value = parse_when(value, now)
        except ValueError as exc:
            raise ValueError(f"{what}: {exc}") from None
    if not now - MAX_SPAN_S <= value <= now + MAX_SPAN_S:
        raise ValueError(f"{what}: {value} is more than 200 years from now")
    return value


#: What a code request may say, named alike on the command line and in the REST API.
CODE_FIELDS = (
    "id",
    "name",
    "campaign",
    "value",
    "order",
    "at",
    "service",
    "not_before",
    "expires",
)


def code_fields(request: object) -> dict[str, Any]:
    """The code fields of a parsed command line or an API body, for `issue(**...)`."""
    return {name: getattr(request, name) for name in CODE_FIELDS}


def issue(
    key: Ed25519PrivateKey,
    type_name: str,
    *,
    store: str,
    id: str | None = None,
    name: str | None = None,
    campaign: str | None = None,
    value: str | None = None,
    order: str | None = None,
    at: str | int | None = None,
    service: str | None = None,
    not_before: str | int | None = None,
    expires: str | int | None = None,
    now: float | None = None,
    rules: dict[str, Any] | None = None,
) -> IssuedCode:
    """Sign one code. Times are Unix seconds or WHEN text (`+2h`, `-1d`, ISO 8601).

    `rules`: a campaign's further payload fields for a coupon (`cn`, `ck`, `hrs`, `uses`,
    docs/codes.md), signed as they are: the campaign service has checked them.

    Raises ValueError with a message fit for a command line or an API client.
    """
    now = time.time() if now is None else now
    type_ = TYPE_NAMES.get(type_name)
    if type_ is None:
        raise ValueError(f"type must be one of {', '.join(TYPE_NAMES)} (got {type_name!r})")
    check_id(store, "store")
    code_id = id or new_code_id()
    if not code_id or len(code_id) > 64:
        raise ValueError("id must be 1-64 characters")
    at_ts = _when(at, now, "at")
    nbf = _when(not_before, now, "not-before")
    exp = _when(expires, now, "expires")
    fields: dict[str, Any] = {}
    if type_ in (CodeType.MEMBER, CodeType.STAFF):
        fields["n"] = name
    elif type_ is CodeType.COUPON:
        fields.update(cp=campaign, v=value, nbf=nbf, **(rules or {}))
    elif type_ is CodeType.PICKUP:
        if not order:
            raise ValueError("a pickup code needs an order id (--order)")
        fields["o"] = order
    elif type_ is CodeType.RESERVATION:
        if at_ts is None:
            raise ValueError("a reservation code needs its slot time (--at)")
        fields.update(at=at_ts, sv=service, n=name)
    if exp is None:
        if type_ in DEFAULT_TTL_S:
            exp = int(now) + DEFAULT_TTL_S[type_]
        elif type_ is CodeType.RESERVATION and at_ts is not None:
            exp = at_ts + RESERVATION_GRACE_S
    if exp is not None and exp <= now:
        raise ValueError(f"expires: {exp} is not in the future; the code would be dead at once")
    if exp is not None and nbf is not None and nbf >= exp:
        raise ValueError("not-before: not before expires; the code would never be valid")
    token = issue_code(key, type=type_, id=code_id, store=store, iat=int(now), exp=exp, **fields)
    return IssuedCode(token=token, type=type_name, id=code_id, store=store, exp=exp)
