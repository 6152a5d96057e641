"""The reward catalogue and the pools of pre-signed codes (docs/members.md).

Reads and writes of `rewards` and `pool_codes` through the repository's sessions and its
retry policy. A pool is topped up in one transaction that counts what is unused, stores
the new codes and queues the `pool.refill` that carries them: a code is recorded exactly
when it is on its way to the kiosk, and two writers topping up the same kiosk at once
(threads, or bridge workers on PostgreSQL) wait for each other instead of both filling
the gap.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cloud_bridge.db.figures import in_period, rating_summary
from cloud_bridge.db.records import format_ts
from cloud_bridge.db.repository import Repository
from cloud_bridge.db.tables import EventRow, PoolCodeRow, RewardRow
from o2o_protocol.messages import Command

#: Attempts when another writer took the kiosk's next command seq first.
_SEQ_ATTEMPTS = 5


@dataclass(frozen=True)
class RewardRecord:
    id: str
    name: str
    name_en: str | None
    points: int
    stock: int | None
    active: bool
    created_at: datetime
    updated_at: datetime

    @property
    def offered(self) -> bool:
        """In the catalogue kiosks hear: active, and not out of stock."""
        return self.active and self.stock != 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "name_en": self.name_en,
            "points": self.points,
            "stock": self.stock,
            "active": self.active,
            "created_at": format_ts(self.created_at),
            "updated_at": format_ts(self.updated_at),
        }


@dataclass(frozen=True)
class PoolCodeRecord:
    id: str
    kiosk: str
    kind: str
    reward: str | None
    code: str
    url: str | None
    issued_at: datetime
    used_at: datetime | None
    used_event: str | None


@dataclass(frozen=True)
class NewCode:
    """A code signed for a pool, before it is stored."""

    id: str
    code: str
    url: str | None = None


def _reward(row: RewardRow) -> RewardRecord:
    return RewardRecord(
        row.id,
        row.name,
        row.name_en,
        int(row.points),
        None if row.stock is None else int(row.stock),
        bool(row.active),
        row.created_at,
        row.updated_at,
    )


def _pool_code(row: PoolCodeRow) -> PoolCodeRecord:
    return PoolCodeRecord(
        row.id,
        row.kiosk,
        row.kind,
        row.reward,
        row.code,
        row.url,
        row.issued_at,
        row.used_at,
        row.used_event,
    )


class Catalogue:
    """The store's rewards and code pools, on the bridge's database."""

    def __init__(self, repo: Repository, store: str) -> None:
        self.repo = repo
        self.store = store

    # -- rewards ----------------------------------------------------------------------

    def add_reward(
        self,
        id: str,
        *,
        name: str,
        points: int,
        name_en: str | None = None,
        stock: int | None = None,
        now: datetime | None = None,
    ) -> RewardRecord:
        at = now or datetime.now(UTC)
        row = RewardRow(
            store=self.store,
            id=id,
            name=name,
            name_en=name_en,
            points=points,
            stock=stock,
            active=True,
            created_at=at,
            updated_at=at,
        )

        def work(session: Session) -> RewardRecord:
            session.add(row)
            session.flush()
            return _reward(row)

        result: RewardRecord = self.repo._retrying(work)
        return result

    def rewards(self, *, include_retired: bool = False) -> list[RewardRecord]:
        """The catalogue in the order the rewards were added."""
        stmt = select(RewardRow).where(RewardRow.store == self.store)
        if not include_retired:
            stmt = stmt.where(RewardRow.active.is_(True))
        stmt = stmt.order_by(RewardRow.created_at, RewardRow.id)
        result: list[RewardRecord] = self.repo.read(
            lambda s: [_reward(r) for r in s.execute(stmt).scalars()]
        )
        return result

    def reward(self, id: str) -> RewardRecord | None:
        row = self.repo.read(lambda s: s.get(RewardRow, (self.store, id)))
        return None if row is None else _reward(row)

    def count_active(self) -> int:
        stmt = select(func.count()).where(RewardRow.store == self.store, RewardRow.active.is_(True))
        return int(self.repo.read(lambda s: s.scalar(stmt)) or 0)

    def update_reward(
        self, id: str, changes: dict[str, Any], *, now: datetime | None = None
    ) -> tuple[RewardRecord, RewardRecord] | None:
        """Apply `changes` (name, name_en, points, stock, active); (before, after), or None
        for an unknown reward."""

        def work(session: Session) -> tuple[RewardRecord, RewardRecord] | None:
            row = session.get(RewardRow, (self.store, id), with_for_update=True)
            if row is None:
                return None
            before = _reward(row)
            for name, value in changes.items():
                setattr(row, name, value)
            row.updated_at = now or datetime.now(UTC)
            session.flush()
            return before, _reward(row)

        result: tuple[RewardRecord, RewardRecord] | None = self.repo._retrying(work)
        return result

    # -- ratings --------------------------------------------------------------------

    def ratings(self, start: datetime, end: datetime) -> dict[str, Any]:
        """The ratings of [start, end), by when they were given (`figures.rating_summary`)."""
        where = (EventRow.store == self.store, in_period(self.repo._dialect, start, end))
        result: dict[str, Any] = self.repo.read(lambda s: rating_summary(s, where))
        return result

    # -- pools ------------------------------------------------------------------------

    def fill_pool(
        self,
        kiosk: str,
        kind: str,
        reward: str | None,
        target: int,
        make: Callable[[int], list[NewCode]],
        commands: Callable[[list[NewCode]], list[tuple[str, dict[str, Any]]]],
        *,
        fresh_after: datetime | None = None,
        now: datetime | None = None,
    ) -> tuple[list[NewCode], list[Command]]:
        """Top one pool of `kiosk` up to `target` unused codes issued after `fresh_after`
        (older ones are close to expiry: the kiosk skips them): `make(n)` signs the n
        missing, `commands(codes)` says which commands carry them (name, data), several
        when one would be over the size limit. The codes and the commands are stored in
        one transaction; returns them (nothing when the pool was full). The caller
        publishes the commands."""
        at = now or datetime.now(UTC)
        column = PoolCodeRow.reward
        same_reward = column.is_(None) if reward is None else column == reward
        fresh = () if fresh_after is None else (PoolCodeRow.issued_at > fresh_after,)

        def work(session: Session) -> tuple[list[NewCode], list[Command]]:
            self._lock_pool(session, kiosk)
            unused = session.scalar(
                select(func.count()).where(
                    PoolCodeRow.store == self.store,
                    PoolCodeRow.kiosk == kiosk,
                    PoolCodeRow.kind == kind,
                    same_reward,
                    PoolCodeRow.used_at.is_(None),
                    *fresh,
                )
            )
            missing = target - int(unused or 0)
            if missing <= 0:
                return [], []
            codes = make(missing)
            session.add_all(
                PoolCodeRow(
                    store=self.store,
                    id=c.id,
                    kiosk=kiosk,
                    kind=kind,
                    reward=reward,
                    code=c.code,
                    url=c.url,
                    issued_at=at,
                )
                for c in codes
            )
            queued = [self._queue(session, kiosk, n, d, at) for n, d in commands(codes)]
            return codes, queued

        for attempt in range(1, _SEQ_ATTEMPTS + 1):
            try:
                result: tuple[list[NewCode], list[Command]] = self.repo._retrying(work)
                return result
            except IntegrityError:
                # Another writer took the kiosk's next command seq: count again.
                if attempt == _SEQ_ATTEMPTS:
                    raise
        raise AssertionError("unreachable")

    def _lock_pool(self, session: Session, kiosk: str) -> None:
        """Hold the kiosk's pools until this transaction ends (PostgreSQL: an advisory
        lock; SQLite: the write lock, taken now rather than at the first insert)."""
        if self.repo._dialect == "postgresql":
            digest = hashlib.sha256(f"pool/{self.store}/{kiosk}".encode()).digest()
            key = int.from_bytes(digest[:8], "big", signed=True)
            session.execute(select(func.pg_advisory_xact_lock(key)))
        else:
            session.execute(
                update(PoolCodeRow)
                .where(PoolCodeRow.store == self.store, PoolCodeRow.id == "")
                .values(kiosk=kiosk)
            )

    def _queue(
        self, session: Session, kiosk: str, name: str, data: dict[str, Any], at: datetime
    ) -> Command:
        """Queue a command in this transaction with the kiosk's next seq."""
        return self.repo.queue_commands(session, self.store, [(kiosk, name, data)])[0]

    def unused_counts(
        self, kiosk: str, *, stale_kind: str | None = None, fresh_after: datetime | None = None
    ) -> dict[tuple[str, str | None], int]:
        """Unused codes of the kiosk per pool: {(kind, reward or None): n}; codes of
        `stale_kind` issued before `fresh_after` are not counted (close to expiry)."""
        stale: tuple[Any, ...] = ()
        if stale_kind is not None and fresh_after is not None:
            stale = (or_(PoolCodeRow.kind != stale_kind, PoolCodeRow.issued_at > fresh_after),)
        stmt = (
            select(PoolCodeRow.kind, PoolCodeRow.reward, func.count())
            .where(
                PoolCodeRow.store == self.store,
                PoolCodeRow.kiosk == kiosk,
                PoolCodeRow.used_at.is_(None),
                *stale,
            )
            .group_by(PoolCodeRow.kind, PoolCodeRow.reward)
        )
        result: dict[tuple[str, str | None], int] = self.repo.read(
            lambda s: {(k, r): int(n) for k, r, n in s.execute(stmt)}
        )
        return result

    def use_code(
        self, id: str, kind: str, event: str, *, at: datetime | None = None
    ) -> PoolCodeRecord | None:
        """Mark a pooled code used by `event`; the code, or None when it is not a pooled
        code of that kind or was already used."""
        stmt = self._use_stmt(id, kind, event, at)

        def work(session: Session) -> PoolCodeRecord | None:
            row = session.execute(stmt).scalars().first()
            return None if row is None else _pool_code(row)

        result: PoolCodeRecord | None = self.repo._retrying(work)
        return result

    def use_codes(
        self, uses: Sequence[tuple[str, str, str, datetime | None]]
    ) -> list[PoolCodeRecord | None]:
        """`use_code` for many `(id, kind, event, at)` in one transaction (a batch's
        joins): one read finds which are unused pooled codes, and only those are
        updated. Each result as `use_code`'s, in order."""
        if not uses:
            return []

        def work(session: Session) -> list[PoolCodeRecord | None]:
            ids = sorted({id for id, _, _, _ in uses})
            pooled = {
                (r.id, r.kind)
                for r in session.execute(
                    select(PoolCodeRow.id, PoolCodeRow.kind).where(
                        PoolCodeRow.store == self.store,
                        PoolCodeRow.id.in_(ids),
                        PoolCodeRow.used_at.is_(None),
                    )
                )
            }
            done: list[PoolCodeRecord | None] = []
            for id, kind, event, at in uses:
                row = None
                if (id, kind) in pooled:
                    row = session.execute(self._use_stmt(id, kind, event, at)).scalars().first()
                done.append(None if row is None else _pool_code(row))
            return done

        result: list[PoolCodeRecord | None] = self.repo._retrying(work)
        return result

    def redeem(
        self,
        voucher: str | None,
        kind: str,
        reward: str | None,
        event: str,
        *,
        replay: bool,
        at: datetime | None = None,
    ) -> tuple[PoolCodeRecord | None, RewardRecord | None]:
        """A redemption in one transaction, so a fault never leaves the voucher unused and
        the stock taken or the other way round: the voucher is marked used and one of the
        reward's stock taken with its first use. Without a pooled voucher the stock is
        taken too unless `replay` (the live event counts; a replay of one already counted
        must not). (The voucher now used or None, the reward after or None when its stock
        did not change.)"""
        use = None if voucher is None else self._use_stmt(voucher, kind, event, at)
        take = (
            update(RewardRow)
            .where(
                RewardRow.store == self.store,
                RewardRow.id == reward,
                RewardRow.stock.is_not(None),
                RewardRow.stock > 0,
            )
            .values(stock=RewardRow.stock - 1, updated_at=datetime.now(UTC))
            .returning(RewardRow)
        )

        def work(session: Session) -> tuple[PoolCodeRecord | None, RewardRecord | None]:
            row = None if use is None else session.execute(use).scalars().first()
            used = None if row is None else _pool_code(row)
            if reward is None:
                return used, None
            if used is None:
                pooled = voucher is not None and (
                    session.get(PoolCodeRow, (self.store, voucher)) is not None
                )
                if replay or pooled:
                    return None, None  # counted already (or a voucher used twice)
            after = session.execute(take).scalars().first()
            return used, None if after is None else _reward(after)

        result: tuple[PoolCodeRecord | None, RewardRecord | None] = self.repo._retrying(work)
        return result

    def _use_stmt(self, id: str, kind: str, event: str, at: datetime | None) -> Any:
        return (
            update(PoolCodeRow)
            .where(
                PoolCodeRow.store == self.store,
                PoolCodeRow.id == id,
                PoolCodeRow.kind == kind,
                PoolCodeRow.used_at.is_(None),
            )
            .values(used_at=at or datetime.now(UTC), used_event=event)
            .returning(PoolCodeRow)
        )

    def pool_code(self, id: str) -> PoolCodeRecord | None:
        row = self.repo.read(lambda s: s.get(PoolCodeRow, (self.store, id)))
        return None if row is None else _pool_code(row)

    def pool_codes(
        self, *, kiosk: str | None = None, kind: str | None = None, unused: bool = False
    ) -> list[PoolCodeRecord]:
        """Pooled codes, oldest first."""
        stmt = select(PoolCodeRow).where(PoolCodeRow.store == self.store)
        if kiosk is not None:
            stmt = stmt.where(PoolCodeRow.kiosk == kiosk)
        if kind is not None:
            stmt = stmt.where(PoolCodeRow.kind == kind)
        if unused:
            stmt = stmt.where(PoolCodeRow.used_at.is_(None))
        stmt = stmt.order_by(PoolCodeRow.issued_at, PoolCodeRow.id)
        result: list[PoolCodeRecord] = self.repo.read(
            lambda s: [_pool_code(r) for r in s.execute(stmt).scalars()]
        )
        return result
