"""Members and their points (docs/members.md): the ledger fed by kiosks' events and the
online side, and what every kiosk is told after a change.

Kiosks decide offline on the balance they last heard plus their own pending changes;
each `member.upsert` names the events of *that* kiosk the balance already counts
(`applied`), so a kiosk can drop those and never count one twice.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from cloud_bridge.commands import CommandService, checked_command, grouped
from cloud_bridge.config import MembersSection
from cloud_bridge.db import Repository, format_ts
from cloud_bridge.db.ledger import (
    Entry,
    Ledger,
    Member,
    NewMember,
    NoSuchMember,
    Posting,
    WouldGoBelowZero,
)
from cloud_bridge.db.records import SKEW
from cloud_bridge.db.tables import MEMBER_ID
from o2o_protocol.messages import CommandName, Event, EventType
from o2o_protocol.timeutil import parse_rfc3339

log = logging.getLogger(__name__)

#: The largest change one entry may make (an API request, a kiosk's earn or spend).
MAX_DELTA = 1_000_000
#: The events the ledger counts.
_COUNTED = (EventType.CHECKIN, EventType.POINTS_REDEEMED, EventType.MEMBER_JOINED)
#: Names are cut to what the members table and `member.upsert` hold.
NAME_CHARS = 100


def member_id_problem(value: object) -> str | None:
    """Why `value` cannot be a member id (None: it can): 1-256 characters, no control
    characters (ids come from codes, docs/codes.md)."""
    if not isinstance(value, str) or not value:
        return "a member id is a non-empty string"
    if len(value) > MEMBER_ID:
        return f"a member id is at most {MEMBER_ID} characters"
    if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in value):
        return "a member id holds no control characters"
    return None


def _name(value: object) -> str | None:
    return value[:NAME_CHARS] if isinstance(value, str) and value else None


def _count(value: object, low: int, high: int) -> int | None:
    """An integer within [low, high] (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        return None
    return value


@dataclass(frozen=True)
class MemberView:
    id: str
    name: str | None
    points: int
    visits: int
    last_visit: datetime | None
    joined_at: datetime
    source: str
    referrer: str | None

    @property
    def overdrawn(self) -> bool:
        """Below zero: two doors offline spent the same points."""
        return self.points < 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "points": self.points,
            "visits": self.visits,
            "last_visit": format_ts(self.last_visit) if self.last_visit else None,
            "joined_at": format_ts(self.joined_at),
            "source": self.source,
            "referrer": self.referrer,
            "overdrawn": self.overdrawn,
        }

    @classmethod
    def of(cls, m: Member) -> MemberView:
        return cls(
            m.id, m.name, m.points, m.visits, m.last_visit, m.joined_at, m.source, m.referrer
        )


@dataclass(frozen=True)
class LedgerEntryView:
    delta: int
    reason: str
    source: str
    ref: str
    at: datetime
    overdraft: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "delta": self.delta,
            "reason": self.reason,
            "source": self.source,
            "ref": self.ref,
            "at": format_ts(self.at),
            "overdraft": self.overdraft,
        }

    @classmethod
    def of(cls, e: Entry) -> LedgerEntryView:
        return cls(e.delta, e.reason, e.source, e.ref, e.at, e.overdraft)


class UnknownMember(LookupError):
    """No member with that id in this store."""


class BelowZero(ValueError):
    """The spend would take the balance below zero (nothing was changed)."""


class KeyReused(ValueError):
    """An Idempotency-Key already used for a different change."""


