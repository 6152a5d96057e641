"""REST routes for members and their points (`/api/v1/members`, docs/rest-api.md).

The shop's online side creates members (crediting whoever shared the link), reads
balances and ledgers, and earns or spends points. A spend that would go below zero is
refused (409) and changes nothing; a request repeated with the same `Idempotency-Key`
changes the balance once and answers as the first did.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Any, ClassVar

from fastapi import APIRouter, Header, HTTPException, Path, Query, Request, status
from fastapi.params import Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.types import Receive, Scope, Send

from cloud_bridge.api_schema import READ_ANSWERS, WRITE_ANSWERS, Problem, _JsonNumbers
from cloud_bridge.http_guard import StrictJsonRoute
from cloud_bridge.issuing import issue
from cloud_bridge.members import (
    MAX_DELTA,
    BelowZero,
    KeyReused,
    MemberService,
    MemberView,
    UnknownMember,
)

#: A member id, as a path segment can carry it: 1-256 characters, no control characters,
#: no '/'. Ids the bridge issues are 1-64 base64url characters (docs/codes.md).
MEMBER_ID_PATTERN = r"^[^\x00-\x1f\x7f-\x9f/]{1,256}$"
_MemberId = Annotated[str, Field(pattern=MEMBER_ID_PATTERN, description="1-256 characters")]
_MemberPath = Annotated[
    str,
    Path(
        pattern=MEMBER_ID_PATTERN,
        description="the member id: 1-256 characters, no control characters, no '/'",
    ),
]
#: Printable ASCII without spaces at either end (HTTP strips those from a header value).
KEY_PATTERN = r"^[\x21-\x7e]([\x20-\x7e]{0,198}[\x21-\x7e])?$"
_IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        pattern=KEY_PATTERN,
        max_length=200,
        description="1-200 printable characters; the same key again changes nothing and "
        "answers as the first request did",
    ),
]


def _problem(text: str) -> dict[str, Any]:
    return {"model": Problem, "description": text}


_UNKNOWN: dict[int | str, dict[str, Any]] = {404: _problem("No member with that id")}


class MemberRequest(_JsonNumbers):
    model_config = ConfigDict(extra="forbid", strict=True)

    id: _MemberId
    name: Annotated[str | None, Field(max_length=100)] = None
    referrer: _MemberId | None = Field(
        default=None, description="the member who shared the link: credited once"
    )


class PointsRequest(_JsonNumbers):
    model_config = ConfigDict(extra="forbid", strict=True)

    delta: int = Field(
        ge=-MAX_DELTA,
        le=MAX_DELTA,
        description="points earned (> 0) or spent (< 0); not 0",
        json_schema_extra={"not": {"const": 0}},
    )
    reason: str = Field(pattern=r"^[^\x00-\x1f\x7f]{1,200}$", description="for the ledger")

    @field_validator("delta")
    @classmethod
    def _not_zero(cls, v: int) -> int:
        if v == 0:
            raise ValueError("a change of 0 points is no change")
        return v


class MemberAnswer(BaseModel):
    id: str
    name: str | None
    points: int = Field(description="the ledger balance; below zero when overdrawn")
    visits: int
    last_visit: str | None = Field(description="RFC 3339, the last counted visit")
    joined_at: str
    source: str = Field(description="`kiosk:<id>` or `online`")
    referrer: str | None
    overdrawn: bool


class MemberPageAnswer(MemberAnswer):
    page_url: str | None = Field(
        default=None,
        description="the member's own page, `<members.page_url>/m/<member code>` (a code of "
        "this store for this member, no expiry); absent without a signing key or for an id "
        "longer than 64 characters",
    )


class MemberList(BaseModel):
    members: list[MemberAnswer]


class PointsAnswer(BaseModel):
    id: str
    points: int


class LedgerEntryAnswer(BaseModel):
    delta: int
    reason: str
    source: str
    ref: str = Field(description="`event:<id>`, `key:<Idempotency-Key>`, `referral:<id>`…")
    at: str
    overdraft: bool


class LedgerAnswer(BaseModel):
    entries: list[LedgerEntryAnswer]


class _MemberRoute(StrictJsonRoute):
    """`/api/v1/members` has a GET and a POST route: a 405 there names both in `Allow`
    (Starlette's names only the methods of the route it matched first)."""

    #: Every method of each member path, over all its routes.
    allowed: ClassVar[dict[str, set[str]]] = {}

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        self.allowed.setdefault(self.path_format, set()).update(self.methods or ())

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.methods and scope["method"] not in self.methods:
            methods = self.allowed.get(self.path_format, self.methods)
            raise HTTPException(
                status.HTTP_405_METHOD_NOT_ALLOWED, headers={"Allow": ", ".join(sorted(methods))}
            )
        await super().handle(scope, receive, send)


def _conflict(text: str) -> HTTPException:
    return HTTPException(status.HTTP_409_CONFLICT, text)


def _unknown(member_id: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, f"no member {member_id!r}")


def _with_page(request: Request, member: MemberView) -> dict[str, Any]:
    """The member answer with `page_url` when the bridge can sign a code for the member:
    the key is the one the app loaded, held by its reward service (`app.state.rewards`)."""
    answer = member.as_dict()
    rewards = getattr(request.app.state, "rewards", None)
    if rewards is None or rewards.key is None:
        return answer
    try:
        code = issue(rewards.key, "member", store=rewards.store, id=member.id)
    except ValueError:  # ids up to 256 characters; a code holds at most 64
        return answer
    return {**answer, "page_url": rewards.page_url(code.token)}


def members_router(
    members: MemberService, *, auth: Sequence[Depends], read_auth: Sequence[Depends]
) -> APIRouter:
    """The member routes; `auth` (full token) guards writes, `read_auth` reads."""
    router = APIRouter(prefix="/api/v1/members", tags=["members"], route_class=_MemberRoute)

    @router.post(
        "",
        dependencies=auth,
        status_code=status.HTTP_201_CREATED,
        response_model=MemberPageAnswer,
        responses={
            **WRITE_ANSWERS,
            200: {"model": MemberPageAnswer, "description": "It existed"},
        },
    )
    def create_member(body: MemberRequest, request: Request) -> JSONResponse:
        """Create a member (201), or answer the existing one (200; renamed when `name` is
        given), with the link to the member's page. A new member whose `referrer` is an
        existing member credits the referrer `[members] referral_points` once."""
        member, created = members.create(body.id, body.name, body.referrer)
        return JSONResponse(_with_page(request, member), status_code=201 if created else 200)

    @router.get("", dependencies=read_auth, response_model=MemberList, responses=READ_ANSWERS)
    def list_members(
        overdrawn: Annotated[bool, Query(description="only those below zero")] = False,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> dict[str, Any]:
        """Members by id, or (`overdrawn=true`) those below zero, the furthest first: two
        doors offline spent the same points."""
        found = members.overdrawn(limit=limit) if overdrawn else members.listing(limit=limit)
        return {"members": [m.as_dict() for m in found]}

    @router.get(
        "/{member_id}",
        dependencies=read_auth,
        response_model=MemberPageAnswer,
        responses={**READ_ANSWERS, **_UNKNOWN},
    )
    def get_member(member_id: _MemberPath, request: Request) -> JSONResponse:
        """A member's balance, visits and last visit, and the link to the member's page."""
        member = members.get(member_id)
        if member is None:
            raise _unknown(member_id)
        return JSONResponse(_with_page(request, member))

    @router.post(
        "/{member_id}/points",
        dependencies=auth,
        response_model=PointsAnswer,
        responses={
            **WRITE_ANSWERS,
            **_UNKNOWN,
            409: _problem(
                "The balance would go below zero (nothing changed), or the Idempotency-Key "
                "was used for another change"
            ),
        },
    )
    def change_points(
        member_id: _MemberPath,
        body: PointsRequest,
        idempotency_key: _IdempotencyKey = None,
    ) -> dict[str, Any]:
        """Earn or spend points online: one ledger entry, and every kiosk hears the new
        balance. With an `Idempotency-Key`, a repeat changes nothing and answers the
        balance as it was after the first."""
        try:
            member = members.change_points(member_id, body.delta, body.reason, key=idempotency_key)
        except UnknownMember:
            raise _unknown(member_id) from None
        except (BelowZero, KeyReused) as exc:
            raise _conflict(str(exc)) from None
        return {"id": member.id, "points": member.points}

    @router.get(
        "/{member_id}/ledger",
        dependencies=read_auth,
        response_model=LedgerAnswer,
        responses={**READ_ANSWERS, **_UNKNOWN},
    )
    def member_ledger(
        member_id: _MemberPath,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> dict[str, Any]:
        """A member's entries, newest first."""
        if members.get(member_id) is None:
            raise _unknown(member_id)
        return {"entries": [e.as_dict() for e in members.ledger(member_id, limit=limit)]}

    return router
