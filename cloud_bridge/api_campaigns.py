"""`/api/v1/campaigns` (docs/rest-api.md, docs/campaigns.md): campaigns and their codes.

The shop's online side makes a campaign once (kind, value, quantity, hours, dates) and
then asks for its codes, one for a customer or a thousand for a platform; every code is
signed with the campaign's rules and recorded, and a campaign's figures say what it
brought (issued, redeemed, by hour of the shop's day).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, status
from fastapi.params import Depends
from fastapi.params import Path as PathParam
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from cloud_bridge.api_members import MEMBER_ID_PATTERN
from cloud_bridge.api_schema import READ_ANSWERS, WRITE_ANSWERS, Problem, _JsonNumbers
from cloud_bridge.campaigns import MAX_COUNT, MAX_USES, CampaignError, CampaignService, Refused
from cloud_bridge.http_guard import StrictJsonRoute
from o2o_protocol.hours import MAX_WINDOWS

_When = Annotated[
    str | None,
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "format": "date-time"},
                {"type": "string", "format": "date"},
            ],
            "description": "RFC 3339, or a date YYYY-MM-DD in the shop's time zone",
        }
    ),
]
_HHMM = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"
CampaignId = Annotated[str, PathParam(pattern=r"^cp-[0-9a-f]{8}$")]


class HoursWindow(BaseModel):
    """ISO weekdays (1 = Monday) and a time window in the shop's time zone; a `to` not
    after `from` runs past midnight."""

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)

    days: list[Annotated[int, Field(ge=1, le=7)]] = Field(
        min_length=1, max_length=7, json_schema_extra={"uniqueItems": True}
    )
    start: str = Field(alias="from", pattern=_HHMM)
    end: str = Field(alias="to", pattern=_HHMM)


class CampaignCreate(_JsonNumbers):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: Annotated[str, Field(min_length=1, max_length=100, description="shown to customers")]
    kind: Literal["coupon", "group_buy", "flash_sale", "visit_card"]
    value: Annotated[str, Field(min_length=1, max_length=100, description="what a code is worth")]
    quantity: Annotated[
        int | None, Field(ge=1, le=10**9, description="codes at most; null: no limit")
    ] = None
    per_member: Annotated[
        int | None, Field(ge=1, le=10**6, description="codes one member may get; null: any")
    ] = None
    uses: Annotated[
        int | None,
        Field(ge=2, le=MAX_USES, description="a visit card's uses (required for one, only it)"),
    ] = None
    hours: Annotated[
        list[HoursWindow] | None,
        Field(min_length=1, max_length=MAX_WINDOWS, description="valid hours; null: any time"),
    ] = None
    starts: _When = None
    ends: _When = None


class CampaignOut(BaseModel):
    id: str
    name: str
    kind: str
    value: str
    quantity: int | None
    per_member: int | None
    uses: int | None
    hours: list[dict[str, Any]] | None
    starts: str | None
    ends: str | None
    created_at: str
    issued: int
    left: int | None = Field(description="codes still to be had; null: no limit")
    redeemed: int = Field(description="redemptions (a visit card: cards used at least once)")
    uses_redeemed: int | None = Field(default=None, description="a visit card's uses, all cards")
    redeemed_by_hour: list[int] | None = Field(
        default=None, description="24 counts, by hour of the shop's day (GET of one campaign)"
    )


class CampaignList(BaseModel):
    campaigns: list[CampaignOut]


class CodesRequest(_JsonNumbers):
    model_config = ConfigDict(extra="forbid", strict=True)

    count: Annotated[int, Field(ge=1, le=MAX_COUNT)] = 1
    member: Annotated[
        str | None, Field(pattern=MEMBER_ID_PATTERN, description="who gets them, if known")
    ] = None


class CampaignCodeOut(BaseModel):
    id: str
    code: str
    url: str | None = Field(default=None, description="when `[api] code_url` is set")


class CodesOut(BaseModel):
    codes: list[CampaignCodeOut]


def _problem(text: str) -> dict[str, Any]:
    return {"model": Problem, "description": text}


_UNKNOWN: dict[int | str, dict[str, Any]] = {404: _problem("No such campaign")}
_REFUSED: dict[int | str, dict[str, Any]] = {
    409: _problem("Fewer codes left than asked for, the member's limit, or the campaign ended")
}


def _invalid(exc: CampaignError) -> HTTPException:
    return HTTPException(
        status.HTTP_422_UNPROCESSABLE_CONTENT,
        [{"loc": ["body", exc.field], "msg": str(exc), "type": "value_error"}],
    )


def campaigns_router(
    service: CampaignService, *, auth: Sequence[Depends], read_auth: Sequence[Depends]
) -> APIRouter:
    """The routes; `auth` and `read_auth` are the app's full-token and any-token checks."""
    router = APIRouter(route_class=StrictJsonRoute)

    @router.post(
        "/api/v1/campaigns",
        dependencies=list(auth),
        tags=["campaigns"],
        status_code=status.HTTP_201_CREATED,
        response_model=CampaignOut,
        response_model_exclude_unset=True,
        responses=WRITE_ANSWERS,
    )
    def create_campaign(body: CampaignCreate) -> dict[str, Any]:
        """Make a campaign: a coupon, a group-buy voucher, a flash sale (a fixed quantity,
        first come first served) or a visit card (`uses` visits on one code)."""
        fields = body.model_dump(exclude={"hours"})
        hours = None if body.hours is None else [w.model_dump(by_alias=True) for w in body.hours]
        try:
            campaign = service.create(**fields, hours=hours)
        except CampaignError as exc:
            raise _invalid(exc) from None
        return service.as_dict(campaign)

    @router.get(
        "/api/v1/campaigns",
        dependencies=list(read_auth),
        tags=["campaigns"],
        response_model=CampaignList,
        response_model_exclude_unset=True,
        responses=READ_ANSWERS,
    )
    def list_campaigns() -> dict[str, Any]:
        """Every campaign, oldest first, with its issued and redeemed counts."""
        return {"campaigns": [service.as_dict(c) for c in service.campaigns()]}

    @router.get(
        "/api/v1/campaigns/{id}",
        dependencies=list(read_auth),
        tags=["campaigns"],
        response_model=CampaignOut,
        response_model_exclude_unset=True,
        responses={**READ_ANSWERS, **_UNKNOWN},
    )
    def get_campaign(id: CampaignId) -> dict[str, Any]:
        """One campaign and what it brought: codes issued, redeemed, and the redemptions by
        hour of the shop's day (`redeemed_by_hour`, 24 counts)."""
        campaign = service.campaign(id)
        if campaign is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no campaign {id!r}")
        return service.as_dict(campaign, detail=True)

    @router.post(
        "/api/v1/campaigns/{id}/codes",
        dependencies=list(auth),
        tags=["campaigns"],
        status_code=status.HTTP_201_CREATED,
        response_model=CodesOut,
        response_model_exclude_unset=True,
        responses={**WRITE_ANSWERS, **_UNKNOWN, **_REFUSED},
    )
    def issue_codes(id: CampaignId, body: CodesRequest) -> dict[str, Any]:
        """Issue `count` codes of the campaign, all or none, each recorded (and with the
        `member` when given). 409 when fewer are left than asked for (the answer says how
        many are), the member would pass `per_member`, or the campaign has ended."""
        try:
            codes = service.issue(id, body.count, member=body.member)
        except LookupError:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no campaign {id!r}") from None
        except Refused as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
        except CampaignError as exc:
            raise _invalid(exc) from None
        return {"codes": [c.as_dict() for c in codes]}

    return router
