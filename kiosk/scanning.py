"""The scan service: verify → facts → decide → record, for one scanned text at a time.

It holds the staff session (a staff code puts the kiosk in staff mode for a while), and
hands locker intents to the `LockerCoordinator`. Joins, rewards and ratings (the taps
after a scan) are recorded here too. Everything it records goes through the `Recorder`,
so it returns only once the outcome is on disk (or raises `DBError`, with nothing
recorded). Blocking: call it off the UI thread.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from kiosk.decisions import (
    Facts,
    Rules,
    Unlock,
    decide,
    decide_join,
    normalise_phone,
    phone_hash,
    redeem,
    review,
    shop_day,
)
from kiosk.localdb import KioskDB, Recorded
from kiosk.lockerflows import LockerCoordinator, Opening
from kiosk.loyalty import MemberOffer, RatingSubject, RewardChoice
from kiosk.recorder import Recorder
from o2o_protocol.codes import CodeType, Rejected, verify_code
from o2o_protocol.messages import EventType, new_event_id


@dataclass(frozen=True)
class ScanSettings:
    """What the service needs from the kiosk's config, as plain values."""

    store: str
    keys: Mapping[str, Ed25519PublicKey]
    rules: Rules
    staff_session_s: float
    phone_secret: str
    join_url: str


class ScanService:
    """`scan(text)` turns a scanned text into a recorded outcome (or an open locker)."""

    def __init__(
        self,
        settings: ScanSettings,
        db: KioskDB,
        doors: LockerCoordinator,
        recorder: Recorder,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.db = db
        self.doors = doors
        self.recorder = recorder
        self.clock = clock
        self._staff_until = 0.0
        # Reading the pool (or the balance) and recording what takes from it is one step:
        # two taps at once never pick the same code or spend the same points.
        self._taking = threading.Lock()

    # --- the staff session -------------------------------------------------------------

    def staff_active(self) -> bool:
        return self.clock() < self._staff_until

    def staff_logout(self) -> None:
        """Leave staff mode now, so the next pickup code is a customer's, not a load."""
        self._staff_until = 0.0

    # --- customers and staff -----------------------------------------------------------

    def scan(self, text: str) -> Recorded | Opening:
        """Verify, decide, open a locker if needed, record durably. Returns once on disk."""
        s = self.settings
        now = self.clock()
        staff = self.staff_active()
        result = verify_code(text, s.keys, store=s.store, now=now)
        if isinstance(result, Rejected):
            facts = Facts()
        else:
            facts = self.db.facts_for(result, staff=staff)
            if staff and result.type is CodeType.PICKUP:
                held = self.doors.loading(result.order)
                if held is not None:  # shown again while its locker is still open
                    return held
            if facts.free_lockers:
                # Empty in the database is not enough: the door must be usable too.
                facts = dataclasses.replace(
                    facts, free_lockers=self.doors.usable(facts.free_lockers)
                )
        decision = decide(
            result,
            facts,
            s.rules,
            now=now,
            today=shop_day(now, s.rules.zone),
            text=text,
            staff=staff,
        )
        if isinstance(decision, Unlock):
            return self.doors.open_for(decision)
        recorded = self.recorder.record(decision)
        if decision.event_type is EventType.STAFF_LOGIN:
            self._staff_until = now + s.staff_session_s
        return recorded

    def join(self, phone: str, *, referrer: str | None = None) -> Recorded | None:
        """A new member from a phone number typed at the kiosk; None if it is no number."""
        number = normalise_phone(phone)
        if number is None:
            return None
        secret = self.settings.phone_secret
        with self._taking:
            known = self.db.member_by_phone(phone_hash(number, secret))
            decision = decide_join(
                number,
                secret=secret,
                member_id=known or new_event_id(),
                join_url=self.settings.join_url,
                known=known is not None,
                pooled=None if known else self.db.pooled("member"),
                referrer=referrer,
            )
            return None if decision is None else self.recorder.record(decision)

    # --- rewards and ratings -----------------------------------------------------------

    def offer(self, member_id: str) -> MemberOffer:
        """Rewards the member can afford now, in stock, with a voucher left to print."""
        balance = self.db.member_facts(member_id).member_points
        left = self.db.vouchers_left()
        choices = tuple(
            RewardChoice(r.id, r.name, r.name_en, r.points)
            for r in self.db.rewards()
            if r.points <= balance and r.stock != 0 and left.get(r.id, 0) > 0
        )
        return MemberOffer(member_id, balance, choices)

    def redeem(self, member_id: str, reward_id: str) -> Recorded:
        """Spend points on a reward; returns once the outcome is on disk."""
        with self._taking:
            reward = self.db.reward(reward_id)
            voucher = self.db.pooled("voucher", reward_id) if reward else None
            facts = self.db.member_facts(member_id)
            decision = redeem(member_id, reward, facts, voucher, reward_id=reward_id)
            return self.recorder.record(decision)

    def rate(self, subject: RatingSubject, rating: int) -> Recorded:
        """Record a rating once per rated event (ValueError for one outside 1-5)."""
        with self._taking:
            decision = review(subject, rating, rated=self.db.rated(subject.event))
            return self.recorder.record(decision)
