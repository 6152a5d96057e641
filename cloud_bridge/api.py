"""REST API (`/api/v1/…`) and the owner's dashboard (`/`).

The API is what a shop's online side (mini-program, shop system) calls: read events and
today's figures, see which kiosks are up, and ask for signed codes without ever holding
the signing key. Every `/api/v1/` route needs `Authorization: Bearer <token>`; the
dashboard page itself is public but holds no data: it asks for the token and then reads
the same API.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, date, datetime
from importlib import resources
from typing import Annotated, Any, Literal, get_args

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request, Response, status
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, model_validator
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cloud_bridge.commands import CommandService
from cloud_bridge.config import BridgeConfig, load_api_token, load_read_token, load_signing_key
from cloud_bridge.db import KioskState, Repository, StoredEvent, format_ts
from cloud_bridge.issuing import issue
from o2o_protocol.limits import LimitExceeded, Limits, check_json
from o2o_protocol.messages import (
    ID_PATTERN,
    CodeRevoke,
    CouponUsed,
    LockerOpen,
    MemberUpsert,
    PreorderCancel,
    PreorderUpsert,
    check_id,
)

_bearer = HTTPBearer(
    auto_error=False,
    description="`Authorization: Bearer <token>`: the token in the bridge's api.token file "
    "(everything), or in dashboard.token (read only)",
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


def _event_json(e: StoredEvent) -> dict[str, Any]:
    return {**e.envelope(), "received_at": format_ts(e.received_at)}


def _since(text: str | None) -> datetime | None:
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


def _kiosk_json(store: str, kiosk: str, state: KioskState | None) -> dict[str, Any]:
    return {
        "store": store,
        "kiosk": kiosk,
        "online": bool(state and state.online),
        "last_seen": format_ts(state.last_seen) if state and state.last_seen else None,
        "status": state.last_status if state else None,
    }


class _StrictJsonRequest(Request):
    """A request whose JSON body is parsed strictly: NaN and Infinity are not JSON, and
    the shop's limits (depth, string and item counts) are checked before any model sees
    the value. Every refusal is a 422 in the validation-error shape."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            try:
                value = json.loads(body, parse_constant=_not_json)
            except json.JSONDecodeError:
                raise  # FastAPI's own 422 (json_invalid), with the position
            except (ValueError, RecursionError) as exc:
                msg = str(exc) if isinstance(exc, _NotJson) else f"not JSON: {type(exc).__name__}"
                raise unprocessable(msg, "body") from None
            limits: Limits = self.app.state.limits
            try:
                check_json(value, limits, what="body")
            except LimitExceeded as exc:
                raise unprocessable(str(exc), "body") from None
            self._json = value
        return self._json


class _NotJson(ValueError):
    pass


def _not_json(constant: str) -> Any:
    raise _NotJson(f"{constant} is not JSON: numbers must be finite")


class StrictJsonRoute(APIRoute):
    """Every route of the app reads its JSON body through `_StrictJsonRequest`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            return await handler(_StrictJsonRequest(request.scope, request.receive))

        return strict


class _TooLarge(HTTPException):
    """Raised from `receive` past the limit. An HTTPException, so FastAPI's body reading
    passes it on as it is (its own answer for other errors there is a 400)."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            status.HTTP_413_CONTENT_TOO_LARGE,
            _too_large(limit),
            headers={"Connection": "close"},
        )


class RequestGuard:
    """ASGI middleware: authenticate first, then cap the body, before anything reads it.

    On `/api/`, a missing or wrong token is a 401 before a byte of the body is read; then
    a `Content-Length` over the limit is a 413 at once, and a body sent without one
    (chunked) is counted while it arrives and cut off with a 413 past the limit, so no
    request can make the bridge hold more than `limit` bytes of it.
    """

    def __init__(
        self, app: ASGIApp, *, authenticated: Callable[[str | None], bool], limit: int
    ) -> None:
        self.app = app
        self.authenticated = authenticated
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/api/"):
            await self.app(scope, receive, send)  # the page and /health read no body
            return
        headers = {k.lower(): v for k, v in scope["headers"]}
        given = headers.get(b"authorization")
        if not self.authenticated(None if given is None else given.decode("latin-1")):
            await _refuse(send, 401, "missing or wrong API token", b"Bearer")
            return
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            await _refuse(send, 413, _too_large(self.limit))
            return

        received = 0
        started = False

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise _TooLarge(self.limit)
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except _TooLarge:
            if started:
                raise
            await _refuse(send, 413, _too_large(self.limit))


