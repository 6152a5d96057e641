"""What `/openapi.json` says the REST API takes and answers (docs/rest-api.md).

Request and answer models, the answers every route may give, and the parsers of query
values whose forms the document spells out, so the document and the behaviour agree for
an independent client (tests/test_api_contract.py runs schemathesis against it).
"""

from __future__ import annotations

import re
import time
from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal, get_args

from fastapi import HTTPException, Path, status
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, model_validator

from o2o_protocol.messages import (
    ID_PATTERN,
    CodeRevoke,
    CouponUsed,
    LockerOpen,
    MemberUpsert,
    PreorderCancel,
    PreorderUpsert,
)

# --- request and answer models: what /openapi.json says is what the bridge does -----------

#: A time in a code request: Unix seconds, an ISO 8601 time or an offset from now (`+30d`).
#: Refused (422) outside 200 years of now; `expires` must also be in the future.
_TIME_TEXT = (
    "Unix seconds, ISO 8601 (2026-12-01T10:00Z) or an offset from now (+2h, -1d); "
    "within 200 years of now"
)
#: WHEN text, exactly as the schema says: an offset, or an ISO 8601 date or date and time.
WHEN_PATTERN = (
    r"^([+-][0-9]{1,12}(\.[0-9]{1,6})?[smhdw]"
    r"|[0-9]{4}-[0-9]{2}-[0-9]{2}"
    r"([T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,9})?)?(Z|[+-][0-9]{2}:[0-9]{2})?)?)$"
)
_When = Annotated[str, Field(max_length=64, pattern=WHEN_PATTERN)] | int
CodeTime = Annotated[_When | None, Field(description=_TIME_TEXT)]
_Text = Annotated[str | None, Field(max_length=100)]
_Short = Annotated[str | None, Field(max_length=64)]


