"""Members and their points ledger (docs/members.md): every write is one transaction.

An entry and the member's balance change together: the entry is inserted with `ON
CONFLICT (store, ref) DO NOTHING`, and only a new entry moves `members.points`, so a
re-sent event or a repeated request counts once whoever else is writing. An online spend
moves the balance with a conditional `UPDATE … WHERE points + d >= 0`: the database
itself refuses the one that would go below zero, even with two requests at once on
PostgreSQL (the second waits for the first's row lock and re-checks). A kiosk's spend is
always kept; the entry that takes the balance below zero is flagged `overdraft`.

Reads and writes go through the Repository's session factory and retry policy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Table, bindparam, case, exists, func, literal, select, tuple_, update
from sqlalchemy.orm import Session

from cloud_bridge.db.records import StoredEvent, stored_event
from cloud_bridge.db.repository import Repository
from cloud_bridge.db.tables import EventRow, LedgerRow, MemberRow

#: Per kiosk and member, how many of its own event ids an upsert names as `applied`: as
#: many as a kiosk keeps pending (its `MAX_PENDING`, 100). A kiosk drops a pending change
#: only when an upsert names it; one left out would be added to the base for good (after
#: a long offline stretch, more than a shorter list of a member's events are pending).
APPLIED = 100


@dataclass(frozen=True)
class Member:
    id: str
    name: str | None
    points: int
    visits: int
    last_visit: datetime | None
    joined_at: datetime
    source: str
    referrer: str | None


@dataclass(frozen=True)
class Entry:
    id: int
    member: str
    delta: int
    reason: str
    source: str
    ref: str
    at: datetime
    overdraft: bool


@dataclass(frozen=True)
class NewMember:
    """A member to create if the store does not have it yet."""

    id: str
    name: str | None
    source: str
    joined_at: datetime
    referrer: str | None = None


@dataclass(frozen=True)
class Posting:
    """One ledger entry to add; `visit`: a counted check-in (visits, last_visit)."""

    member: str
    delta: int
    reason: str
    source: str
    ref: str
    at: datetime
    visit: bool = False


@dataclass(frozen=True)
class Posted:
    """What adding an entry did: `new` false when its ref was already there (then
    `entry` is the one stored first); `member` as it is after the transaction."""

    new: bool
    entry: Entry
    member: Member
    #: The member had no name and took the posting's (kiosks must hear it even when the
    #: entry itself was a repeat).
    named: bool = False


@dataclass(frozen=True)
class BatchPosted:
    """What `post_many` did."""

    #: Members whose points, visits or name changed, in the order first posted.
    changed: list[str]
    #: New entries that took a balance below zero: (member, balance after it, ref).
    overdrafts: list[tuple[str, int, str]]


@dataclass(frozen=True)
class Snapshot:
    """A member as one transaction saw it: the balance, the `applied` list of each kiosk
    asked about, and `version`, the member's newest ledger entry id (0: none). Every
    change to points, visits or last visit adds an entry, so a later balance never has
    a lower version, whichever worker read it."""

    member: Member
    version: int
    applied: dict[str, list[str]]


class NoSuchMember(LookupError):
    pass


class WouldGoBelowZero(ValueError):
    pass


def _member(r: Any) -> Member:
    """A `Member` from a members row (an ORM object or a plain row of its columns)."""
    return Member(
        r.id, r.name, int(r.points), int(r.visits), r.last_visit, r.joined_at, r.source, r.referrer
    )


def _entry(r: LedgerRow) -> Entry:
    return Entry(
        int(r.id), r.member, int(r.delta), r.reason, r.source, r.ref, r.at, bool(r.overdraft)
    )


class Ledger:
    """The ledger of one store."""

    def __init__(self, repo: Repository, store: str) -> None:
        self.repo = repo
        self.store = store

    # -- writes ---------------------------------------------------------------------

    def create(
        self, new: NewMember, *, rename: bool = False, referral_points: int = 0
    ) -> tuple[Member, bool, Member | None]:
        """Create a member (idempotent); `rename`: set the name of one that exists (when
        `new.name` is given). A new member whose referrer exists credits the referrer
        `referral_points` once, in the same transaction. Returns (member, created, the
        referrer if credited)."""

        def work(session: Session) -> tuple[Member, bool, Member | None]:
            created, referrer, _ = self._ensure(session, new)
            if not created and rename and new.name is not None:
                session.execute(
                    update(MemberRow)
                    .where(MemberRow.store == self.store, MemberRow.id == new.id)
                    .values(name=new.name, updated_at=datetime.now(UTC))
                )
            credited = None
            if created and referrer is not None and referral_points > 0:
                posting = self._referral(new, referrer, referral_points)
                self._lock(session, referrer)
                if self._insert_entry(session, posting) is not None:
                    credited = self._move(session, posting, overdraft_ok=True)[0]
            return self._get(session, new.id), created, credited

        return self.repo._retrying(work)

    def post(
        self, posting: Posting, *, create: NewMember | None = None, overdraft_ok: bool = True
    ) -> Posted:
        """Add one entry and move the balance, once per `ref`.

        `create`: make the member first if unknown (a kiosk's event); otherwise an unknown
        member raises NoSuchMember. `overdraft_ok` false: a spend that would take the
        balance below zero raises WouldGoBelowZero and nothing is stored."""

        def work(session: Session) -> Posted:
            named = False
            if create is not None:
                _, _, named = self._ensure(session, create)
            elif session.scalar(self._exists(posting.member)) is None:
                raise NoSuchMember(posting.member)
            self._lock(session, posting.member)
            entry_id = self._insert_entry(session, posting)
            if entry_id is None:
                first = session.execute(
                    select(LedgerRow).where(
                        LedgerRow.store == self.store, LedgerRow.ref == posting.ref
                    )
                ).scalar_one()
                return Posted(False, _entry(first), self._get(session, posting.member), named)
            member, overdraft = self._move(session, posting, overdraft_ok=overdraft_ok)
            if overdraft:
                session.execute(
                    update(LedgerRow).where(LedgerRow.id == entry_id).values(overdraft=True)
                )
            row = session.get(LedgerRow, entry_id)
            assert row is not None
            return Posted(True, _entry(row), member, named)

        return self.repo._retrying(work)

    def post_many(
        self,
        steps: Sequence[Posting | NewMember],
        creates: Mapping[str, NewMember],
        *,
        referral_points: int = 0,
    ) -> BatchPosted:
        """Kiosk events in one transaction, a few statements for the whole batch instead
        of several per event, at ingest rates: the outcome of each step in order, a
        `Posting` as `post(p, create=creates[p.member])` (a spend may overdraw) and a
        `NewMember` (a join) as `create(new, referral_points=…)`.

        Members missing are created first, with one insert (a referrer is kept if it
        existed or an earlier step of the batch made it); a joined member the batch
        created credits its referrer at the join's place. Then every member of the batch
        is locked in id order (PostgreSQL; two workers' batches wait for each other
        instead of deadlocking) and read once; the entries go in with one `INSERT … ON
        CONFLICT DO NOTHING` (a ref already there counts nothing); the new balances,
        visits and last visits are worked out in order, overdrafts flagged where a spend
        took a balance below zero, and each member row is written once."""
        if not steps:
            return BatchPosted([], [])
        members = cast(Table, MemberRow.__table__)  # Core: one UPDATE, a row of values per member

        def work(session: Session) -> BatchPosted:
            now = datetime.now(UTC)
            made = list(creates.values())  # in the order first met
            referrers = {c.referrer for c in made if c.referrer is not None}
            existed = set(
                session.execute(
                    select(MemberRow.id).where(
                        MemberRow.store == self.store, MemberRow.id.in_(sorted(referrers))
                    )
                ).scalars()
            ) if referrers else set()  # fmt: skip
            values, earlier = [], set(existed)
            for c in made:
                new_row = self._member_values(c, now)
                if c.referrer is not None and c.referrer != c.id and c.referrer in earlier:
                    new_row["referrer"] = c.referrer
                values.append(new_row)
                earlier.add(c.id)
            created = {
                str(row.id)
                for row in self.repo.insert_many(
                    session,
                    MemberRow,
                    sorted(values, key=lambda v: str(v["id"])),
                    skip_on=["store", "id"],
                    returning=[MemberRow.__table__.c.id],
                )
            }
            referred = {str(v["id"]): v["referrer"] for v in values if v["referrer"] is not None}
            postings: list[Posting] = []
            joined: dict[str, None] = {}
            met: set[str] = set()
            seen: dict[str, None] = {}  # every member a join names (it may fill in a name)
            for step in steps:
                if isinstance(step, Posting):
                    postings.append(step)
                    met.add(step.member)
                    continue
                by_join = step.id not in met  # no earlier check-in of the batch made it
                met.add(step.id)
                seen[step.id] = None
                if not by_join or step.id not in created:
                    continue  # known already, or made by an earlier check-in of the batch
                joined[step.id] = None
                referrer = referred.get(step.id)
                if referrer is not None and referral_points > 0:
                    postings.append(self._referral(step, referrer, referral_points))
            order = list(dict.fromkeys([*seen, *(p.member for p in postings)]))
            if not order:
                return BatchPosted([], [])
            locked = session.execute(
                select(MemberRow.id, MemberRow.name, MemberRow.points, MemberRow.visits,
                       MemberRow.last_visit)
                .where(MemberRow.store == self.store, MemberRow.id.in_(order))
                .order_by(MemberRow.id)
                .with_for_update()
            ).all()  # fmt: skip
            state = {r.id: [int(r.points), int(r.visits), r.last_visit, r.name] for r in locked}
            missing = [m for m in order if m not in state]
            if missing:
                raise NoSuchMember(missing[0])
            named = [
                {"m": m, "name": creates[m].name}
                for m in sorted(order)
                if state[m][3] is None and m in creates and creates[m].name is not None
            ]
            if named:
                session.execute(
                    update(members)
                    .where(
                        members.c.store == self.store,
                        members.c.id == bindparam("m"),
                        members.c.name.is_(None),
                    )
                    .values(name=bindparam("name"), updated_at=now),
                    named,
                )
            refs = list(dict.fromkeys(p.ref for p in postings))
            first = {p.ref: p for p in reversed(postings)}  # a ref twice in a batch: the first
            new_ids: dict[str, int] = {}
            if refs:
                entries = LedgerRow.__table__.c
                inserted = self.repo.insert_many(
                    session,
                    LedgerRow,
                    [self._entry_values(first[r], now) for r in refs],
                    skip_on=["store", "ref"],
                    returning=[entries.ref, entries.id],
                )
                new_ids = {str(ref): int(id_) for ref, id_ in inserted}
            moved: dict[str, None] = {}
            overdrafts: list[tuple[str, int, str]] = []
            for ref in refs:
                if ref not in new_ids:
                    continue
                p = first[ref]
                row = state[p.member]
                row[0] += p.delta
                if p.visit:
                    row[1] += 1
                    row[2] = p.at if row[2] is None or row[2] < p.at else row[2]
                if p.delta < 0 and row[0] < 0:
                    overdrafts.append((p.member, row[0], ref))
                moved[p.member] = None
            touched = set(moved) | set(joined) | {str(n["m"]) for n in named}
            if moved:
                session.execute(
                    update(members)
                    .where(members.c.store == self.store, members.c.id == bindparam("m"))
                    .values(
                        points=bindparam("points"),
                        visits=bindparam("visits"),
                        last_visit=bindparam("last_visit"),
                        updated_at=now,
                    ),
                    [
                        {"m": m, "points": state[m][0], "visits": state[m][1],
                         "last_visit": state[m][2]}
                        for m in sorted(moved)
                    ],
                )  # fmt: skip
            if overdrafts:
                session.execute(
                    update(LedgerRow)
                    .where(LedgerRow.id.in_([new_ids[ref] for _, _, ref in overdrafts]))
                    .values(overdraft=True)
                )
            return BatchPosted([m for m in order if m in touched], overdrafts)

        return self.repo._retrying(work)

    @staticmethod
    def _referral(new: NewMember, referrer: str, points: int) -> Posting:
        """The entry that credits `referrer` for bringing in `new`, once (its ref)."""
        ref = f"referral:{new.id}"
        return Posting(referrer, points, ref[:200], new.source, ref, new.joined_at)

    def _member_values(self, new: NewMember, now: datetime) -> dict[str, Any]:
        return {
            "store": self.store,
            "id": new.id,
            "name": new.name,
            "points": 0,
            "visits": 0,
            "last_visit": None,
            "joined_at": new.joined_at,
            "source": new.source,
            "referrer": None,
            "updated_at": now,
        }

    def _entry_values(self, p: Posting, now: datetime) -> dict[str, Any]:
        return {
            "store": self.store,
            "member": p.member,
            "delta": p.delta,
            "reason": p.reason,
            "source": p.source,
            "ref": p.ref,
            "at": p.at,
            "overdraft": False,
            "recorded_at": now,
        }

    def _lock(self, session: Session, member: str) -> None:
        """Lock the member row before adding its entry (PostgreSQL; SQLite has one writer):
        a member's entry ids then grow in the order they commit, so the newest id is a
        version that only grows (`snapshot`)."""
        session.execute(self._exists(member).with_for_update())

    def _exists(self, member: str) -> Any:
        return select(MemberRow.id).where(MemberRow.store == self.store, MemberRow.id == member)

    def _ensure(self, session: Session, new: NewMember) -> tuple[bool, str | None, bool]:
        """Insert the member unless it exists; (whether it was new, its referrer: the one
        given if that is another existing member, whether an existing member without a
        name took the one given)."""
        now = datetime.now(UTC)
        referrer = new.referrer
        if referrer is not None and (
            referrer == new.id or session.scalar(self._exists(referrer)) is None
        ):
            referrer = None
        stmt = (
            self.repo._insert(MemberRow.__table__)
            .values(
                store=self.store,
                id=new.id,
                name=new.name,
                points=0,
                visits=0,
                last_visit=None,
                joined_at=new.joined_at,
                source=new.source,
                referrer=referrer,
                updated_at=now,
            )
            .on_conflict_do_nothing(index_elements=["store", "id"])
            .returning(MemberRow.__table__.c.id)
        )
        created = session.execute(stmt).first() is not None
        named = False
        if not created and new.name is not None:
            named = (
                session.execute(
                    update(MemberRow)
                    .where(
                        MemberRow.store == self.store,
                        MemberRow.id == new.id,
                        MemberRow.name.is_(None),
                    )
                    .values(name=new.name, updated_at=now)
                    .returning(MemberRow.id)
                ).first()
                is not None
            )
        return created, referrer, named

    def _insert_entry(self, session: Session, p: Posting) -> int | None:
        """INSERT … ON CONFLICT (store, ref) DO NOTHING: the new entry's id, or None."""
        stmt = (
            self.repo._insert(LedgerRow.__table__)
            .values(
                store=self.store,
                member=p.member,
                delta=p.delta,
                reason=p.reason,
                source=p.source,
                ref=p.ref,
                at=p.at,
                overdraft=False,
                recorded_at=datetime.now(UTC),
            )
            .on_conflict_do_nothing(index_elements=["store", "ref"])
            .returning(LedgerRow.__table__.c.id)
        )
        return session.execute(stmt).scalar()

    def _move(self, session: Session, p: Posting, *, overdraft_ok: bool) -> tuple[Member, bool]:
        """Apply an entry to the member row; (member after, whether it is an overdraft)."""
        values: dict[str, Any] = {
            "points": MemberRow.points + p.delta,
            "updated_at": datetime.now(UTC),
        }
        if p.visit:
            values["visits"] = MemberRow.visits + 1
            values["last_visit"] = case(
                (MemberRow.last_visit.is_(None), p.at),
                (MemberRow.last_visit < p.at, p.at),
                else_=MemberRow.last_visit,
            )
        stmt = update(MemberRow).where(MemberRow.store == self.store, MemberRow.id == p.member)
        if p.delta < 0 and not overdraft_ok:
            # Atomic: the row lock makes a concurrent spend wait and re-check this.
            stmt = stmt.where(MemberRow.points + p.delta >= 0)
        changed = session.execute(stmt.values(**values).returning(MemberRow.id)).first()
        if changed is None:
            if session.scalar(self._exists(p.member)) is None:
                raise NoSuchMember(p.member)
            raise WouldGoBelowZero(p.member)
        member = self._get(session, p.member)
        return member, p.delta < 0 and member.points < 0

    # -- reads ----------------------------------------------------------------------

    def _get(self, session: Session, member_id: str) -> Member:
        row = session.execute(
            select(MemberRow)
            .where(MemberRow.store == self.store, MemberRow.id == member_id)
            .execution_options(populate_existing=True)
        ).scalar_one()
        return _member(row)

    def get(self, member_id: str) -> Member | None:
        stmt = select(MemberRow).where(MemberRow.store == self.store, MemberRow.id == member_id)
        with self.repo._sessions() as session:
            row = session.execute(stmt).scalar_one_or_none()
            return None if row is None else _member(row)

    def entries(
        self, member_id: str, *, limit: int = 100, oldest_first: bool = False
    ) -> list[Entry]:
        """A member's entries, newest first (in the order they were recorded)."""
        order = LedgerRow.id if oldest_first else LedgerRow.id.desc()
        stmt = (
            select(LedgerRow)
            .where(LedgerRow.store == self.store, LedgerRow.member == member_id)
            .order_by(order)
            .limit(limit)
        )
        with self.repo._sessions() as session:
            return [_entry(r) for r in session.execute(stmt).scalars()]

    def balance_after(self, entry: Entry) -> int:
        """The member's balance right after `entry` (the sum up to it)."""
        stmt = select(func.coalesce(func.sum(LedgerRow.delta), 0)).where(
            LedgerRow.store == self.store,
            LedgerRow.member == entry.member,
            LedgerRow.id <= entry.id,
        )
        with self.repo._sessions() as session:
            return int(session.scalar(stmt) or 0)

    def members(self, *, limit: int = 100) -> list[Member]:
        """Members by id."""
        stmt = select(MemberRow).where(MemberRow.store == self.store).order_by(MemberRow.id)
        with self.repo._sessions() as session:
            return [_member(r) for r in session.execute(stmt.limit(limit)).scalars()]

    def overdrawn(self, *, limit: int = 100) -> list[Member]:
        """Members whose balance is below zero, the furthest below first."""
        stmt = (
            select(MemberRow)
            .where(MemberRow.store == self.store, MemberRow.points < 0)
            .order_by(MemberRow.points, MemberRow.id)
            .limit(limit)
        )
        with self.repo._sessions() as session:
            return [_member(r) for r in session.execute(stmt).scalars()]

    def unledgered(
        self,
        types: Sequence[str],
        since: datetime,
        *,
        until: datetime | None = None,
        after: StoredEvent | None = None,
        limit: int = 500,
    ) -> list[StoredEvent]:
        """Stored events of `types` received since `since` (and before `until`, if given)
        that no ledger entry names, in
        the order they arrived (then happened), a page at a time: pass the last one of a
        page as `after` to read on."""
        named = exists().where(
            LedgerRow.store == EventRow.store, LedgerRow.ref == literal("event:") + EventRow.id
        )
        order = (EventRow.received_at, EventRow.ts, EventRow.id)
        stmt = select(EventRow).where(
            EventRow.store == self.store,
            EventRow.type.in_(list(types)),
            EventRow.received_at >= since,
            ~named,
        )
        if until is not None:
            stmt = stmt.where(EventRow.received_at < until)
        if after is not None:
            stmt = stmt.where(tuple_(*order) > tuple_(after.received_at, after.ts, after.id))
        with self.repo._sessions() as session:
            rows = session.execute(stmt.order_by(*order).limit(limit)).scalars()
            return [stored_event(r) for r in rows]

    def snapshot(self, member_id: str, kiosks: Sequence[str]) -> Snapshot | None:
        """The member, its version and each kiosk's `applied`, read in one transaction
        with the member row locked (SQLite: the database): no entry can be added in
        between, so the balance and the lists agree. None: no such member."""

        def work(session: Session) -> Snapshot | None:
            if self.repo._dialect == "sqlite":
                # pysqlite begins a transaction only at a write: this no-op one makes the
                # reads below one snapshot and holds off other writers until it ends.
                session.execute(
                    update(MemberRow)
                    .where(MemberRow.store == self.store, MemberRow.id == member_id)
                    .values(points=MemberRow.points)
                )
            row = session.execute(
                select(MemberRow)
                .where(MemberRow.store == self.store, MemberRow.id == member_id)
                .with_for_update()
            ).scalar_one_or_none()
            if row is None:
                return None
            version = session.scalar(
                select(func.max(LedgerRow.id)).where(
                    LedgerRow.store == self.store, LedgerRow.member == member_id
                )
            )
            applied = {
                k: [r.removeprefix("event:") for r in session.scalars(self._applied(member_id, k))]
                for k in kiosks
            }
            return Snapshot(_member(row), int(version or 0), applied)

        return self.repo._retrying(work)

    def snapshots(self, member_ids: Sequence[str], kiosks: Sequence[str]) -> dict[str, Snapshot]:
        """`snapshot` for many members in one transaction and three reads (members, their
        versions, every kiosk's `applied`), whatever the number of members and kiosks.
        Members unknown are left out."""
        if not member_ids:
            return {}
        ids = sorted(set(member_ids))
        sources = {f"kiosk:{k}": k for k in kiosks}

        def work(session: Session) -> dict[str, Snapshot]:
            mine = (MemberRow.store == self.store, MemberRow.id.in_(ids))
            if self.repo._dialect == "sqlite":
                # As in `snapshot`: a no-op write makes the reads one snapshot.
                session.execute(update(MemberRow).where(*mine).values(points=MemberRow.points))
            # Plain rows, not ORM objects: a busy batch reads hundreds of members.
            rows = session.execute(
                select(*MemberRow.__table__.c).where(*mine).order_by(MemberRow.id).with_for_update()
            ).all()
            members = {r.id: _member(r) for r in rows}
            ours = (LedgerRow.store == self.store, LedgerRow.member.in_(list(members)))
            versions = dict(
                session.execute(
                    select(LedgerRow.member, func.max(LedgerRow.id))
                    .where(*ours)
                    .group_by(LedgerRow.member)
                ).all()
            )
            rank = (
                func.row_number()
                .over(
                    partition_by=(LedgerRow.member, LedgerRow.source), order_by=LedgerRow.id.desc()
                )
                .label("rank")
            )
            latest = (
                select(LedgerRow.member, LedgerRow.source, LedgerRow.ref, LedgerRow.id, rank)
                .where(
                    *ours,
                    LedgerRow.source.in_(list(sources)),
                    LedgerRow.ref.startswith("event:", autoescape=True),
                )
                .subquery()
            )
            applied: dict[str, dict[str, list[str]]] = {m: {k: [] for k in kiosks} for m in members}
            for member, source, ref, _id, _rank in session.execute(
                select(latest).where(latest.c.rank <= APPLIED).order_by(latest.c.id.desc())
            ):
                applied[member][sources[source]].append(ref.removeprefix("event:"))
            return {
                m: Snapshot(member, int(versions.get(m) or 0), applied[m])
                for m, member in members.items()
            }

        return self.repo._retrying(work)

    def applied(self, member_id: str, kiosk: str) -> list[str]:
        """The ids of `kiosk`'s latest events the member's balance counts, newest first."""
        with self.repo._sessions() as session:
            rows = session.execute(self._applied(member_id, kiosk)).scalars()
            return [ref.removeprefix("event:") for ref in rows]

    def _applied(self, member_id: str, kiosk: str) -> Any:
        return (
            select(LedgerRow.ref)
            .where(
                LedgerRow.store == self.store,
                LedgerRow.member == member_id,
                LedgerRow.source == f"kiosk:{kiosk}",
                LedgerRow.ref.startswith("event:", autoescape=True),
            )
            .order_by(LedgerRow.id.desc())
            .limit(APPLIED)
        )
