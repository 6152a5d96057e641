"""What a command from the bridge changes on the kiosk: a pure function, no I/O.

`changes_for(cmd, now)` turns a command's data into the same typed effects a scan
produces (`kiosk.effects`); `apply_command` hands them to the local database, which
applies them in one durable write with the command's sequence number. A `locker.open`
becomes a queued remote open, which the locker coordinator runs off the sync thread
(see docs/mqtt.md for the command names and their data).
"""

from __future__ import annotations

import logging

from kiosk.decisions import plausible_visit
from kiosk.effects import (
    CodeRevoked,
    CodeUsed,
    Effect,
    MemberUpdate,
    PoolCodesAdded,
    PreorderCancelled,
    PreorderDetails,
    RemoteOpenQueued,
    RewardsReplaced,
)
from kiosk.localdb import KioskDB
from o2o_protocol.codes import CodeType
from o2o_protocol.messages import (
    COMMAND_DATA,
    CodeRevoke,
    Command,
    CouponsUsed,
    CouponUsed,
    LockerOpen,
    MembersUpsert,
    MemberUpsert,
    PoolRefill,
    PreorderCancel,
    PreorderUpsert,
    ProtocolError,
    RewardsSet,
    command_data,
)
from o2o_protocol.timeutil import parse_rfc3339, rfc3339

log = logging.getLogger(__name__)


def apply_command(db: KioskDB, cmd: Command, now: float | None = None) -> bool:
    """Apply a command's changes once, in order (`now`: the database's clock by default).

    Returns False for a repeat or an out-of-order one (the bridge re-sends those). A
    command with bad data, or one this kiosk does not know, is logged and changes
    nothing, but still counts as applied, so one bad command never blocks the next.
    """
    when = db.clock() if now is None else now
    try:
        changes = changes_for(cmd, when)
    except ProtocolError as exc:
        log.warning("skipped command %d: %s", cmd.seq, exc)
        changes = ()
    if cmd.name not in COMMAND_DATA:
        log.info("command %s (seq %d) is not known to this kiosk", cmd.name, cmd.seq)
    return db.apply_changes(changes, when, cmd_seq=cmd.seq)


def changes_for(cmd: Command, now: float) -> tuple[Effect, ...]:
    """The data changes of one command; () for one that changes no data here.

    Raises `ProtocolError` for data the command's model refuses (the caller logs it and
    still counts the command as applied, so one bad command never blocks the next).
    """
    data = command_data(cmd.name, cmd.data)
    at = rfc3339(now)
    match data:
        case CodeRevoke(id=code_id):
            return (CodeRevoked(code_id, at),)
        case CouponUsed():
            return (_coupon_used(data, at),)
        case CouponsUsed(coupons=coupons):
            return tuple(_coupon_used(c, at) for c in coupons)
        case PreorderUpsert():
            return (PreorderDetails(data.order, data.size, data.name, data.items),)
        case PreorderCancel(order=order):
            return (PreorderCancelled(order),)
        case MemberUpsert():
            return (_member_update(data, now),)
        case MembersUpsert(members=members):
            return tuple(_member_update(m, now) for m in members)
        case RewardsSet(rewards=rewards):
            return (RewardsReplaced(tuple(r.model_dump(mode="json") for r in rewards)),)
        case PoolRefill(kind=kind, reward=reward, codes=codes):
            if kind == "voucher" and reward is None:
                raise ProtocolError("pool.refill: voucher codes name their reward")
            pooled = tuple((c.id, c.code, c.url) for c in codes)
            return (PoolCodesAdded(kind, reward if kind == "voucher" else None, pooled),)
        case LockerOpen():
            return (RemoteOpenQueued(cmd.seq, data.locker, data.by, data.expires),)
    return ()


def _coupon_used(data: CouponUsed, at: str) -> CodeUsed:
    """Used at another kiosk of the store: single use per store, first use wins; a visit
    card's `count` raises the uses known here (the larger one is kept)."""
    return CodeUsed(
        data.id,
        CodeType.COUPON,
        at=data.at or at,
        kiosk=data.kiosk,
        keep_first=True,
        count=data.count or 1,
    )


def _member_update(data: MemberUpsert, now: float) -> MemberUpdate:
    """The bridge's balance, visits and name, and the time of its last counted visit
    (kept as Unix seconds). A `last_visit` that cannot be read, or lies outside
    `plausible_visit` (year 1 would break the day computation at every later check-in,
    year 9999 would hold the cooldown forever), is left out, not fatal."""
    fields = data.model_dump(include={"name", "points", "visits"}, exclude_none=True)
    if data.last_visit:
        try:
            at: float | None = parse_rfc3339(data.last_visit).timestamp()
        except (ValueError, OverflowError):
            at = None
        if at is not None and plausible_visit(at, now):
            fields["last_visit_at"] = at
        else:
            log.warning("member.upsert %s: ignored last_visit %r", data.id, data.last_visit)
    applied = None if data.applied is None else tuple(data.applied)
    return MemberUpdate(data.id, fields, applied, data.version)
