"""`/api/v1/activities`: in-store activities, sign-ups and their tickets (docs/rest-api.md).

The shop's online side creates an activity, signs members up (each sign-up gets a ticket
to show at the door), cancels sign-ups, and reads who came (`ActivityService`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, status
from fastapi.params import Depends
from pydantic import BaseModel, ConfigDict, Field

from cloud_bridge.activities import ActivityError, ActivityService, parse_time
from cloud_bridge.api_members import MEMBER_ID_PATTERN
from cloud_bridge.api_schema import (
    READ_ANSWERS,
    WRITE_ANSWERS,
    Problem,
    _JsonNumbers,
    unprocessable,
)
from cloud_bridge.http_guard import StrictJsonRoute

#: What `at` may be: RFC 3339 with an offset, or the shop's wall-clock time.
AT_PATTERN = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}"
    r"((:[0-9]{2}(\.[0-9]{1,9})?)?([Zz]|[+-][0-9]{2}:[0-9]{2}))?$"
)
ActivityId = Annotated[str, Field(pattern=r"^ac-[0-9a-f]{8}$")]
SignupId = Annotated[str, Field(pattern=r"^su-[0-9a-f]{12}$")]


class ActivityCreate(_JsonNumbers):
    model_config = ConfigDict(extra="forbid", strict=True)

    title: str = Field(min_length=1, max_length=100)
    at: str = Field(
        max_length=40,
        pattern=AT_PATTERN,
        description="the start: RFC 3339 with an offset (2026-12-05T14:00:00+08:00), or "
        "the shop's local time (2026-12-05T14:00, bridge.toml `timezone`); in the future",
    )
    capacity: int = Field(ge=1, le=100_000, description="how many places")
    duration_min: int = Field(default=60, ge=1, le=7 * 24 * 60, description="minutes")


class SignupCreate(_JsonNumbers):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str | None = Field(default=None, max_length=100, description="printed on the ticket")
    member: str | None = Field(
        default=None, pattern=MEMBER_ID_PATTERN, description="the member, if known"
    )


class ActivityOut(BaseModel):
    id: str
    title: str
    at: str = Field(description="the start, RFC 3339 UTC")
    local_at: str = Field(description="the start on the shop's clock, YYYY-MM-DDTHH:MM")
    duration_min: int
    ends: str
    capacity: int
    signed_up: int = Field(description="places taken (cancelled sign-ups give theirs back)")
    attended: int = Field(description="sign-ups whose ticket was scanned at the door")
    no_shows: int | None = Field(
        description="after the end: signed up, not cancelled, not arrived; null before"
    )
    created_at: str


class ActivityList(BaseModel):
    activities: list[ActivityOut]


class SignupOut(BaseModel):
    id: str = Field(description="the sign-up's id, which is its ticket's code id")
    activity: str
    name: str | None
    member: str | None
    created_at: str
    cancelled_at: str | None
    arrived_at: str | None


class SignupTicket(SignupOut):
    code: str = Field(description="the ticket: a reservation code naming the activity")
    exp: int = Field(description="the ticket's expiry (Unix s): an hour after the end")
    url: str | None = Field(default=None, description="with [api] code_url set")


def _problem(text: str) -> dict[str, Any]:
    return {"model": Problem, "description": text}


_UNKNOWN: dict[int | str, dict[str, Any]] = {404: _problem("No such activity or sign-up")}
_CONFLICT: dict[int | str, dict[str, Any]] = {
    409: _problem("Full, started already, or cancelled already")
}


def _fail(exc: ActivityError) -> HTTPException:
    return HTTPException(exc.status, str(exc))


def activities_router(
    service: ActivityService, *, auth: Sequence[Depends], read_auth: Sequence[Depends]
) -> APIRouter:
    """The routes; `auth` and `read_auth` are the app's full-token and any-token checks."""
    router = APIRouter(route_class=StrictJsonRoute)

    @router.get(
        "/api/v1/activities",
        dependencies=list(read_auth),
        tags=["activities"],
        response_model=ActivityList,
        responses=READ_ANSWERS,
    )
    def list_activities() -> dict[str, Any]:
        """Every activity, soonest first, with its places taken and attendance."""
        return {"activities": service.listing()}

    @router.post(
        "/api/v1/activities",
        dependencies=list(auth),
        tags=["activities"],
        status_code=status.HTTP_201_CREATED,
        response_model=ActivityOut,
        responses=WRITE_ANSWERS,
    )
    def add_activity(body: ActivityCreate) -> dict[str, Any]:
        """Create an activity with `capacity` places, starting `at`."""
        try:
            at = parse_time(body.at, service.zone)
            activity = service.add(
                title=body.title, at=at, capacity=body.capacity, duration_min=body.duration_min
            )
        except ValueError as exc:
            raise unprocessable(str(exc), "body", "at") from None
        return service.as_dict(activity)

    @router.get(
        "/api/v1/activities/{id}",
        dependencies=list(read_auth),
        tags=["activities"],
        response_model=ActivityOut,
        responses={**READ_ANSWERS, **_UNKNOWN},
    )
    def get_activity(id: ActivityId) -> dict[str, Any]:
        """One activity: places taken, who came, and (after its end) the no-shows."""
        activity = service.activity(id)
        if activity is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no activity {id!r}")
        return service.as_dict(activity)

    @router.post(
        "/api/v1/activities/{id}/signups",
        dependencies=list(auth),
        tags=["activities"],
        status_code=status.HTTP_201_CREATED,
        response_model=SignupTicket,
        response_model_exclude_unset=True,
        responses={**WRITE_ANSWERS, **_UNKNOWN, **_CONFLICT},
    )
    def sign_up(id: ActivityId, body: SignupCreate) -> dict[str, Any]:
        """Take a place and get its ticket; 409 when full or once the activity started."""
        try:
            signup, code = service.sign_up(id, name=body.name, member=body.member)
        except ActivityError as exc:
            raise _fail(exc) from None
        return service.signup_dict(signup, code)

    @router.delete(
        "/api/v1/activities/{id}/signups/{signup_id}",
        dependencies=list(auth),
        tags=["activities"],
        response_model=SignupOut,
        responses={**WRITE_ANSWERS, **_UNKNOWN, **_CONFLICT},
    )
    def cancel(id: ActivityId, signup_id: SignupId) -> dict[str, Any]:
        """Cancel a sign-up: its place is free again and its ticket is revoked at every
        kiosk (`code.revoke`); 409 when it was cancelled already."""
        try:
            signup = service.cancel(id, signup_id)
        except ActivityError as exc:
            raise _fail(exc) from None
        return service.signup_dict(signup)

    return router
