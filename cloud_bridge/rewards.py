"""Rewards and the pools of codes the bridge signs in advance (docs/members.md).

Kiosks hold public keys only, yet a reward prints a signed voucher and a new member
leaves with a link to their own page: the bridge keeps, for every kiosk, a pool of
vouchers per active reward and a pool of member codes, and tops each up to
`members.pool_size` unused codes when the kiosk reports its status, when a code of it is
used, and when a reward is added or offered again. After every change to the catalogue
every kiosk hears the whole of what is on offer (`rewards.set`).
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud_bridge.commands import CommandService, checked_command
from cloud_bridge.config import BridgeConfig
from cloud_bridge.db import Repository
from cloud_bridge.db.catalogue import Catalogue, NewCode, PoolCodeRecord, RewardRecord
from cloud_bridge.issuing import DAY, issue
from o2o_protocol.messages import (
    CommandName,
    Event,
    EventType,
    PoolCode,
    PoolRefill,
    Reward,
    RewardsSet,
    Status,
)
from o2o_protocol.timeutil import parse_rfc3339

log = logging.getLogger(__name__)

#: The most rewards on offer at once (what one `rewards.set` carries).
MAX_ACTIVE = 100
VOUCHER = "voucher"
MEMBER = "member"


def new_reward_id() -> str:
    return "r-" + secrets.token_hex(4)


def new_member_id() -> str:
    return "m-" + secrets.token_urlsafe(9)


def voucher_campaign(reward_id: str) -> str:
    """The campaign of a reward's vouchers: how a printed voucher names its reward."""
    return f"reward:{reward_id}"