class MemberService:
    """Members, the ledger and points of one store; tells kiosks after each change."""

    def __init__(
        self,
        repo: Repository,
        store: str,
        commands: CommandService,
        kiosks: Sequence[str],
        *,
        settings: MembersSection,
    ) -> None:
        self.repo = repo
        self.store = store
        self.commands = commands
        #: The configured kiosks; those the bridge has heard from are added each time.
        self.kiosks = list(kiosks)
        self.settings = settings
        self.book = Ledger(repo, store)
        #: Read-then-queue in one order within this process (the sink's thread and API
        #: requests both notify); across workers, `version` orders the upserts.
        self._notifying = threading.Lock()

    # -- reads ----------------------------------------------------------------------

    def get(self, member_id: str) -> MemberView | None:
        found = self.book.get(member_id)
        return None if found is None else MemberView.of(found)

    def ledger(
        self, member_id: str, *, limit: int = 100, oldest_first: bool = False
    ) -> list[LedgerEntryView]:
        """The member's entries, newest first (in the order they were recorded)."""
        entries = self.book.entries(member_id, limit=limit, oldest_first=oldest_first)
        return [LedgerEntryView.of(e) for e in entries]

    def listing(self, *, limit: int = 100) -> list[MemberView]:
        """Members by id."""
        return [MemberView.of(m) for m in self.book.members(limit=limit)]

    def overdrawn(self, *, limit: int = 100) -> list[MemberView]:
        """Members below zero, the furthest below first."""
        return [MemberView.of(m) for m in self.book.overdrawn(limit=limit)]

    # -- the online side --------------------------------------------------------------

    def create(
        self,
        member_id: str,
        name: str | None = None,
        referrer: str | None = None,
        *,
        source: str = "online",
    ) -> tuple[MemberView, bool]:
        """Create a member, or rename one that exists (when `name` is given); a new one
        whose `referrer` is an existing member credits the referrer once."""
        new = NewMember(member_id, _name(name), source, datetime.now(UTC), referrer)
        member, created, credited = self.book.create(
            new, rename=True, referral_points=self.settings.referral_points
        )
        if created or name is not None:
            self.notify(member_id)
        if credited is not None:
            self.notify(credited.id)
        return MemberView.of(member), created

    def change_points(
        self, member_id: str, delta: int, reason: str, *, key: str | None = None
    ) -> MemberView:
        """Earn (delta > 0) or spend (< 0) online. The same `key` again changes nothing
        and answers the balance as it was right after the first; UnknownMember,
        BelowZero (nothing changed), KeyReused (the key named another change)."""
        ref = f"key:{key}" if key is not None else f"request:{uuid.uuid4().hex}"
        posting = Posting(member_id, delta, reason, "online", ref, datetime.now(UTC))
        try:
            posted = self.book.post(posting, overdraft_ok=False)
        except NoSuchMember:
            raise UnknownMember(member_id) from None
        except WouldGoBelowZero:
            raise BelowZero(
                f"member {member_id} has fewer than {-delta} points: the balance would go"
                " below zero"
            ) from None
        view = MemberView.of(posted.member)
        if posted.new:
            self.notify(member_id)
            return view
        first = posted.entry
        if (first.member, first.delta, first.reason) != (member_id, delta, reason):
            raise KeyReused("this Idempotency-Key was already used for another change")
        return replace(view, points=self.book.balance_after(first))

    # -- kiosks -----------------------------------------------------------------------

    def notify(self, member_id: str) -> None:
        """Queue `member.upsert` for every kiosk of the store, each with its own
        `applied` (its latest events the balance counts)."""
        self.notify_many([member_id])

    def notify_many(self, member_ids: Sequence[str]) -> None:
        """`notify` for many members: one read of them all, one transaction for every
        kiosk's commands (a batch of check-ins costs a few statements, not a few per
        member and door)."""
        if not member_ids:
            return
        with self._notifying:
            self._send(self._upserts(member_ids))

    def _upserts(self, member_ids: Sequence[str]) -> list[tuple[str, str, dict[str, Any]]]:
        """Each kiosk's `member.upsert` data, from one transaction (each balance and every
        `applied` agree), with `version` (the newest entry id): another worker may queue
        its upsert between this read and our send, so a kiosk keeps the one with the
        higher version, not the later seq."""
        kiosks = self.commands.kiosks(self.kiosks)
        snaps = self.book.snapshots(member_ids, kiosks)
        upserts: list[tuple[str, str, dict[str, Any]]] = []
        for member_id in dict.fromkeys(member_ids):
            snap = snaps.get(member_id)
            if snap is None:
                continue
            member = snap.member
            base = {
                "id": member.id,
                "name": member.name,
                "points": member.points,
                "visits": member.visits,
                "last_visit": format_ts(member.last_visit) if member.last_visit else None,
                "version": snap.version,
            }
            if not kiosks:
                continue
            # The doors' copies differ only in `applied`: the largest one (in bytes, as
            # JSON) checked against the command's rules and limits stands for them all.
            longest = max(kiosks, key=lambda k: sum(len(i) + 3 for i in snap.applied[k]))
            try:
                checked_command(
                    CommandName.MEMBER_UPSERT.value,
                    {**base, "applied": snap.applied[longest]},
                    limits=self.commands.limits,
                )
            except ValueError as exc:
                log.error("cannot tell the kiosks about member %s: %s", member_id, exc)
                continue
            upserts += [
                (kiosk, CommandName.MEMBER_UPSERT.value, {**base, "applied": snap.applied[kiosk]})
                for kiosk in kiosks
            ]
        return upserts

    def _send(self, upserts: list[tuple[str, str, dict[str, Any]]]) -> None:
        self.commands.send_many(grouped(upserts, limits=self.commands.limits), checked=True)

    def after_stored(self, events: list[Event], new: set[str]) -> None:
        """The event sink's hook: count each newly stored event once, then tell the
        kiosks about every member that changed. The batch's joins, check-ins and spends
        are counted together (`Ledger.post_many`); if that fails, each event is tried
        alone, so one bad event is logged and skipped without holding back the others."""
        fresh: list[Event] = []
        seen: set[str] = set()
        for e in events:
            if e.id in new and e.id not in seen:
                seen.add(e.id)
                fresh.append(e)
        self._tell(self._count(fresh))

    def _count(self, events: Sequence[Event]) -> dict[str, None]:
        """Count events in the ledger, in their order; the members that changed, in order."""
        steps: list[tuple[Event, Posting | NewMember, NewMember]] = []
        for e in events:
            try:
                if e.type == EventType.MEMBER_JOINED:
                    if (joining := self._joining(e)) is not None:
                        steps.append((e, joining, joining))
                elif (prepared := self._posting(e)) is not None:
                    steps.append((e, *prepared))
            except Exception:
                log.exception("could not count event %s (%s) in the ledger", e.id, e.type)
        return self._post(steps)

    def _post(self, steps: list[tuple[Event, Posting | NewMember, NewMember]]) -> dict[str, None]:
        """One batch of joins, check-ins and spends (`Ledger.post_many`); one by one if it
        fails, so one bad event holds back no other."""
        if not steps:
            return {}
        creates: dict[str, NewMember] = {}
        for _, _, c in steps:  # as the first event makes it, with the first name given
            first = creates.setdefault(c.id, c)
            if first.name is None and c.name is not None:
                creates[c.id] = replace(first, name=c.name)
        try:
            done = self.book.post_many(
                [s for _, s, _ in steps], creates, referral_points=self.settings.referral_points
            )
        except Exception:
            log.exception("could not count %d events as a batch: one by one", len(steps))
            changed: dict[str, None] = {}
            for e, _, _ in steps:
                try:
                    changed.update(dict.fromkeys(self._apply(e)))
                except Exception:
                    log.exception("could not count event %s (%s) in the ledger", e.id, e.type)
            return changed
        for member_id, points, ref in done.overdrafts:
            log.warning("member %s overdrawn (%d points) by %s", member_id, points, ref)
        return dict.fromkeys(done.changed)

    def _tell(self, members: dict[str, None]) -> None:
        try:
            self.notify_many(list(members))
            return
        except Exception:
            log.exception("could not tell the kiosks about %d member(s) at once", len(members))
        for member_id in members:  # one by one: one that fails holds back no other
            try:
                self.notify(member_id)
            except Exception:
                log.exception("could not tell the kiosks about member %s", member_id)

    def catch_up(self, since: datetime, until: datetime | None = None) -> int:
        """Count the member events received since `since` (and before `until`: younger
        ones may still be on their way through the hook) that the ledger has missed (the
        hook runs after the events are stored and acked: a database fault in between
        would lose them); each is counted once whatever else runs. Returns how many."""
        types = [t.value for t in _COUNTED]
        counted, after = 0, None
        changed: dict[str, None] = {}
        while page := self.book.unledgered(types, since, until=until, after=after):
            after = page[-1]
            for stored in page:
                try:
                    touched = self._apply(Event.model_validate(stored.envelope()))
                except Exception:
                    log.exception("could not count event %s (%s)", stored.id, stored.type)
                    continue
                counted += bool(touched)
                changed.update(dict.fromkeys(touched))
        self._tell(changed)
        if counted:
            log.warning("counted %d member event(s) the ledger had missed", counted)
        return counted

    def _who(self, e: Event) -> tuple[str, str, datetime] | None:
        """A counted event's member id, source and time; None (logged) when it names no
        usable member or is not one the ledger counts."""
        if e.type not in _COUNTED:
            return None
        member_id = e.data.get("member_id")
        problem = member_id_problem(member_id)
        if problem is not None:
            log.warning("event %s (%s) not counted: %s", e.id, e.type, problem)
            return None
        assert isinstance(member_id, str)
        at = parse_rfc3339(e.ts)
        now = datetime.now(UTC)
        if at > now + SKEW:
            # A kiosk clock far ahead (the year 2999): it happened when it arrived, or its
            # `last_visit` would hold the cool-down at every door for good.
            at = now
        return member_id, f"kiosk:{e.kiosk}", at

    def _posting(self, e: Event) -> tuple[Posting, NewMember] | None:
        """The entry a check-in or a spend at a kiosk makes, and the member to create if
        the store does not know it yet; None when it counts nothing."""
        who = None if e.type == EventType.MEMBER_JOINED else self._who(e)
        if who is None:
            return None
        member_id, source, at = who
        data = e.data
        create = NewMember(member_id, _name(data.get("name")), source, at)
        if e.type == EventType.CHECKIN:
            earned = _count(data.get("points_earned"), 0, MAX_DELTA)
            counted = data.get("counted")
            if counted is not True and not (counted is None and earned):
                return None
            posting = Posting(
                member_id, earned or 0, "checkin", source, f"event:{e.id}", at, visit=True
            )
            return posting, create
        spent = _count(data.get("points"), 1, MAX_DELTA)
        if spent is None:
            log.warning("event %s (points.redeemed) not counted: no points spent", e.id)
            return None
        reward = data.get("reward_id")
        reason = f"reward:{reward}" if isinstance(reward, str) and reward else "reward"
        return Posting(member_id, -spent, reason[:200], source, f"event:{e.id}", at), create

    def _apply(self, e: Event) -> list[str]:
        """Count one event on its own; the members it changed."""
        if e.type == EventType.MEMBER_JOINED:
            return self._join(e)
        prepared = self._posting(e)
        if prepared is None:
            return []
        posting, create = prepared
        posted = self.book.post(posting, create=create, overdraft_ok=True)
        if posted.entry.overdraft and posted.new:
            log.warning(
                "member %s overdrawn (%d points) by event %s at kiosk %s",
                posting.member,
                posted.member.points,
                e.id,
                e.kiosk,
            )
        # A repeat that filled in a missing name changed what kiosks show too.
        return [posting.member] if posted.new or posted.named else []

    def _joining(self, e: Event) -> NewMember | None:
        """The member a `member.joined` event brings in; None when it names no usable
        member or the kiosk already knew it (`known`)."""
        who = self._who(e)
        if who is None or e.data.get("known") is True:
            return None
        member_id, source, at = who
        referrer = e.data.get("referrer")
        return NewMember(
            member_id,
            _name(e.data.get("name")),
            source,
            at,
            referrer if member_id_problem(referrer) is None else None,
        )

    def _join(self, e: Event) -> list[str]:
        new = self._joining(e)
        if new is None:
            return []
        _, created, credited = self.book.create(new, referral_points=self.settings.referral_points)
        return [new.id, *([credited.id] if credited else [])] if created else []
