"""Activities and their sign-ups on the bridge's database (docs/campaigns.md#activities).

A place is taken by one conditional UPDATE of `activities.signed_up` (only while below
`capacity` and before the start) in the same transaction as the sign-up's row: concurrent
sign-ups for the last places wait for each other on the activity's row, and exactly as
many succeed as there were places, on SQLite and PostgreSQL alike. The UPDATE comes
first, so SQLite takes its write lock at once instead of upgrading a read lock.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from sqlalchemy import case, func, select, update
from sqlalchemy.orm import Session

from cloud_bridge.db.repository import Repository
from cloud_bridge.db.tables import ActivityRow, SignupRow


@dataclass(frozen=True)
class ActivityRecord:
    id: str
    title: str
    at: datetime
    duration_min: int
    capacity: int
    signed_up: int
    created_at: datetime

    @property
    def ends(self) -> datetime:
        return self.at + timedelta(minutes=self.duration_min)


@dataclass(frozen=True)
class SignupRecord:
    id: str
    activity: str
    member: str | None
    name: str | None
    created_at: datetime
    cancelled_at: datetime | None
    arrived_at: datetime | None


@dataclass(frozen=True)
class Attendance:
    """Of the sign-ups not cancelled: how many came, how many did not (yet)."""

    attended: int
    absent: int


def _activity(row: ActivityRow) -> ActivityRecord:
    return ActivityRecord(
        row.id,
        row.title,
        row.at,
        int(row.duration_min),
        int(row.capacity),
        int(row.signed_up),
        row.created_at,
    )


def _signup(row: SignupRow) -> SignupRecord:
    return SignupRecord(
        row.id, row.activity, row.member, row.name, row.created_at, row.cancelled_at, row.arrived_at
    )


#: Why a sign-up was refused.
Refusal = Literal["unknown", "full", "started"]


class ActivityBook:
    """The store's activities and sign-ups."""

    def __init__(self, repo: Repository, store: str) -> None:
        self.repo = repo
        self.store = store

    def add(
        self,
        id: str,
        *,
        title: str,
        at: datetime,
        duration_min: int,
        capacity: int,
        now: datetime | None = None,
    ) -> ActivityRecord:
        row = ActivityRow(
            store=self.store,
            id=id,
            title=title,
            at=at,
            duration_min=duration_min,
            capacity=capacity,
            signed_up=0,
            created_at=now or datetime.now(UTC),
        )

        def work(session: Session) -> ActivityRecord:
            session.add(row)
            session.flush()
            return _activity(row)

        return self.repo._retrying(work)

    def activity(self, id: str) -> ActivityRecord | None:
        with self.repo._sessions() as session:
            row = session.get(ActivityRow, (self.store, id))
            return None if row is None else _activity(row)

    def activities(self) -> list[ActivityRecord]:
        """All of them, soonest first."""
        stmt = (
            select(ActivityRow)
            .where(ActivityRow.store == self.store)
            .order_by(ActivityRow.at, ActivityRow.id)
        )
        with self.repo._sessions() as session:
            return [_activity(r) for r in session.execute(stmt).scalars()]

    def attendance(self, ids: Iterable[str]) -> dict[str, Attendance]:
        """Per activity: sign-ups not cancelled that arrived, and those that did not."""
        ids = list(ids)
        if not ids:
            return {}
        came = func.sum(case((SignupRow.arrived_at.is_not(None), 1), else_=0))
        stmt = (
            select(SignupRow.activity, came, func.count())
            .where(
                SignupRow.store == self.store,
                SignupRow.activity.in_(ids),
                SignupRow.cancelled_at.is_(None),
            )
            .group_by(SignupRow.activity)
        )
        out = dict.fromkeys(ids, Attendance(0, 0))
        with self.repo._sessions() as session:
            for activity, arrived, total in session.execute(stmt):
                out[activity] = Attendance(int(arrived or 0), int(total) - int(arrived or 0))
        return out

    def sign_up(
        self,
        activity: str,
        id: str,
        *,
        member: str | None,
        name: str | None,
        now: datetime | None = None,
    ) -> SignupRecord | Refusal:
        """Take a place: the sign-up, or why not (unknown activity, full, started)."""
        at = now or datetime.now(UTC)

        def work(session: Session) -> SignupRecord | Refusal:
            taken = session.execute(
                update(ActivityRow)
                .where(
                    ActivityRow.store == self.store,
                    ActivityRow.id == activity,
                    ActivityRow.signed_up < ActivityRow.capacity,
                    ActivityRow.at > at,
                )
                .values(signed_up=ActivityRow.signed_up + 1)
                .execution_options(synchronize_session=False)
            )
            if taken.rowcount != 1:  # type: ignore[attr-defined]
                row = session.get(ActivityRow, (self.store, activity))
                if row is None:
                    return "unknown"
                return "started" if row.at <= at else "full"
            signup = SignupRow(
                store=self.store,
                id=id,
                activity=activity,
                member=member,
                name=name,
                created_at=at,
                cancelled_at=None,
                arrived_at=None,
            )
            session.add(signup)
            session.flush()
            return _signup(signup)

        return self.repo._retrying(work)

    def signup(self, activity: str, id: str) -> SignupRecord | None:
        with self.repo._sessions() as session:
            row = session.get(SignupRow, (self.store, id))
            return None if row is None or row.activity != activity else _signup(row)

    def signups(self, activity: str) -> list[SignupRecord]:
        stmt = (
            select(SignupRow)
            .where(SignupRow.store == self.store, SignupRow.activity == activity)
            .order_by(SignupRow.created_at, SignupRow.id)
        )
        with self.repo._sessions() as session:
            return [_signup(r) for r in session.execute(stmt).scalars()]

    def cancel(
        self, activity: str, id: str, *, now: datetime | None = None
    ) -> SignupRecord | Literal["unknown", "cancelled"]:
        """Give the place back (in the same transaction as marking the sign-up cancelled);
        "unknown" for no such sign-up of that activity, "cancelled" if it was already."""
        at = now or datetime.now(UTC)

        def work(session: Session) -> SignupRecord | Literal["unknown", "cancelled"]:
            done = session.execute(
                update(SignupRow)
                .where(
                    SignupRow.store == self.store,
                    SignupRow.id == id,
                    SignupRow.activity == activity,
                    SignupRow.cancelled_at.is_(None),
                )
                .values(cancelled_at=at)
                .execution_options(synchronize_session=False)
            )
            if done.rowcount != 1:  # type: ignore[attr-defined]
                row = session.get(SignupRow, (self.store, id))
                return "unknown" if row is None or row.activity != activity else "cancelled"
            session.execute(
                update(ActivityRow)
                .where(ActivityRow.store == self.store, ActivityRow.id == activity)
                .values(signed_up=ActivityRow.signed_up - 1)
                .execution_options(synchronize_session=False)
            )
            row = session.get(SignupRow, (self.store, id))
            assert row is not None
            return _signup(row)

        return self.repo._retrying(work)

    def arrived(self, tickets: Iterable[tuple[str, str]], at: datetime) -> int:
        """Mark (activity, sign-up id) pairs as arrived at `at`, each only the first time;
        returns how many were marked."""
        pairs = list(dict.fromkeys(tickets))
        if not pairs:
            return 0

        def work(session: Session) -> int:
            marked = 0
            for activity, id in pairs:
                result = session.execute(
                    update(SignupRow)
                    .where(
                        SignupRow.store == self.store,
                        SignupRow.id == id,
                        SignupRow.activity == activity,
                        SignupRow.arrived_at.is_(None),
                    )
                    .values(arrived_at=at)
                    .execution_options(synchronize_session=False)
                )
                marked += int(result.rowcount)  # type: ignore[attr-defined]
            return marked

        return self.repo._retrying(work)
