"""Rules the bridge applies to events once they are stored.

Each rule is an `AfterStored` hook of the event sink: it sees a committed batch and the
ids that were new in it, so a re-sent event never triggers a rule twice.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select

from cloud_bridge.commands import CommandService
from cloud_bridge.db import Repository
from cloud_bridge.db.records import stored_event
from cloud_bridge.db.tables import CommandRow, EventRow
from o2o_protocol.messages import CommandName, Event, EventType

log = logging.getLogger(__name__)


def card_uses(event: Event) -> int | None:
    """A visit card's uses as its redemption states them (`uses` >= 2); None: a coupon."""
    uses = event.data.get("uses")
    if isinstance(uses, int) and not isinstance(uses, bool) and uses >= 2:
        return uses
    return None


class CouponUsedElsewhere:
    """Tell the other kiosks about each newly stored redemption (docs/codes.md: coupons are
    single use per store, and each kiosk checks offline against its own store). For a
    visit card the command carries `count`, the uses stored for it at every door, so each
    kiosk refuses the card once all its uses are spent anywhere."""

    def __init__(
        self, repo: Repository, store: str, commands: CommandService, kiosks: Sequence[str]
    ) -> None:
        self.repo = repo
        self.store = store
        self.commands = commands
        #: The configured kiosks; those the bridge has heard from are added each time.
        self.kiosks = list(kiosks)

    def __call__(self, events: list[Event], new: set[str]) -> None:
        seen: set[str] = set()
        for e in events:
            if e.id in seen or e.id not in new or e.type != EventType.COUPON_REDEEMED:
                continue
            seen.add(e.id)
            coupon = e.data.get("coupon_id")
            if not isinstance(coupon, str) or not coupon:
                continue
            try:
                self._redeemed(e, coupon)
            except Exception:
                log.exception("could not pass on the redemption of coupon %s", coupon)

    def _redeemed(self, event: Event, coupon: str) -> None:
        redemptions = self.repo.redemptions(self.store, coupon)
        uses = card_uses(event)
        data: dict[str, object] = {"id": coupon, "at": event.ts, "kiosk": event.kiosk}
        if uses is not None:
            data["count"] = len(redemptions)
            if len(redemptions) > uses:
                log.warning(
                    "visit card %s used %d times, %d allowed: event %s at kiosk %s (%s)",
                    coupon,
                    len(redemptions),
                    uses,
                    event.id,
                    event.kiosk,
                    event.ts,
                )
        elif redemptions and redemptions[0].id != event.id:
            first = redemptions[0]
            log.warning(
                "coupon %s redeemed twice: event %s at kiosk %s (%s), already event %s at"
                " kiosk %s (%s)",
                coupon,
                event.id,
                event.kiosk,
                event.ts,
                first.id,
                first.kiosk,
                first.envelope()["ts"],
            )
        kiosks = self.commands.kiosks(self.kiosks)
        for kiosk in kiosks:
            if kiosk != event.kiosk:
                self.commands.send(kiosk, CommandName.COUPON_USED.value, data)

    def catch_up(self, since: datetime) -> int:
        """Pass on the redemptions received since `since` that some kiosk of the store was
        never told of (the hook runs after the ack: a crash in between would lose them, and
        a coupon must stay single use at every door). Returns how many were passed on."""

        def read(session: object) -> tuple[list[Event], set[tuple[str, str]]]:
            rows = session.execute(  # type: ignore[attr-defined]
                select(EventRow)
                .where(
                    EventRow.store == self.store,
                    EventRow.type == EventType.COUPON_REDEEMED.value,
                    EventRow.received_at >= since,
                )
                .order_by(EventRow.received_at, EventRow.id)
            ).scalars()
            redeemed = [Event.model_validate(stored_event(r).envelope()) for r in rows]
            told = session.execute(  # type: ignore[attr-defined]
                select(CommandRow.kiosk, CommandRow.data).where(
                    CommandRow.store == self.store,
                    CommandRow.name == CommandName.COUPON_USED.value,
                    CommandRow.created_at >= since,
                )
            ).all()
            return redeemed, {(k, str(d.get("id"))) for k, d in told if isinstance(d, dict)}

        redeemed, told = self.repo.read(read)
        kiosks = self.commands.kiosks(self.kiosks)
        missed = [
            e
            for e in redeemed
            if isinstance(coupon := e.data.get("coupon_id"), str)
            and coupon
            and any(k != e.kiosk and (k, coupon) not in told for k in kiosks)
        ]
        for e in missed:
            try:
                self._redeemed(e, str(e.data["coupon_id"]))
            except Exception:
                log.exception("could not pass on the redemption of event %s", e.id)
        if missed:
            log.warning("passed on %d redemption(s) the kiosks had not been told of", len(missed))
        return len(missed)