def _too_large(limit: int) -> str:
    return f"the body is larger than {limit} bytes ([limits] body_bytes)"


async def _refuse(send: Send, code: int, detail: str, challenge: bytes | None = None) -> None:
    """Answer at once, and close: the body the client may still be sending is never read."""
    body = json.dumps({"detail": detail}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    if challenge:
        headers.append((b"www-authenticate", challenge))
    await send({"type": "http.response.start", "status": code, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def create_app(
    config: BridgeConfig,
    repo: Repository,
    *,
    token: str | None = None,
    read_token: str | None = None,
    signing_key: Ed25519PrivateKey | None = None,
    commands: CommandService | None = None,
    mqtt_connected: Callable[[], bool] | None = None,
    ingest_health: Callable[[], dict[str, Any]] | None = None,
) -> FastAPI:
    """The bridge's web app. Token and key are read from the config's files unless given.

    `commands` sends what `POST /api/v1/kiosks/{kiosk}/commands` queues (without it they
    are only queued, and sent when a kiosk's status asks for them); with `mqtt_connected`,
    `/health` also tells whether the broker connection is up."""
    api_token = token if token is not None else load_api_token(config)
    if read_token is None and token is None:
        read_token = load_read_token(config)
    key = signing_key if signing_key is not None else load_signing_key(config)
    store = config.store
    if commands is None:
        commands = CommandService(repo, store, limits=config.limits)
    expected = api_token.encode()
    expected_read = read_token.encode() if read_token else None

    def _role(authorization: str | None) -> Literal["full", "read"] | None:
        """Who a request's `Authorization` value is. The scheme is case-insensitive (RFC
        7235: `bearer x` is `Bearer x`); only the secret is compared, in constant time."""
        scheme, _, secret = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not secret:
            return None
        given = secret.encode()
        if hmac.compare_digest(given, expected):
            return "full"
        if expected_read is not None and hmac.compare_digest(given, expected_read):
            return "read"
        return None

    def _creds(creds: HTTPAuthorizationCredentials | None) -> str | None:
        return None if creds is None else f"{creds.scheme} {creds.credentials}"

    def _refuse() -> HTTPException:
        return HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing or wrong API token",
            headers={"WWW-Authenticate": "Bearer"},
        )

    # RequestGuard has already refused a request without a valid token (before reading
    # its body); these decide what each token may do, and declare the scheme in OpenAPI.
    def require_token(
        creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> None:
        """Issuing codes and commanding kiosks: the full API token only."""
        role = _role(_creds(creds))
        if role == "read":
            raise HTTPException(status.HTTP_403_FORBIDDEN, "this token may only read")
        if role != "full":
            raise _refuse()

    def require_read(
        creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> None:
        """Reading events, figures and kiosks: the API token or the read-only one."""
        if _role(_creds(creds)) is None:
            raise _refuse()

    app = FastAPI(
        title="o2o-bridge",
        summary="Events, figures, kiosks and signed codes of one shop",
        version="1",
        # Swagger UI and ReDoc load their scripts from a CDN, which shop networks may
        # not reach; /openapi.json is what integrators' tools read anyway.
        docs_url=None,
        redoc_url=None,
    )
    app.router.route_class = StrictJsonRoute
    app.state.limits = config.limits
    app.add_middleware(
        RequestGuard,
        authenticated=lambda value: _role(value) is not None,
        limit=config.limits.body_bytes,
    )
    auth = [Depends(require_token)]
    read_auth = [Depends(require_read)]

    @app.get(
        "/health",
        tags=["service"],
        responses={
            200: {"description": "ok: connected, subscribed, and the ingest keeps up"},
            503: {"description": "degraded: `problems` says why (broker, database, ingest)"},
        },
    )
    def health() -> JSONResponse:
        """Liveness for load balancers and scripts; no token needed, no data given away.

        503 with `"status": "degraded"` and the `problems` when the broker session is
        down, the ingest waits for a database that is down, or a message has waited too
        long to be stored (`BridgeRuntime.health`)."""
        body: dict[str, Any] = {"status": "ok", "store": store}
        if ingest_health is not None:
            body.update(ingest_health())
        elif mqtt_connected is not None:
            body["mqtt_connected"] = mqtt_connected()
            if not body["mqtt_connected"]:
                body.update(status="degraded", problems=["broker session down"])
        return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)

    @app.get("/api/v1/events", dependencies=read_auth, tags=["events"], responses=READ_ANSWERS)
    def list_events(
        since: Annotated[Since, Query(description="only events from this time on")] = None,
        type: Annotated[str | None, Query(description="event type, e.g. checkin")] = None,
        kiosk: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        order: Literal["newest", "oldest"] = "newest",
    ) -> dict[str, Any]:
        """Stored events of this store, newest first by event time (or oldest first)."""
        rows = repo.events(
            store=store,
            since=_since(since),
            type=type,
            kiosk=kiosk,
            limit=limit,
            oldest_first=order == "oldest",
        )
        return {"events": [_event_json(e) for e in rows]}

    @app.get(
        "/api/v1/rejected-events", dependencies=read_auth, tags=["events"], responses=READ_ANSWERS
    )
    def list_rejected_events(
        since: Annotated[Since, Query(description="only those received since")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> dict[str, Any]:
        """Events the database refused (quarantine), newest first, each with its raw JSON
        and the error. They were acked to the kiosk: this is where they are kept."""
        rows = repo.rejected_events(store=store, since=_since(since), limit=limit)
        return {"rejected_events": [r.as_dict() for r in rows]}

    @app.get("/api/v1/stats", dependencies=read_auth, tags=["events"], responses=READ_ANSWERS)
    def stats() -> dict[str, Any]:
        """Today's figures (the same document as the retained `o2o/v1/{store}/stats`)."""
        return repo.today_stats(store)

    @app.get("/api/v1/kiosks", dependencies=read_auth, tags=["kiosks"], responses=READ_ANSWERS)
    def kiosks() -> dict[str, Any]:
        """Each kiosk's last status: the configured ones first, then any other seen."""
        states = {k.kiosk: k for k in repo.kiosks(store)}
        names = list(config.kiosks) + sorted(set(states) - set(config.kiosks))
        return {"kiosks": [_kiosk_json(store, k, states.get(k)) for k in names]}

    @app.post(
        "/api/v1/codes",
        dependencies=auth,
        tags=["codes"],
        status_code=status.HTTP_201_CREATED,
        response_model=CodeResponse,
        # `exp` is always there (null for a code without expiry); `url` only when set.
        response_model_exclude_unset=True,
        responses=WRITE_ANSWERS,
    )
    def create_code(body: CodeRequest) -> dict[str, Any]:
        """Sign a code for a customer (docs/codes.md); the key never leaves the bridge."""
        try:
            issued = issue(key, body.type, store=store, **body.model_dump(exclude={"type"}))
        except ValueError as exc:
            raise unprocessable(str(exc), "body") from None
        return issued.as_dict(config.api.code_url)

    @app.post(
        "/api/v1/kiosks/{kiosk}/commands",
        dependencies=auth,
        tags=["kiosks"],
        status_code=status.HTTP_201_CREATED,
        response_model=QueuedCommand,
        responses=WRITE_ANSWERS,
    )
    def send_command(kiosk: KioskId, body: CommandRequest) -> dict[str, Any]:
        """Queue a command (e.g. `preorder.upsert`, `code.revoke`) for one kiosk.

        It carries the kiosk's next `seq`; the bridge re-sends it until the kiosk's status
        reports it applied, so a kiosk that is offline now gets it when it comes back.
        """
        try:
            check_id(kiosk, "kiosk id")
        except ValueError as exc:
            raise unprocessable(str(exc), "path", "kiosk") from None
        try:
            # Checked (and bounded by the shop's limits) before queueing: a queued
            # command is re-sent until applied.
            cmd = commands.send(kiosk, body.name, body.data.model_dump(exclude_unset=True))
        except ValueError as exc:
            raise unprocessable(str(exc), "body", "data") from None
        return {"kiosk": kiosk, **cmd.model_dump()}

    dashboard = resources.files("cloud_bridge").joinpath("static/dashboard.html").read_text("utf-8")
    page_headers = {
        "Cache-Control": "no-cache",
        "Content-Security-Policy": dashboard_csp(dashboard),
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
    }

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> HTMLResponse:
        return HTMLResponse(dashboard, headers=page_headers)

    return app


def _inline_hashes(page: str, tag: str) -> str:
    blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", page, flags=re.S)
    return " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(b.encode()).digest()).decode() + "'"
        for b in blocks
    )


def dashboard_csp(page: str) -> str:
    """The dashboard's Content-Security-Policy: only its own inline script and style run.

    The page puts event data on screen with textContent only; this is the second line of
    defence: even markup slipped in from an unverified code could not load or run anything.
    """
    return "; ".join(
        [
            "default-src 'none'",
            f"script-src {_inline_hashes(page, 'script')}",
            f"style-src {_inline_hashes(page, 'style')}",
            "connect-src 'self'",
            "img-src 'self' data:",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )
