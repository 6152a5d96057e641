"""`/api/v1/insights` (docs/rest-api.md, docs/insights.md): what the shop's data says over
a range of days, as JSON or one list as CSV, and the suggested flash sale made with one
call."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, status
from fastapi.params import Depends
from fastapi.responses import Response

from cloud_bridge.api_campaigns import CampaignOut
from cloud_bridge.api_schema import READ_ANSWERS, WRITE_ANSWERS, Problem, unprocessable
from cloud_bridge.campaigns import CampaignError
from cloud_bridge.http_guard import StrictJsonRoute
from cloud_bridge.insights import InsightsService, RangeError, csv_rows

_DAY = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
From = Annotated[
    str | None,
    Query(
        alias="from",
        pattern=_DAY,
        description="first day YYYY-MM-DD (shop time); default: 27 days before `to`",
    ),
]
To = Annotated[
    str | None,
    Query(pattern=_DAY, description="last day YYYY-MM-DD (shop time), included; default: today"),
]
Figure = Literal[
    "checkins_by_weekday_hour",
    "daily",
    "slow_hours",
    "lapsed_members",
    "campaigns",
    "activities",
    "preorder_demand",
    "forecast",
]


def insights_router(
    service: InsightsService, *, auth: Sequence[Depends], read_auth: Sequence[Depends]
) -> APIRouter:
    """The routes; `auth` and `read_auth` are the app's full-token and any-token checks."""
    router = APIRouter(route_class=StrictJsonRoute)

    def answer(first: str | None, last: str | None) -> dict[str, Any]:
        try:
            return service.insights(first, last)
        except RangeError as exc:
            raise unprocessable(str(exc), "query", exc.field) from None

    @router.get(
        "/api/v1/insights", dependencies=list(read_auth), tags=["insights"], responses=READ_ANSWERS
    )
    def insights(first: From = None, to: To = None) -> dict[str, Any]:
        """The shop's figures over the days `from`..`to` (at most 366) in shop time:
        check-ins by weekday and hour, slow and busy open hours, daily counts, members
        (new, returning, lapsed), campaigns, activities, pickups, preorders, ratings, the
        funnel, a forecast of the next 7 days with its backtest, and a suggested flash
        sale (docs/insights.md)."""
        return answer(first, to)

    @router.get(
        "/api/v1/insights.csv",
        dependencies=list(read_auth),
        tags=["insights"],
        response_class=Response,
        responses={
            **READ_ANSWERS,
            200: {"content": {"text/csv": {"schema": {"type": "string"}}}, "description": "CSV"},
        },
    )
    def insights_csv(figure: Figure, first: From = None, to: To = None) -> Response:
        """One list of the insights as CSV (a header row, then one row per item)."""
        header, rows = csv_rows(answer(first, to), figure)
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(["" if v is None else v for v in row] for row in rows)
        name = f"insights-{figure}.csv"
        return Response(
            out.getvalue(),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )

    @router.post(
        "/api/v1/insights/suggestion",
        dependencies=list(auth),
        tags=["insights"],
        status_code=status.HTTP_201_CREATED,
        response_model=CampaignOut,
        response_model_exclude_unset=True,
        responses={
            **WRITE_ANSWERS,
            409: {"model": Problem, "description": "No open hour to suggest a flash sale for"},
        },
    )
    def create_suggestion(first: From = None, to: To = None) -> dict[str, Any]:
        """Create the suggested flash sale (the `suggestion.campaign` of the insights of
        the same range) as a campaign."""
        suggestion = answer(first, to)["suggestion"]
        if suggestion is None:
            raise HTTPException(status.HTTP_409_CONFLICT, "no suggestion for this range")
        try:
            campaign = service.campaigns.create(**suggestion["campaign"])
        except CampaignError as exc:  # pragma: no cover - the suggestion is made valid
            raise unprocessable(str(exc), "body", exc.field) from None
        return service.campaigns.as_dict(campaign)

    return router
