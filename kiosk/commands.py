"""What a command from the bridge changes on the kiosk: a pure function, no I/O.

`changes_for(cmd, now)` turns a command's data into the same typed effects a scan
produces (`kiosk.effects`); the local database applies them in one durable write with
the command's sequence number. Device actions (`locker.open`) change no data: the
locker coordinator runs them (see docs/mqtt.md for the command names and their data).
"""

from __future__ import annotations

from kiosk.effects import (
    CodeRevoked,
    CodeUsed,
    Effect,
    MemberUpdate,
    PreorderCancelled,
    PreorderDetails,
)
from o2o_protocol.codes import CodeType
from o2o_protocol.messages import (
    CodeRevoke,
    Command,
    CouponUsed,
    MemberUpsert,
    PreorderCancel,
    PreorderUpsert,
    command_data,
)
from o2o_protocol.timeutil import rfc3339


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
        case CouponUsed(id=coupon_id):
            # Used at another kiosk of the store: single use per store, first use wins.
            used = CodeUsed(
                coupon_id, CodeType.COUPON, at=data.at or at, kiosk=data.kiosk, keep_first=True
            )
            return (used,)
        case PreorderUpsert():
            return (PreorderDetails(data.order, data.size, data.name, data.items),)
        case PreorderCancel(order=order):
            return (PreorderCancelled(order),)
        case MemberUpsert():
            fields = data.model_dump(include={"name", "points", "visits"}, exclude_none=True)
            return (MemberUpdate(data.id, fields),)
    return ()
