"""The signed code format (docs/codes.md): `O2O1.<payload>.<signature>`.

Ed25519 over the ASCII bytes before the last dot. Kiosks hold public keys only, so a
stolen kiosk cannot mint codes. `verify_code` never raises: any input, however broken,
comes back as a `Code` or a `Rejected` with one of the contract's reasons.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any
from urllib.parse import parse_qs, unquote, urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
)

from o2o_protocol.hours import Window, parse_hours
from o2o_protocol.messages import Reason

CODE_PREFIX = "O2O1"
MAX_TOKEN_LENGTH = 2048
#: Tolerated clock difference between the issuer and the kiosk.
DEFAULT_SKEW_S = 300

_B64URL = re.compile(r"[A-Za-z0-9_-]*")


class CodeType(StrEnum):
    MEMBER = "m"
    COUPON = "c"
    PICKUP = "p"
    STAFF = "s"
    RESERVATION = "r"


#: Types that must carry an expiry; members and staff may be long-lived.
_EXPIRY_REQUIRED = {CodeType.COUPON, CodeType.PICKUP, CodeType.RESERVATION}
#: Type-specific fields that must be present.
_REQUIRED_FIELDS: dict[CodeType, tuple[str, ...]] = {
    CodeType.PICKUP: ("o",),
    CodeType.RESERVATION: ("at",),
}


class CodePayload(BaseModel):
    """The JSON inside a code. Unknown fields are kept: newer issuers may add some."""

    model_config = ConfigDict(frozen=True, extra="allow")

    t: CodeType
    id: StrictStr
    st: StrictStr
    kid: StrictStr
    iat: StrictInt
    exp: StrictInt | None = None
    n: StrictStr | None = None
    cp: StrictStr | None = None
    v: StrictStr | None = None
    nbf: StrictInt | None = None
    o: StrictStr | None = None
    at: StrictInt | None = None
    sv: StrictStr | None = None
    # Campaigns (docs/codes.md): display name, kind, valid hours, uses of a visit card.
    cn: StrictStr | None = None
    ck: StrictStr | None = None
    hrs: list[Any] | None = None
    uses: Annotated[StrictInt, Field(ge=2)] | None = None
    #: An activity ticket's activity (a reservation code).
    ac: StrictStr | None = None

    @field_validator("hrs")
    @classmethod
    def _hours(cls, v: list[Any] | None) -> list[Any] | None:
        # Checked here, so a code whose hours a kiosk cannot read is `malformed` at once;
        # weekdays strictly JSON integers, like every number in a code (`true`, `"2"` not).
        parse_hours(v)
        for window in v or ():
            if any(type(day) is not int for day in window["days"]):
                raise ValueError("hours: days are JSON integers")
        return v


@dataclass(frozen=True)
class Code:
    """A verified code: signature good, store right, within its validity window."""

    token: str
    payload: CodePayload

    @property
    def type(self) -> CodeType:
        return self.payload.t

    @property
    def id(self) -> str:
        return self.payload.id

    # Named views of the one-letter payload fields (the wire format stays short).

    @property
    def name(self) -> str | None:
        """A member's or staff member's display name (`n`)."""
        return self.payload.n

    @property
    def campaign(self) -> str | None:
        """A coupon's campaign (`cp`)."""
        return self.payload.cp

    @property
    def value(self) -> str | None:
        """A coupon's value text (`v`)."""
        return self.payload.v

    @property
    def campaign_name(self) -> str | None:
        """A campaign code's display name (`cn`)."""
        return self.payload.cn

    @property
    def kind(self) -> str | None:
        """A campaign code's kind (`ck`): coupon, group_buy, flash_sale or visit_card."""
        return self.payload.ck

    @property
    def hours(self) -> tuple[Window, ...]:
        """The hours the code is valid in the shop's time zone (`hrs`); () = any time."""
        return parse_hours(self.payload.hrs)

    @property
    def uses(self) -> int:
        """How many times the code may be used (`uses`, a visit card); 1 without it."""
        return self.payload.uses or 1

    @property
    def activity(self) -> str | None:
        """An activity ticket's activity id (`ac`)."""
        return self.payload.ac

    @property
    def order(self) -> str:
        """A pickup code's order id (`o`); required for pickups, "" for other types."""
        return self.payload.o or ""

    @property
    def slot(self) -> int | None:
        """A reservation's slot time, Unix seconds (`at`)."""
        return self.payload.at

    @property
    def service(self) -> str | None:
        """A reservation's service (`sv`)."""
        return self.payload.sv

    @property
    def expires(self) -> int | None:
        """Unix seconds after which the code is refused (`exp`), or None."""
        return self.payload.exp


