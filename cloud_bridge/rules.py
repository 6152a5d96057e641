"""Rules the bridge applies to events once they are stored.

Each rule is an `AfterStored` hook of the event sink: it sees a committed batch and the
ids that were new in it, so a re-sent event never triggers a rule twice.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from cloud_bridge.commands import CommandService, checked_command, grouped
from cloud_bridge.db import Repository
from cloud_bridge.db.records import StoredEvent, stored_event
from cloud_bridge.db.tables import CommandRow, EventRow
from o2o_protocol.messages import CommandName, Event, EventType

log = logging.getLogger(__name__)


#: The commands that tell a door of a coupon used elsewhere: one by one, or grouped.
_TOLD = (CommandName.COUPON_USED.value, CommandName.COUPONS_USED.value)


def _coupons_in(data: Any) -> list[str]:
    """The coupons a `coupon.used` or `coupons.used` command's data names."""
    if not isinstance(data, dict):
        return []
    items = data.get("coupons") if "coupons" in data else [data]
    if not isinstance(items, list):
        return []
    return [str(i.get("id")) for i in items if isinstance(i, dict)]


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
        redeemed: list[tuple[Event, str]] = []
        for e in events:
            if e.id in seen or e.id not in new or e.type != EventType.COUPON_REDEEMED:
                continue
            seen.add(e.id)
            coupon = e.data.get("coupon_id")
            if isinstance(coupon, str) and coupon:
                redeemed.append((e, coupon))
        self._pass_on(redeemed)

    def _pass_on(self, redeemed: Sequence[tuple[Event, str]]) -> None:
        """Tell the other doors of each redemption: one read of the coupons' stored
        redemptions and one transaction of commands for the whole batch; if that fails,
        one by one, so one that cannot be passed on holds back no other."""
        if not redeemed:
            return
        try:
            stored = self.repo.redemptions_of(self.store, [c for _, c in redeemed])
            kiosks = self.commands.kiosks(self.kiosks)
            told: list[tuple[str, str, dict[str, Any]]] = []
            for e, c in redeemed:
                news = self._told(e, c, stored.get(c, []), kiosks)
                if news:  # one dict for every other door: checked once
                    checked_command(news[0][1], news[0][2], limits=self.commands.limits)
                told += news
            self.commands.send_many(grouped(told, limits=self.commands.limits), checked=True)
            return
        except Exception:
            log.exception("could not pass on %d redemption(s) at once", len(redeemed))
        for e, coupon in redeemed:
            try:
                self._redeemed(e, coupon)
            except Exception:
                log.exception("could not pass on the redemption of coupon %s", coupon)

    def _redeemed(self, event: Event, coupon: str) -> None:
        kiosks = self.commands.kiosks(self.kiosks)
        redemptions = self.repo.redemptions(self.store, coupon)
        self.commands.send_many(self._told(event, coupon, redemptions, kiosks))

    def _told(
        self,
        event: Event,
        coupon: str,
        redemptions: Sequence[StoredEvent],
        kiosks: Sequence[str],
    ) -> list[tuple[str, str, dict[str, Any]]]:
        """The `coupon.used` command each other door gets for one redemption (logging a
        double redemption or a visit card used past its number)."""
        uses = card_uses(event)
        data: dict[str, Any] = {"id": coupon, "at": event.ts, "kiosk": event.kiosk}
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
        return [(k, CommandName.COUPON_USED.value, data) for k in kiosks if k != event.kiosk]

    def catch_up(self, since: datetime, until: datetime | None = None) -> int:
        """Pass on the redemptions received since `since` (and before `until`: younger ones
        may still be on their way through the hook) that some kiosk of the store was
        never told of (the hook runs after the ack: a crash in between would lose them, and
        a coupon must stay single use at every door). Returns how many were passed on."""

        def read(session: object) -> tuple[list[Event], set[tuple[str, str]]]:
            rows = session.execute(  # type: ignore[attr-defined]
                select(EventRow)
                .where(
                    EventRow.store == self.store,
                    EventRow.type == EventType.COUPON_REDEEMED.value,
                    EventRow.received_at >= since,
                    EventRow.received_at < (until or datetime.max.replace(tzinfo=UTC)),
                )
                .order_by(EventRow.received_at, EventRow.id)
            ).scalars()
            redeemed = [Event.model_validate(stored_event(r).envelope()) for r in rows]
            sent = session.execute(  # type: ignore[attr-defined]
                select(CommandRow.kiosk, CommandRow.data).where(
                    CommandRow.store == self.store,
                    CommandRow.name.in_(_TOLD),
                    CommandRow.created_at >= since,
                )
            ).all()
            return redeemed, {(k, coupon) for k, d in sent for coupon in _coupons_in(d)}

        redeemed, told = self.repo.read(read)
        kiosks = self.commands.kiosks(self.kiosks)
        missed = [
            e
            for e in redeemed
            if isinstance(coupon := e.data.get("coupon_id"), str)
            and coupon
            and any(k != e.kiosk and (k, coupon) not in told for k in kiosks)
        ]
        self._pass_on([(e, str(e.data["coupon_id"])) for e in missed])
        if missed:
            log.warning("passed on %d redemption(s) the kiosks had not been told of", len(missed))
        return len(missed)
