"""Campaigns and the codes issued for them (docs/campaigns.md).

Reads and writes of `campaigns` and `issued_codes` through the repository's sessions and
its retry policy. Codes are handed out by one conditional update of the campaign's
`issued` count, in the same transaction as the rows that record them: two requests for
the last codes (threads, or bridge workers on PostgreSQL) can never both get them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from cloud_bridge.db.repository import Repository
from cloud_bridge.db.tables import CampaignRow, EventRow, IssuedCodeRow
from o2o_protocol.messages import EventType


@dataclass(frozen=True)
class CampaignRecord:
    id: str
    name: str
    kind: str
    value: str
    quantity: int | None
    issued: int
    per_member: int | None
    uses: int | None
    hours: list[Any] | None
    starts: datetime | None
    ends: datetime | None
    created_at: datetime

    @property
    def left(self) -> int | None:
        """Codes still to be had; None: no limit."""
        return None if self.quantity is None else max(0, self.quantity - self.issued)


@dataclass(frozen=True)
class NewIssuedCode:
    """A code signed for a campaign, recorded when it is handed out."""

    id: str
    member: str | None
    issued_at: datetime
    expires: datetime | None


@dataclass(frozen=True)
class Redemption:
    """One stored `coupon.redeemed` of a campaign's code."""

    coupon: str | None
    ts: datetime


class NotEnoughLeft(Exception):
    """Fewer codes are left than asked for (`left` of them)."""

    def __init__(self, left: int) -> None:
        super().__init__(left)
        self.left = left


class MemberLimit(Exception):
    """The member holds `held` codes of the campaign already; `more` would pass the limit."""

    def __init__(self, held: int, limit: int) -> None:
        super().__init__(held, limit)
        self.held = held
        self.limit = limit


def _campaign(row: CampaignRow) -> CampaignRecord:
    return CampaignRecord(
        row.id,
        row.name,
        row.kind,
        row.value,
        None if row.quantity is None else int(row.quantity),
        int(row.issued),
        row.per_member,
        row.uses,
        row.hours,
        row.starts,
        row.ends,
        row.created_at,
    )


class Campaigns:
    """The store's campaigns and their issued codes, on the bridge's database."""

    def __init__(self, repo: Repository, store: str) -> None:
        self.repo = repo
        self.store = store

    def add(self, record: CampaignRecord) -> CampaignRecord:
        def work(session: Session) -> CampaignRecord:
            row = CampaignRow(
                store=self.store,
                id=record.id,
                name=record.name,
                kind=record.kind,
                value=record.value,
                quantity=record.quantity,
                issued=0,
                per_member=record.per_member,
                uses=record.uses,
                hours=record.hours,
                starts=record.starts,
                ends=record.ends,
                created_at=record.created_at,
            )
            session.add(row)
            session.flush()
            return _campaign(row)

        return self.repo._retrying(work)

    def campaign(self, id: str) -> CampaignRecord | None:
        row = self.repo.read(lambda s: s.get(CampaignRow, (self.store, id)))
        return None if row is None else _campaign(row)

    def campaigns(self) -> list[CampaignRecord]:
        stmt = (
            select(CampaignRow)
            .where(CampaignRow.store == self.store)
            .order_by(CampaignRow.created_at, CampaignRow.id)
        )
        return [_campaign(r) for r in self.repo.read(lambda s: list(s.execute(stmt).scalars()))]

    def record_issue(self, campaign: str, codes: Sequence[NewIssuedCode]) -> int:
        """Count `codes` as issued and record them, all or none; returns the new `issued`.

        The update that takes them is conditional (`issued + n <= quantity`) and takes the
        campaign's row lock, so the member's count read after it sees every code a request
        before it committed. Raises NotEnoughLeft, MemberLimit, or LookupError (no such
        campaign)."""
        n = len(codes)
        members = {c.member for c in codes}
        member = next(iter(members)) if len(members) == 1 else None

        def work(session: Session) -> int:
            taken = session.execute(
                update(CampaignRow)
                .where(
                    CampaignRow.store == self.store,
                    CampaignRow.id == campaign,
                    or_(
                        CampaignRow.quantity.is_(None),
                        CampaignRow.issued + n <= CampaignRow.quantity,
                    ),
                )
                .values(issued=CampaignRow.issued + n)
                .execution_options(synchronize_session=False)
            )
            # Read after the update (no RETURNING: SQLite before 3.35 has none); the row
            # is locked by then, so this is what the update left.
            row = session.get(CampaignRow, (self.store, campaign), populate_existing=True)
            if row is None:
                raise LookupError(campaign)
            if taken.rowcount != 1:  # type: ignore[attr-defined]
                raise NotEnoughLeft(_campaign(row).left or 0)
            issued, per_member = int(row.issued), row.per_member
            if member is not None and per_member is not None:
                held = int(
                    session.scalar(
                        select(func.count())
                        .select_from(IssuedCodeRow)
                        .where(
                            IssuedCodeRow.store == self.store,
                            IssuedCodeRow.campaign == campaign,
                            IssuedCodeRow.member == member,
                        )
                    )
                    or 0
                )
                if held + n > per_member:
                    raise MemberLimit(held, per_member)
            session.add_all(
                IssuedCodeRow(
                    store=self.store,
                    id=c.id,
                    campaign=campaign,
                    member=c.member,
                    issued_at=c.issued_at,
                    expires=c.expires,
                )
                for c in codes
            )
            return issued

        return self.repo._retrying(work)

    def issued_codes(self, campaign: str) -> list[NewIssuedCode]:
        stmt = (
            select(IssuedCodeRow)
            .where(IssuedCodeRow.store == self.store, IssuedCodeRow.campaign == campaign)
            .order_by(IssuedCodeRow.issued_at, IssuedCodeRow.id)
        )
        rows = self.repo.read(lambda s: list(s.execute(stmt).scalars()))
        return [NewIssuedCode(r.id, r.member, r.issued_at, r.expires) for r in rows]

    def redemptions(self, campaign: str) -> list[Redemption]:
        """The stored `coupon.redeemed` events of the campaign: those whose data names it
        (`campaign`), and those of a code issued for it (kiosks that do not name it)."""
        coupon = EventRow.data["coupon_id"].as_string()
        ours = select(IssuedCodeRow.id).where(
            IssuedCodeRow.store == self.store, IssuedCodeRow.campaign == campaign
        )
        stmt = select(coupon, EventRow.ts).where(
            EventRow.store == self.store,
            EventRow.type == EventType.COUPON_REDEEMED.value,
            or_(EventRow.data["campaign"].as_string() == campaign, coupon.in_(ours)),
        )
        rows = self.repo.read(lambda s: list(s.execute(stmt)))
        return [Redemption(c, ts) for c, ts in rows]