@dataclass(frozen=True)
class Rejected:
    reason: Reason
    detail: str = ""


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Strict, canonical, unpadded base64url; raises ValueError on anything else.

    Canonical: the unused low bits of the last character must be zero, so one code has
    exactly one spelling (a kiosk remembers codes by what they say, not how).
    """
    if not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise ValueError("not base64url")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except binascii.Error as exc:
        raise ValueError(str(exc)) from None
    if b64url_encode(raw) != text:
        raise ValueError("not canonical base64url")
    return raw


def key_id(public_key: Ed25519PublicKey) -> str:
    """A short stable id for a public key: base64url of the first 8 bytes of its SHA-256."""
    return b64url_encode(hashlib.sha256(public_key_bytes(public_key)).digest()[:8])


def public_key_bytes(public_key: Ed25519PublicKey) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def load_public_key(text: str) -> Ed25519PublicKey:
    """A public key written as base64url of its 32 raw bytes (the form configs use)."""
    raw = b64url_decode(text)
    if len(raw) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    return Ed25519PublicKey.from_public_bytes(raw)


def issue_code(
    private_key: Ed25519PrivateKey,
    *,
    type: CodeType | str,
    id: str,
    store: str,
    iat: int,
    exp: int | None = None,
    **fields: Any,
) -> str:
    """Sign a payload into a token. Fields left as None are omitted."""
    kid = key_id(private_key.public_key())
    body: dict[str, Any] = {"t": CodeType(type).value, "id": id, "st": store, "kid": kid}
    body["iat"] = iat
    if exp is not None:
        body["exp"] = exp
    body.update({k: v for k, v in fields.items() if v is not None})
    CodePayload.model_validate(body)  # refuse to sign what a kiosk would call malformed
    payload = b64url_encode(json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode())
    signed = f"{CODE_PREFIX}.{payload}"
    token = f"{signed}.{b64url_encode(private_key.sign(signed.encode('ascii')))}"
    if len(token) > MAX_TOKEN_LENGTH:
        raise ValueError(
            f"the code would be {len(token)} characters; kiosks read at most {MAX_TOKEN_LENGTH}"
            " (shorten the name, campaign or value)"
        )
    return token


def extract_token(text: str) -> str:
    """The token inside scanned text: bare, a URL's `?c=` value, or its last path segment."""
    text = text.strip()
    if not text.lower().startswith(("http://", "https://")):
        return text
    try:
        parts = urlsplit(text)
    except ValueError:
        return text
    values = parse_qs(parts.query).get("c")
    if values:
        return values[0]
    segments = [s for s in parts.path.split("/") if s]
    return unquote(segments[-1]) if segments else ""


def decode_unverified(token: str) -> CodePayload | Rejected:
    """Parse a token's payload without checking the signature (for display and routing)."""
    if len(token) > MAX_TOKEN_LENGTH or not token.isascii():
        return Rejected(Reason.MALFORMED, "too long or not ASCII")
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != CODE_PREFIX:
        return Rejected(Reason.MALFORMED, f"not an {CODE_PREFIX} code")
    try:
        body = json.loads(b64url_decode(parts[1]).decode("utf-8"))
        # Lone surrogates (\ud800) parse but cannot be stored or sent: not a real code.
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except (ValueError, UnicodeError, RecursionError):
        return Rejected(Reason.MALFORMED, "payload is not base64url JSON")
    if not isinstance(body, dict):
        return Rejected(Reason.MALFORMED, "payload is not a JSON object")
    try:
        payload = CodePayload.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        return Rejected(Reason.MALFORMED, f"{'.'.join(map(str, err['loc']))}: {err['msg']}")
    if payload.t in _EXPIRY_REQUIRED and payload.exp is None:
        return Rejected(Reason.MALFORMED, "exp missing")
    for name in _REQUIRED_FIELDS.get(payload.t, ()):
        if getattr(payload, name) is None:
            return Rejected(Reason.MALFORMED, f"{name} missing")
    return payload


def verify_code(
    text: str,
    keys: Mapping[str, Ed25519PublicKey],
    *,
    store: str,
    now: float,
    skew_s: int = DEFAULT_SKEW_S,
) -> Code | Rejected:
    """Check a scanned text against the store's public keys. Never raises."""
    try:
        return _verify(text, keys, store=store, now=now, skew_s=skew_s)
    except Exception as exc:  # a last line of defence: the contract says never raise
        return Rejected(Reason.MALFORMED, f"unreadable: {type(exc).__name__}")


def _verify(
    text: str, keys: Mapping[str, Ed25519PublicKey], *, store: str, now: float, skew_s: int
) -> Code | Rejected:
    token = extract_token(text)
    payload = decode_unverified(token)
    if isinstance(payload, Rejected):
        return payload
    key = keys.get(payload.kid)
    if key is None:
        return Rejected(Reason.UNKNOWN_KEY, f"key {payload.kid!r} is not trusted here")
    signed, _, sig_text = token.rpartition(".")
    try:
        signature = b64url_decode(sig_text)
    except ValueError:
        return Rejected(Reason.MALFORMED, "signature is not base64url")
    try:
        key.verify(signature, signed.encode("ascii"))
    except InvalidSignature:
        return Rejected(Reason.BAD_SIGNATURE, "signature does not match")
    if payload.st != store:
        return Rejected(Reason.WRONG_STORE, f"code is for store {payload.st!r}")
    # Skew forgives an issuer whose clock runs a little ahead; an expiry is kept exactly,
    # so a rotating member code or a coupon never lives longer than its issuer said.
    if payload.iat > now + skew_s or (payload.nbf is not None and payload.nbf > now + skew_s):
        return Rejected(Reason.NOT_YET_VALID, "not valid yet")
    if payload.exp is not None and payload.exp <= now:
        return Rejected(Reason.EXPIRED, "expired")
    return Code(token=token, payload=payload)
