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
import re
from collections.abc import Callable
from importlib import resources
from typing import Annotated, Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import Depends, FastAPI, HTTPException, Query, status
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.routing import Match

from cloud_bridge.activities import ActivityService
from cloud_bridge.api_activities import activities_router
from cloud_bridge.api_campaigns import campaigns_router
from cloud_bridge.api_insights import insights_router
from cloud_bridge.api_members import members_router
from cloud_bridge.api_rewards import rewards_router
from cloud_bridge.api_schema import (
    READ_ANSWERS,
    WRITE_ANSWERS,
    CodeRequest,
    CodeResponse,
    CommandRequest,
    KioskId,
    QueuedCommand,
    Since,
    parse_since,
    unprocessable,
)
from cloud_bridge.campaigns import CampaignService
from cloud_bridge.commands import CommandService
from cloud_bridge.config import BridgeConfig, load_api_token, load_read_token, load_signing_key
from cloud_bridge.db import KioskState, Repository, StoredEvent, format_ts
from cloud_bridge.http_guard import RequestGuard, StrictJsonRoute
from cloud_bridge.insights import InsightsService
from cloud_bridge.issuing import issue
from cloud_bridge.member_page import MemberPages, member_page_router
from cloud_bridge.members import MemberService
from cloud_bridge.rewards import RewardService
from o2o_protocol.messages import (
    check_id,
)

_bearer = HTTPBearer(
    auto_error=False,
    description="`Authorization: Bearer <token>`: the token in the bridge's api.token file "
    "(everything), or in dashboard.token (read only)",
)


#: What `/openapi.json` says of a service of several stores (docs/chain.md).
CHAIN_DESCRIPTION = (
    "This service runs several stores. A store's token (full or read-only) picks its "
    "store: every route acts on that store only, and `?store=` naming another store is "
    "a 403. The chain token reads `GET /api/v1/chain` (every store's figures and the "
    "total) and any read route of one store named by `?store=<id>` (without it: 422); "
    "it changes nothing (403)."
)


def _event_json(e: StoredEvent) -> dict[str, Any]:
    """The envelope, when it arrived, and `ts_flag` ("ahead"/"behind") for a kiosk clock
    more than a day off (docs/mqtt.md)."""
    return {**e.envelope(), "received_at": format_ts(e.received_at), "ts_flag": e.ts_flag}


def _kiosk_json(store: str, kiosk: str, state: KioskState | None) -> dict[str, Any]:
    return {
        "store": store,
        "kiosk": kiosk,
        "online": bool(state and state.online),
        "last_seen": format_ts(state.last_seen) if state and state.last_seen else None,
        "status": state.last_status if state else None,
    }


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
    members: MemberService | None = None,
    rewards: RewardService | None = None,
    activities: ActivityService | None = None,
    chain_token: str | None = None,
    chain: Callable[[], dict[str, Any]] | None = None,
) -> FastAPI:
    """The bridge's web app. Token and key are read from the config's files unless given.

    `commands` sends what `POST /api/v1/kiosks/{kiosk}/commands` queues (without it they
    are only queued, and sent when a kiosk's status asks for them); with `mqtt_connected`,
    `/health` also tells whether the broker connection is up. In a service of several
    stores (chain.py), `chain_token` reads this store too (never changes it) and
    `chain` answers `GET /api/v1/chain` for it."""
    api_token = token if token is not None else load_api_token(config)
    if read_token is None and token is None:
        read_token = load_read_token(config)
    key = signing_key if signing_key is not None else load_signing_key(config)
    store = config.store
    if commands is None:
        commands = CommandService(repo, store, limits=config.limits)
    if members is None:
        members = MemberService(repo, store, commands, config.kiosks, settings=config.members)
    expected = api_token.encode()
    expected_read = read_token.encode() if read_token else None
    expected_chain = chain_token.encode() if chain_token else None

    def _role(authorization: str | None) -> Literal["full", "read", "chain"] | None:
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
        if expected_chain is not None and hmac.compare_digest(given, expected_chain):
            return "chain"
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
        if role in ("read", "chain"):
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
        description=CHAIN_DESCRIPTION if chain is not None else "",
        version="1",
        # Swagger UI and ReDoc load their scripts from a CDN, which shop networks may
        # not reach; /openapi.json is what integrators' tools read anyway.
        docs_url=None,
        redoc_url=None,
    )
    app.router.route_class = StrictJsonRoute
    app.state.limits = config.limits
    app.state.members = members
    app.add_middleware(
        RequestGuard,
        authenticated=lambda value: _role(value) is not None,
        limit=config.limits.body_bytes,
    )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        """A 405's `Allow` names every method of the path (Starlette names only those of
        the first route that matched it, and a path may have several routes)."""
        if exc.status_code != status.HTTP_405_METHOD_NOT_ALLOWED:
            return await http_exception_handler(request, exc)
        methods = {
            m
            for r in app.routes
            if isinstance(r, APIRoute) and r.matches(request.scope)[0] is not Match.NONE
            for m in r.methods or ()
        }
        allow = {"Allow": ", ".join(sorted(methods))}
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=allow)

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
            since=parse_since(since),
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
        rows = repo.rejected_events(store=store, since=parse_since(since), limit=limit)
        return {"rejected_events": [r.as_dict() for r in rows]}

    @app.get("/api/v1/stats", dependencies=read_auth, tags=["events"], responses=READ_ANSWERS)
    def stats() -> dict[str, Any]:
        """Today's figures (the same document as the retained `o2o/v1/{store}/stats`)."""
        return repo.today_stats(store, zone=config.zone())

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

    app.include_router(members_router(members, auth=auth, read_auth=read_auth))

    if chain is not None:
        figures = chain

        def require_chain(
            creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
        ) -> None:
            """The chain's figures: the chain token only (a store's token sees its store)."""
            role = _role(_creds(creds))
            if role is None:
                raise _refuse()
            if role != "chain":
                raise HTTPException(status.HTTP_403_FORBIDDEN, "the chain token only")

        @app.get(
            "/api/v1/chain",
            dependencies=[Depends(require_chain)],
            tags=["chain"],
            responses={
                **READ_ANSWERS,
                403: {**WRITE_ANSWERS[403], "description": "A store's token, not the chain's"},
            },
        )
        def chain_today() -> dict[str, Any]:
            """Today's figures of every store of the service (each on its own shop day)
            and the chain's total (docs/chain.md). The chain token only."""
            return figures()

    dashboard = resources.files("cloud_bridge").joinpath("static/dashboard.html").read_text("utf-8")
    page_headers = {
        "Cache-Control": "no-cache",
        "Content-Security-Policy": dashboard_csp(dashboard),
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
    }

    # Rewards, ratings and the member's page (api_rewards.py, member_page.py).
    rewards = rewards or RewardService(repo, config, key, commands)
    app.state.rewards = rewards
    app.include_router(rewards_router(rewards, auth=auth, read_auth=read_auth))
    pages = MemberPages(config, key, rewards, members)
    # Campaigns and their codes (api_campaigns.py).
    campaigns = CampaignService(repo, config, key)
    app.include_router(campaigns_router(campaigns, auth=auth, read_auth=read_auth))
    app.include_router(member_page_router(pages))
    # Activities and their sign-ups (api_activities.py).
    activities = activities or ActivityService(repo, config, key, commands)
    app.state.activities = activities
    app.include_router(activities_router(activities, auth=auth, read_auth=read_auth))
    # The owner's insights over a range of days (api_insights.py).
    insights = InsightsService(repo, config, campaigns, activities)
    app.include_router(insights_router(insights, auth=auth, read_auth=read_auth))

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