class RewardService:
    """The catalogue (`/api/v1/rewards`), the kiosks' code pools, and the rules that keep
    them right as events arrive (`after_stored`) and kiosks report (`kiosk_reported`)."""

    def __init__(
        self,
        repo: Repository,
        config: BridgeConfig,
        key: Ed25519PrivateKey | None,
        commands: CommandService,
    ) -> None:
        """Without `key` (a runtime built without the store's key) no pools are kept."""
        self.repo = repo
        self.config = config
        self.store = config.store
        self.key = key
        self.commands = commands
        self.catalogue = Catalogue(repo, config.store)
        self._lock = threading.Lock()

    # -- the catalogue ----------------------------------------------------------------

    def rewards(self, *, include_retired: bool = False) -> list[RewardRecord]:
        return self.catalogue.rewards(include_retired=include_retired)

    def reward(self, id: str) -> RewardRecord | None:
        return self.catalogue.reward(id)

    def add(
        self, *, name: str, points: int, name_en: str | None = None, stock: int | None = None
    ) -> RewardRecord:
        """A new reward, on offer at once. ValueError when MAX_ACTIVE are on offer."""
        if self.catalogue.count_active() >= MAX_ACTIVE:
            raise ValueError(f"{MAX_ACTIVE} rewards are active already: retire one first")
        id = new_reward_id()
        # The kiosks' own model: refuse what no kiosk would take.
        Reward(id=id, name=name, name_en=name_en, points=points, stock=stock)
        reward = self.catalogue.add_reward(
            id, name=name, name_en=name_en, points=points, stock=stock
        )
        self._changed()
        return reward

    def update(self, id: str, changes: dict[str, Any]) -> RewardRecord | None:
        """Change a reward (name, name_en, points, stock, active); None if unknown.
        ValueError when it would make more than MAX_ACTIVE active."""
        current = self.catalogue.reward(id)
        if current is None:
            return None
        reactivated = changes.get("active") and not current.active
        if reactivated and self.catalogue.count_active() >= MAX_ACTIVE:
            raise ValueError(f"{MAX_ACTIVE} rewards are active already: retire one first")
        changed = self.catalogue.update_reward(id, changes)
        if changed is None:
            return None
        self._changed()
        return changed[1]

    def retire(self, id: str) -> RewardRecord | None:
        """No longer on offer (kept for the ledger's words); None if unknown."""
        return self.update(id, {"active": False})

    def offered(self) -> list[RewardRecord]:
        return [r for r in self.catalogue.rewards() if r.offered]

    def kiosks(self) -> list[str]:
        """The configured kiosks, then any other the bridge has heard from."""
        return list(dict.fromkeys([*self.config.kiosks, *self.repo.kiosk_names(self.store)]))

    def send_catalogue(self) -> None:
        """Every kiosk hears the whole catalogue on offer."""
        data = RewardsSet(
            rewards=[
                Reward(id=r.id, name=r.name, name_en=r.name_en, points=r.points, stock=r.stock)
                for r in self.offered()
            ]
        ).model_dump(mode="json")
        for kiosk in self.kiosks():
            self.commands.send(kiosk, CommandName.REWARDS_SET.value, data)

    def _changed(self) -> None:
        self.send_catalogue()
        for kiosk in self.kiosks():
            self.top_up(kiosk, members=False)

    # -- pools ------------------------------------------------------------------------

    def top_up(self, kiosk: str, *, members: bool = True) -> int:
        """Fill the kiosk's voucher pools (one per reward on offer) and, with `members`,
        its member pool; the number of codes sent."""
        if self.key is None:
            return 0
        # A cheap read first: a kiosk reports often, and its pools are mostly full.
        target = self.config.members.pool_size
        unused = self.catalogue.unused_counts(kiosk)
        wanted: list[RewardRecord | None] = [
            r for r in self.offered() if unused.get((VOUCHER, r.id), 0) < target
        ]
        if members and unused.get((MEMBER, None), 0) < target:
            wanted.append(None)
        sent = 0
        with self._lock:
            for reward in wanted:
                sent += self._fill(kiosk, MEMBER if reward is None else VOUCHER, reward)
        return sent

    def _fill(self, kiosk: str, kind: str, reward: RewardRecord | None) -> int:
        now = time.time()

        def make(n: int) -> list[NewCode]:
            if reward is not None:
                return [self._voucher(reward, now) for _ in range(n)]
            return [self._member_code(now) for _ in range(n)]

        def command(codes: list[NewCode]) -> tuple[str, dict[str, Any]]:
            refill = PoolRefill(
                kind=VOUCHER if reward is not None else MEMBER,
                reward=None if reward is None else reward.id,
                codes=[PoolCode(id=c.id, code=c.code, url=c.url) for c in codes],
            )
            data = refill.model_dump(mode="json", exclude_none=True)
            name = CommandName.POOL_REFILL.value
            return name, checked_command(name, data, limits=self.commands.limits)

        codes, cmd = self.catalogue.fill_pool(
            kiosk,
            kind,
            None if reward is None else reward.id,
            self.config.members.pool_size,
            make,
            command,
        )
        if cmd is not None:
            self.commands.resend(kiosk, cmd.seq - 1)
            log.info("sent %d %s code(s) to %s", len(codes), kind, kiosk)
        return len(codes)

    def _voucher(self, reward: RewardRecord, now: float) -> NewCode:
        assert self.key is not None
        issued = issue(
            self.key,
            "coupon",
            store=self.store,
            campaign=voucher_campaign(reward.id),
            value=reward.name,
            expires=int(now) + self.config.members.voucher_days * DAY,
            now=now,
        )
        return NewCode(issued.id, issued.token)

    def _member_code(self, now: float) -> NewCode:
        assert self.key is not None
        issued = issue(self.key, "member", store=self.store, id=new_member_id(), now=now)
        return NewCode(issued.id, issued.token, self.page_url(issued.token))

    def page_url(self, token: str) -> str:
        """The member's own page for a member code."""
        return f"{self.config.member_page_base()}/m/{token}"

    def pool(self, kiosk: str | None = None, *, unused: bool = False) -> list[PoolCodeRecord]:
        return self.catalogue.pool_codes(kiosk=kiosk, unused=unused)

    # -- hooks --------------------------------------------------------------------------

    def kiosk_reported(self, kiosk: str, status: Status) -> None:
        """A kiosk that is up gets its pools topped up (StatusHook)."""
        if status.online:
            self.top_up(kiosk)

    def after_stored(self, events: Sequence[Event], new: set[str]) -> None:
        """Rules for newly stored events (AfterStored): a redeemed reward uses its
        voucher and one of its stock; a join at the door uses a pooled member code."""
        fresh = list({e.id: e for e in events if e.id in new}.values())
        self._apply(fresh, replay=False)

    def catch_up(self, since: datetime) -> int:
        """Apply the stored events since `since` whose pooled code is still unused: the
        hook runs after events are stored and acked, so a fault in between would leave a
        used code counted as unused (a pool one short for good) and the stock one high.
        Safe to run any time (a code is used once); returns how many it applied."""
        unused = {p.id for p in self.catalogue.pool_codes(unused=True)}
        if not unused:
            return 0
        missed = [
            e
            for type_ in (EventType.POINTS_REDEEMED, EventType.MEMBER_JOINED)
            for e in self.repo.iter_events(store=self.store, type=type_.value, since=since)
            if e.data.get("voucher_id" if type_ is EventType.POINTS_REDEEMED else "member_id")
            in unused
        ]
        applied = self._apply([Event.model_validate(e.envelope()) for e in missed], replay=True)
        if applied:
            log.warning("applied %d event(s) the code pools had missed", applied)
        return applied

    def _apply(self, events: Sequence[Event], *, replay: bool) -> int:
        refill: set[str] = set()
        catalogue_changed = False
        applied = 0
        for e in events:
            try:
                if e.type == EventType.POINTS_REDEEMED:
                    used, ran_out = self._redeemed(e, refill, replay=replay)
                    catalogue_changed |= ran_out
                elif e.type == EventType.MEMBER_JOINED:
                    used = self._used(e, "member_id", MEMBER, refill) is not None
                else:
                    continue
                applied += used
            except Exception:
                log.exception("could not apply event %s (%s) to the code pools", e.id, e.type)
        if catalogue_changed:
            self.send_catalogue()
        for kiosk in sorted(refill):
            self.top_up(kiosk)
        return applied

    def _redeemed(self, event: Event, refill: set[str], *, replay: bool) -> tuple[bool, bool]:
        """(voucher used now, the reward ran out with this one). The stock is taken with
        the voucher's first use, so a replay never takes it twice; a live redemption
        without a pooled voucher takes it too."""
        used = self._used(event, "voucher_id", VOUCHER, refill)
        reward = event.data.get("reward_id")
        if not isinstance(reward, str) or not reward:
            return used is not None, False
        if used is None:
            voucher = event.data.get("voucher_id")
            pooled = isinstance(voucher, str) and self.catalogue.pool_code(voucher) is not None
            if replay or pooled:
                return False, False  # counted already (or a voucher used twice: logged)
        after = self.catalogue.take_stock(reward)
        return used is not None, after is not None and after.stock == 0

    def _used(self, event: Event, field: str, kind: str, refill: set[str]) -> PoolCodeRecord | None:
        """Mark the event's pooled code used; the code, or None (not pooled, or used)."""
        code = event.data.get(field)
        if not isinstance(code, str) or not code:
            return None
        try:
            at = parse_rfc3339(event.ts)
        except ValueError:
            at = datetime.now(UTC)
        used = self.catalogue.use_code(code, kind, event.id, at=at)
        if used is not None:
            refill.add(used.kiosk)
            if used.kiosk != event.kiosk:
                log.warning(
                    "%s code %s of kiosk %s was used at kiosk %s",
                    kind,
                    code,
                    used.kiosk,
                    event.kiosk,
                )
        return used