class _JsonNumbers(BaseModel):
    """Strict, as JSON Schema reads the document: `"0"` is not the number 0 nor `true` the
    number 1, but `3.0` is the integer 3 (JSON Schema's `integer` includes it)."""

    @model_validator(mode="before")
    @classmethod
    def _integral_floats(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for name, value in data.items():
            field = cls.model_fields.get(name)
            if field is None or not isinstance(value, float) or not value.is_integer():
                continue
            if field.annotation is int or int in get_args(field.annotation):
                out[name] = int(value)
        return out


class _CodeRequest(_JsonNumbers):
    model_config = ConfigDict(extra="forbid", strict=True)

    id: _Short = Field(default=None, description="default: 12 random characters")
    expires: CodeTime = None


class MemberCodeRequest(_CodeRequest):
    type: Literal["member"]
    name: _Text = None


class StaffCodeRequest(_CodeRequest):
    type: Literal["staff"]
    name: _Text = None


class CouponCodeRequest(_CodeRequest):
    type: Literal["coupon"]
    campaign: _Short = None
    value: _Short = None
    not_before: CodeTime = None


class PickupCodeRequest(_CodeRequest):
    type: Literal["pickup"]
    order: str = Field(min_length=1, max_length=64)


class ReservationCodeRequest(_CodeRequest):
    type: Literal["reservation"]
    at: _When = Field(description="the slot: " + _TIME_TEXT)
    service: _Short = None
    name: _Text = None


CodeRequest = Annotated[
    MemberCodeRequest
    | StaffCodeRequest
    | CouponCodeRequest
    | PickupCodeRequest
    | ReservationCodeRequest,
    Field(discriminator="type"),
]


# Command data as the protocol defines it (o2o_protocol/messages.py), taken strictly from
# an API client: `false` is not the number 0 nor `"3"` the locker 3, as the schema says.
_STRICT = ConfigDict(frozen=True, extra="allow", strict=True)


class PreorderUpsertData(PreorderUpsert, _JsonNumbers):
    model_config = _STRICT


class PreorderCancelData(PreorderCancel, _JsonNumbers):
    model_config = _STRICT


class CodeRevokeData(CodeRevoke, _JsonNumbers):
    model_config = _STRICT


class MemberUpsertData(MemberUpsert, _JsonNumbers):
    model_config = _STRICT


class LockerOpenData(LockerOpen, _JsonNumbers):
    model_config = _STRICT


class CouponUsedData(CouponUsed, _JsonNumbers):
    model_config = _STRICT


class _CommandRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class PreorderUpsertCommand(_CommandRequest):
    name: Literal["preorder.upsert"]
    data: PreorderUpsertData


class PreorderCancelCommand(_CommandRequest):
    name: Literal["preorder.cancel"]
    data: PreorderCancelData


class CodeRevokeCommand(_CommandRequest):
    name: Literal["code.revoke"]
    data: CodeRevokeData


class MemberUpsertCommand(_CommandRequest):
    name: Literal["member.upsert"]
    data: MemberUpsertData


class LockerOpenCommand(_CommandRequest):
    name: Literal["locker.open"]
    data: LockerOpenData


class CouponUsedCommand(_CommandRequest):
    name: Literal["coupon.used"]
    data: CouponUsedData


CommandRequest = Annotated[
    PreorderUpsertCommand
    | PreorderCancelCommand
    | CodeRevokeCommand
    | MemberUpsertCommand
    | LockerOpenCommand
    | CouponUsedCommand,
    Field(discriminator="name"),
]


class QueuedCommand(BaseModel):
    kiosk: str
    seq: int
    name: str
    data: dict[str, Any]


class CodeResponse(BaseModel):
    code: str
    type: str
    id: str
    store: str
    exp: int | None = Field(description="Unix seconds; null for a code without expiry")
    url: str | None = Field(default=None, description="only when [api] code_url is set")


class Problem(BaseModel):
    """A refusal by the bridge (401, 403, 413): one line for a person."""

    detail: str


def _problem(text: str) -> dict[str, Any]:
    return {"model": Problem, "description": text}


#: Answers every /api/v1/ route may give besides its own.
READ_ANSWERS: dict[int | str, dict[str, Any]] = {
    401: _problem("No token, or a wrong one (`WWW-Authenticate: Bearer`)"),
    413: _problem("The body is larger than `[limits] body_bytes`"),
}
#: ... and those of a route that changes something.
WRITE_ANSWERS: dict[int | str, dict[str, Any]] = {
    **READ_ANSWERS,
    403: _problem("The read-only token on a route that changes something"),
}

#: An offset from now, as `since` takes it (`-2h`, `+1.5d`; units s m h d w).
_OFFSET = re.compile(r"[+-][0-9]{1,9}(\.[0-9]{1,6})?[smhdw]")
_OFFSET_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
#: RFC 3339 date-time, and a full date: exactly what the OpenAPI formats say.
_DATE_TIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})"
)
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
#: An optional `since` query value; absent means no bound (a query value is never null).
Since = Annotated[
    str | None,
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "format": "date-time"},
                {"type": "string", "format": "date"},
                {"type": "string", "pattern": "^" + _OFFSET.pattern + "$"},
            ],
            "description": "RFC 3339 time (2026-12-01T10:00:00Z), a date (UTC midnight) "
            "or an offset from now (-2h, -7d; units s m h d w)",
        }
    ),
]
KioskId = Annotated[
    str,
    Path(
        pattern="^" + ID_PATTERN.pattern + "$",
        description="1-64 letters, digits, '-' or '_'",
    ),
]


def unprocessable(msg: str, *loc: str | int) -> HTTPException:
    """A 422 shaped like FastAPI's own validation errors (`{"detail": [{loc, msg, type}]}`),
    so a client reads every 422 the same way."""
    return HTTPException(
        status.HTTP_422_UNPROCESSABLE_CONTENT,
        [{"loc": list(loc), "msg": msg, "type": "value_error"}],
    )


def parse_since(text: str | None) -> datetime | None:
    """A `since` query value (RFC 3339, a date or an offset); 422, never 500, when it is
    not one. A time beyond what a datetime holds is clamped: it is a filter, and "since
    the year 9999" simply matches nothing."""
    if text is None:
        return None
    try:
        if _OFFSET.fullmatch(text):
            ts = time.time() + float(text[:-1]) * _OFFSET_UNITS[text[-1]]
        elif _DATE_TIME.fullmatch(text):
            ts = datetime.fromisoformat(text.upper().replace("Z", "+00:00")).timestamp()
        elif _DATE.fullmatch(text):
            ts = datetime.combine(date.fromisoformat(text), datetime.min.time(), UTC).timestamp()
        else:
            raise ValueError("use RFC 3339 (2026-12-01T10:00:00Z), a date or an offset (-2h)")
    except ValueError as exc:
        raise unprocessable(f"not a time: {exc}", "query", "since") from None
    lowest, highest = datetime.min.replace(tzinfo=UTC), datetime.max.replace(tzinfo=UTC)
    if ts <= lowest.timestamp():
        return lowest
    if ts >= highest.timestamp():
        return highest
    return datetime.fromtimestamp(ts, UTC)
