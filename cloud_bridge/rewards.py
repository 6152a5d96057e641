"""Rewards and the pools of codes the bridge signs in advance (docs/members.md).

Kiosks hold public keys only, yet a reward prints a signed voucher and a new member
leaves with a link to their own page: the bridge keeps, for every kiosk, a pool of
vouchers per active reward and a pool of member codes, and tops each up to
`members.pool_size` unused codes when the kiosk reports its status, when a code of it is
used, and when a reward is added or offered again. After every change to the catalogue
every kiosk hears the whole of what is on offer (`rewards.set`).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud_bridge.commands import CommandService, checked_command
from cloud_bridge.config import BridgeConfig
from cloud_bridge.db import Repository
from cloud_bridge.db.catalogue import Catalogue, NewCode, PoolCodeRecord, RewardRecord
from cloud_bridge.issuing import DAY, issue
from o2o_protocol.limits import json_bytes
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
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Without `key` (a runtime built without the store's key) no pools are kept.
        `clock` (Unix seconds) dates the codes signed, so tests can age a pool."""
        self.repo = repo
        self.config = config
        self.store = config.store
        self.key = key
        self.commands = commands
        self.catalogue = Catalogue(repo, config.store)
        self.clock = clock
        self._lock = threading.Lock()
        if key is not None and self.page_base() is None:
            log.warning(
                "member pages are off: the bridge listens on %s, which no phone reaches; "
                "set [members] page_url in bridge.toml to the address phones use",
                config.http.host,
            )

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
        now = datetime.now(UTC)
        new = RewardRecord(id, name, name_en, points, stock, True, now, now)
        self._check_fits([*self.offered(), new])
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
        after = dataclasses.replace(current, **changes)
        self._check_fits(
            [after if r.id == id else r for r in self.rewards()]
            + ([after] if not current.active else [])
        )
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
        return self.commands.kiosks(self.config.kiosks)

    @staticmethod
    def _catalogue_data(rewards: Sequence[RewardRecord]) -> dict[str, Any]:
        return RewardsSet(
            rewards=[
                Reward(id=r.id, name=r.name, name_en=r.name_en, points=r.points, stock=r.stock)
                for r in rewards
                if r.offered
            ]
        ).model_dump(mode="json")

    def _check_fits(self, rewards: Sequence[RewardRecord]) -> None:
        """ValueError, before anything is stored, when the catalogue these `rewards`
        would offer is over the size of one command: stored, no kiosk would ever hear
        it, and every later change would fail the same way."""
        name = CommandName.REWARDS_SET.value
        try:
            checked_command(name, self._catalogue_data(rewards), limits=self.commands.limits)
        except ValueError as exc:
            raise ValueError(
                f"the catalogue would be too large to send to the kiosks ({exc}): "
                "retire a reward or shorten the names first"
            ) from None

    def send_catalogue(self) -> None:
        """Every kiosk hears the whole catalogue on offer; a kiosk that cannot be sent
        it is logged and the others still hear it."""
        data = self._catalogue_data(self.offered())
        for kiosk in self.kiosks():
            try:
                self.commands.send(kiosk, CommandName.REWARDS_SET.value, data)
            except Exception:
                log.exception("could not send the catalogue to %s", kiosk)

    def _changed(self) -> None:
        """After a change is stored: never raises (the change stands; the caller must
        not answer an error for it)."""
        self.send_catalogue()
        for kiosk in self.kiosks():
            try:
                self.top_up(kiosk, members=False)
            except Exception:
                log.exception("could not top up the voucher pools of %s", kiosk)

    # -- pools ------------------------------------------------------------------------

    def top_up(self, kiosk: str, *, members: bool = True) -> int:
        """Fill the kiosk's voucher pools (one per reward on offer) and, with `members`,
        its member pool; the number of codes sent."""
        if self.key is None:
            return 0
        # A cheap read first: a kiosk reports often, and its pools are mostly full.
        target = self.config.members.pool_size
        unused = self.catalogue.unused_counts(
            kiosk, stale_kind=VOUCHER, fresh_after=self._fresh_after()
        )
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

    def _fresh_after(self) -> datetime:
        """Vouchers issued before this expire within half of `voucher_days`: no longer
        counted as unused, so fresh ones are sent (the kiosk skips the old ones)."""
        half = timedelta(days=self.config.members.voucher_days) / 2
        return datetime.fromtimestamp(self.clock(), UTC) - half

    def _fill(self, kiosk: str, kind: str, reward: RewardRecord | None) -> int:
        now = self.clock()

        def make(n: int) -> list[NewCode]:
            if reward is not None:
                return [self._voucher(reward, now) for _ in range(n)]
            return [self._member_code(now) for _ in range(n)]

        def commands(codes: list[NewCode]) -> list[tuple[str, dict[str, Any]]]:
            name = CommandName.POOL_REFILL.value
            return [
                (name, checked_command(name, data, limits=self.commands.limits))
                for data in self._refills(reward, codes)
            ]

        codes, cmds = self.catalogue.fill_pool(
            kiosk,
            kind,
            None if reward is None else reward.id,
            self.config.members.pool_size,
            make,
            commands,
            fresh_after=self._fresh_after() if reward is not None else None,
            now=datetime.fromtimestamp(now, UTC),
        )
        if cmds:
            self.commands.resend(kiosk, cmds[0].seq - 1)
            log.info("sent %d %s code(s) to %s", len(codes), kind, kiosk)
        return len(codes)

    def _refills(self, reward: RewardRecord | None, codes: list[NewCode]) -> list[dict[str, Any]]:
        """`pool.refill` data for `codes`, split so each fits `limits.command_bytes`
        (a pool of 200 member codes is several times one command's size)."""
        base = PoolRefill(
            kind=VOUCHER if reward is not None else MEMBER,
            reward=None if reward is None else reward.id,
            codes=[],
        ).model_dump(mode="json", exclude_none=True)
        room = self.commands.limits.command_bytes - json_bytes(base)
        chunks: list[list[dict[str, Any]]] = [[]]
        used = 0
        for c in codes:
            item = PoolCode(id=c.id, code=c.code, url=c.url).model_dump(
                mode="json", exclude_none=True
            )
            size = json_bytes(item) + 1  # and its comma
            if chunks[-1] and used + size > room:
                chunks.append([])
                used = 0
            chunks[-1].append(item)
            used += size
        return [{**base, "codes": chunk} for chunk in chunks if chunk]

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

    def page_base(self) -> str | None:
        """Where phones reach member pages; None when `page_url` is unset and the bridge
        listens on a loopback or unspecified address, which no phone reaches (a slip
        then carries the shop's join link rather than a dead page link)."""
        if self.config.members.page_url:
            return self.config.members.page_url
        host = self.config.http.host.strip("[]")
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            if host.lower() == "localhost":
                return None
        else:
            if ip.is_loopback or ip.is_unspecified:
                return None
        return self.config.member_page_base()

    def page_url(self, token: str) -> str | None:
        """The member's own page for a member code (None: see `page_base`)."""
        base = self.page_base()
        return None if base is None else f"{base}/m/{token}"

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

    def catch_up(self, since: datetime, until: datetime | None = None) -> int:
        """Apply the stored events since `since` (received before `until`: younger ones
        may still be on their way through the hook) whose pooled code is still unused: the
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
            if (until is None or e.received_at < until)
            and isinstance(
                v := e.data.get(
                    "voucher_id" if type_ is EventType.POINTS_REDEEMED else "member_id"
                ),
                str,
            )
            and v in unused
        ]
        applied = self._apply([Event.model_validate(e.envelope()) for e in missed], replay=True)
        if applied:
            log.warning("applied %d event(s) the code pools had missed", applied)
        return applied

    def _apply(self, events: Sequence[Event], *, replay: bool) -> int:
        refill: set[str] = set()
        catalogue_changed = False
        applied = 0
        joined: list[Event] = []
        for e in events:
            try:
                if e.type == EventType.POINTS_REDEEMED:
                    used, ran_out = self._redeemed(e, refill, replay=replay)
                    catalogue_changed |= ran_out
                    applied += used
                elif e.type == EventType.MEMBER_JOINED:
                    joined.append(e)
            except Exception:
                log.exception("could not apply event %s (%s) to the code pools", e.id, e.type)
        applied += self._joined(joined, refill)
        if catalogue_changed:
            self.send_catalogue()  # per kiosk, never raises
        for kiosk in sorted(refill):
            try:
                self.top_up(kiosk)
            except Exception:
                log.exception("could not top up the code pools of %s", kiosk)
        return applied

    def _joined(self, events: Sequence[Event], refill: set[str]) -> int:
        """Mark the join codes of a batch's joins used, in one transaction (one by one if
        that fails); how many were pooled codes used now."""
        joins = [
            (e, code) for e in events if isinstance(code := e.data.get("member_id"), str) and code
        ]
        try:
            used = self.catalogue.use_codes(
                [(code, MEMBER, e.id, self._at(e)) for e, code in joins]
            )
        except Exception:
            log.exception("could not mark %d join code(s) used at once: one by one", len(joins))
            used = []
            for e, code in joins:
                try:
                    used.append(self.catalogue.use_code(code, MEMBER, e.id, at=self._at(e)))
                except Exception:
                    log.exception("could not apply event %s (%s) to the code pools", e.id, e.type)
                    used.append(None)
        for (e, _), code in zip(joins, used, strict=True):
            self._note_used(e, code, MEMBER, refill)
        return sum(code is not None for code in used)

    def _redeemed(self, event: Event, refill: set[str], *, replay: bool) -> tuple[bool, bool]:
        """(voucher used now, the reward ran out with this one). The stock is taken with
        the voucher's first use, so a replay never takes it twice; a live redemption
        without a pooled voucher takes it too."""
        voucher = event.data.get("voucher_id")
        reward = event.data.get("reward_id")
        used, after = self.catalogue.redeem(
            voucher if isinstance(voucher, str) and voucher else None,
            VOUCHER,
            reward if isinstance(reward, str) and reward else None,
            event.id,
            replay=replay,
            at=self._at(event),
        )
        self._note_used(event, used, VOUCHER, refill)
        return used is not None, after is not None and after.stock == 0

    @staticmethod
    def _at(event: Event) -> datetime:
        try:
            return parse_rfc3339(event.ts)
        except ValueError:
            return datetime.now(UTC)

    def _note_used(
        self, event: Event, used: PoolCodeRecord | None, kind: str, refill: set[str]
    ) -> None:
        if used is not None:
            refill.add(used.kiosk)
            if used.kiosk != event.kiosk:
                log.warning(
                    "%s code %s of kiosk %s was used at kiosk %s",
                    kind,
                    used.id,
                    used.kiosk,
                    event.kiosk,
                )
