"""`/api/v1/rewards` (the catalogue kiosks offer) and `/api/v1/ratings` (docs/rest-api.md).

The shop's online side keeps the catalogue here; every change reaches every kiosk of the
store (`RewardService`). Ratings sum up the `review.submitted` events the bridge stored.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, status
from fastapi.params import Depends
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, model_validator

from cloud_bridge.api_schema import (
    _DATE,
    READ_ANSWERS,
    WRITE_ANSWERS,
    Problem,
    Since,
    _JsonNumbers,
    parse_since,
    unprocessable,
)
from cloud_bridge.http_guard import StrictJsonRoute
from cloud_bridge.rewards import MAX_ACTIVE, RewardService

_Name = Annotated[str, Field(min_length=1, max_length=100)]
_NameEn = Annotated[str | None, Field(max_length=100)]
_Points = Annotated[int, Field(ge=1, le=10**9, description="the price in points")]
_Stock = Annotated[
    int | None, Field(ge=0, le=10**9, description="how many are left; null: no limit")
]
RewardId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]


class RewardCreate(_JsonNumbers):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: _Name
    name_en: _NameEn = None
    points: _Points
    stock: _Stock = None


class RewardChange(_JsonNumbers):
    """Only the fields given change; `name_en` or `stock` null clears them."""

    model_config = ConfigDict(extra="forbid", strict=True)

    # Not null when given (a reward always has a name and a price); absent: unchanged.
    name: Annotated[
        str | None,
        Field(min_length=1, max_length=100),
        WithJsonSchema({"type": "string", "minLength": 1, "maxLength": 100}),
    ] = None
    name_en: _NameEn = None
    points: Annotated[
        int | None,
        Field(ge=1, le=10**9),
        WithJsonSchema({"type": "integer", "minimum": 1, "maximum": 10**9}),
    ] = None
    stock: _Stock = None
    active: Annotated[bool | None, WithJsonSchema({"type": "boolean"})] = None

    @model_validator(mode="after")
    def _no_nulls(self) -> RewardChange:
        for name in ("name", "points", "active"):
            if name in self.model_fields_set and getattr(self, name) is None:
                raise ValueError(f"{name} may not be null")
        return self


class RewardOut(BaseModel):
    id: str
    name: str
    name_en: str | None
    points: int
    stock: int | None
    active: bool
    created_at: str
    updated_at: str


class RewardList(BaseModel):
    rewards: list[RewardOut]


class SubjectRatings(BaseModel):
    count: int
    average: float


class Ratings(BaseModel):
    count: int
    average: float | None = Field(description="null when there is no rating")
    distribution: dict[str, int] = Field(description='how many of each: {"1": n, … "5": n}')
    by_subject: dict[str, SubjectRatings] = Field(
        description="per `subject` (checkin, pickup, reservation)"
    )


def _problem(text: str) -> dict[str, Any]:
    return {"model": Problem, "description": text}


_UNKNOWN: dict[int | str, dict[str, Any]] = {404: _problem("No such reward")}
_FULL: dict[int | str, dict[str, Any]] = {409: _problem(f"{MAX_ACTIVE} rewards are active already")}


def _bound(text: str | None, name: str) -> datetime | None:
    """A `from`/`to` value; a date stands for the whole day (UTC), so `to` a date is the
    end of that day."""
    if text is None:
        return None
    try:
        when = parse_since(text)
    except HTTPException as exc:
        detail = exc.detail[0]["msg"] if isinstance(exc.detail, list) else str(exc.detail)
        raise unprocessable(detail, "query", name) from None
    assert when is not None
    if (
        name == "to"
        and _DATE.fullmatch(text)
        and when < datetime.max.replace(tzinfo=UTC) - (timedelta(days=1))
    ):
        when += timedelta(days=1)
    return when


def rewards_router(
    service: RewardService, *, auth: Sequence[Depends], read_auth: Sequence[Depends]
) -> APIRouter:
    """The routes; `auth` and `read_auth` are the app's full-token and any-token checks."""
    router = APIRouter(route_class=StrictJsonRoute)

    def _change(id: str, changes: dict[str, Any]) -> dict[str, Any]:
        try:
            reward = service.update(id, changes)
        except ValueError as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
        if reward is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no reward {id!r}")
        return reward.as_dict()

    @router.get(
        "/api/v1/rewards",
        dependencies=list(read_auth),
        tags=["rewards"],
        response_model=RewardList,
        responses=READ_ANSWERS,
    )
    def list_rewards(
        all: Annotated[bool, Query(description="also the retired ones")] = False,
    ) -> dict[str, Any]:
        """The catalogue: the active rewards (what kiosks offer, stock permitting), in the
        order they were added; with `all=true` the retired ones too."""
        return {"rewards": [r.as_dict() for r in service.rewards(include_retired=all)]}

    @router.post(
        "/api/v1/rewards",
        dependencies=list(auth),
        tags=["rewards"],
        status_code=status.HTTP_201_CREATED,
        response_model=RewardOut,
        responses={**WRITE_ANSWERS, **_FULL},
    )
    def add_reward(body: RewardCreate) -> dict[str, Any]:
        """Add a reward. Every kiosk hears the new catalogue (`rewards.set`) and gets
        vouchers for it (`pool.refill`)."""
        try:
            reward = service.add(
                name=body.name, name_en=body.name_en, points=body.points, stock=body.stock
            )
        except ValueError as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
        return reward.as_dict()

    @router.patch(
        "/api/v1/rewards/{id}",
        dependencies=list(auth),
        tags=["rewards"],
        response_model=RewardOut,
        responses={**WRITE_ANSWERS, **_UNKNOWN, **_FULL},
    )
    def change_reward(id: RewardId, body: RewardChange) -> dict[str, Any]:
        """Change a reward's names, price, stock, or whether it is on offer; every kiosk
        hears the new catalogue."""
        return _change(id, body.model_dump(include=body.model_fields_set))

    @router.delete(
        "/api/v1/rewards/{id}",
        dependencies=list(auth),
        tags=["rewards"],
        response_model=RewardOut,
        responses={**WRITE_ANSWERS, **_UNKNOWN},
    )
    def retire_reward(id: RewardId) -> dict[str, Any]:
        """Retire a reward: no longer offered (`active` false), kept so past redemptions
        keep their name; `PATCH {"active": true}` offers it again."""
        return _change(id, {"active": False})

    @router.get(
        "/api/v1/ratings",
        dependencies=list(read_auth),
        tags=["rewards"],
        response_model=Ratings,
        responses=READ_ANSWERS,
    )
    def ratings(
        from_: Annotated[Since, Query(alias="from", description="from this time on")] = None,
        to: Annotated[Since, Query(description="before this time (a date: to its end)")] = None,
    ) -> dict[str, Any]:
        """The ratings customers gave at the kiosks (`review.submitted`), by when they
        were given: how many, the average, how many of each 1-5, and per subject."""
        start = _bound(from_, "from") or datetime.min.replace(tzinfo=UTC)
        end = _bound(to, "to") or datetime.max.replace(tzinfo=UTC)
        return service.catalogue.ratings(start, end)

    return router
