"""The bridge's MQTT side, wired: one connection and the parts that use it.

`BridgeRuntime` builds the parts: the MQTT link, the stats publisher, the command service
(no thread of its own: it publishes when asked), the member service (the points ledger),
and the event sink with what follows a commit (rules, the ledger, command re-sends, fresh
figures). It starts the link, the stats publisher
and the sink in that order and stops them in reverse: the sink finishes storing and
acking what it took while the link is still up, the stats publisher sends the last
figures, then the link goes. Once started, and then every `catch_up_interval_s` while it
runs, it counts the recent member events the ledger missed (stored and acked, then a fault
before or in the ledger hook), and the code pools (`rewards.py`) the redemptions and joins
they missed: a hook that failed once is made good without a restart.

One of several workers (`config.worker`, `run --worker NAME`): the link has a client id of
its own and takes the store's events through the shared subscription, while statuses,
Home Assistant's birth message and the bridge's own status come to every worker in full.
The jobs done once (stats, discovery, re-sends and code-pool refills on a status, the
catch-up) run only while this worker holds the store's lease (`leases.py`); taking it, a
worker does what a fresh start does: says online, announces, publishes the figures,
re-sends to every kiosk what its last known status says it lacks, and catches up.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud_bridge.activities import ActivityService
from cloud_bridge.commands import CommandService
from cloud_bridge.config import BridgeConfig
from cloud_bridge.db import Repository
from cloud_bridge.ha import HaAnnouncer, bridge_will
from cloud_bridge.leases import Lease, LeaseKeeper, beat, forget, holders, live_workers, store_lease
from cloud_bridge.members import MemberService
from cloud_bridge.rewards import RewardService
from cloud_bridge.rules import CouponUsedElsewhere
from cloud_bridge.sink import EventSink, StatusHook
from cloud_bridge.stats import StatsPublisher
from o2o_protocol.messages import Event, Status
from o2o_protocol.mqtt import MqttLink
from o2o_protocol.topics import STATUS, kiosk_topic

log = logging.getLogger(__name__)

#: At start, member events received this many days back that the ledger missed are
#: counted (`MemberService.catch_up`).
CATCH_UP_DAYS = 7
#: How often, while the bridge runs, it counts again what the ledger and pools missed.
CATCH_UP_INTERVAL_S = 300.0
#: A worker whose ingest has a message waiting longer than this logs a warning.
LAG_WARN_S = 10.0
#: The catch-up leaves to the hooks what may still be on its way through them: events
#: received this much before the oldest batch in flight here, and before another
#: worker's oldest as its last heartbeat (a lease round earlier) said.
IN_FLIGHT_MARGIN_S = 3.0


class _Part(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...


class BridgeRuntime:
    """Subscribes to the store's kiosks, stores their events once, acks, sends commands,
    publishes figures. `start()` returns at once (a broker that is down is retried in the
    background); `wait_ready()` tells when the subscriptions are in place."""

    def __init__(
        self,
        config: BridgeConfig,
        repo: Repository,
        *,
        max_batch: int = 500,
        stats_interval_s: float = 1.0,
        stats_refresh_s: float = 60.0,
        max_wait_s: float = 30.0,
        signing_key: Ed25519PrivateKey | None = None,
        catch_up_interval_s: float = CATCH_UP_INTERVAL_S,
    ) -> None:
        """`max_wait_s`: how long a message taken from the broker may wait to be stored
        before `/health` says degraded; `signing_key`: what signs the kiosks' code pools
        (without it, none are kept); `catch_up_interval_s`: how often the missed events
        are looked for again while running."""
        self.config = config
        self.repo = repo
        self.max_wait_s = max_wait_s
        store = config.store
        m = config.mqtt
        self.worker = config.worker
        #: One of several workers: the store's jobs done once follow its lease.
        self.keeper: LeaseKeeper | None = None
        if self.worker is not None:
            self.keeper = LeaseKeeper(
                Lease(repo.engine, store_lease(store), self.worker),
                on_gain=self._lease_taken,
                on_loss=self._lease_lost,
                heartbeat=self._heartbeat,
                balance=True,
            )
        active = None if self.keeper is None else self.holds_lease
        # Home Assistant: the store's device, the bridge's online state (ha.py).
        self.ha = HaAnnouncer(store, active=active, watch=self.worker is not None)
        self.link = MqttLink(
            m,
            client_id=config.client_id(),
            session_expiry_s=m.session_expiry_s,
            manual_ack=True,
            shared_group=m.shared_group,
            # Every worker sees every status (and keeps the latest per kiosk).
            unshared=[kiosk_topic(store, "+", STATUS), *self.ha.subscriptions()],
            will=bridge_will(store),
            on_connect=self.ha.connected,
        )
        self.ha.attach(self.link)
        self.stats = StatsPublisher(
            self.link,
            repo,
            store,
            interval_s=stats_interval_s,
            refresh_s=stats_refresh_s,
            zone=config.zone(),
            active=active,
            extra=None if self.keeper is None else self._workers_lag,
            every=self.keeper is not None,
        )
        self.commands = CommandService(repo, store, self.link, limits=config.limits)
        self.members = MemberService(
            repo, store, self.commands, config.kiosks, settings=config.members
        )
        # Rewards and code pools (rewards.py): topped up on status, kept right by events.
        self.rewards = RewardService(repo, config, signing_key, self.commands)
        # Activities (activities.py): a ticket scanned at the door marks its sign-up.
        self.activities = ActivityService(repo, config, signing_key, self.commands)
        # Redemptions passed on to the store's other doors (rules.py).
        self.coupons = CouponUsedElsewhere(repo, store, self.commands, config.kiosks)
        self.sink = EventSink(
            self.link,
            repo,
            store,
            after_stored=[
                self.coupons,
                self.members.after_stored,
                self.rewards.after_stored,
                self.activities.after_stored,
                self._count_stored,
            ],
            on_status=[
                self._once(self.commands.kiosk_reported),
                self._once(self.rewards.kiosk_reported),
            ],
            on_batch=self.stats.changed,
            max_batch=max_batch,
            limits=config.limits,
        )
        self._parts: list[_Part] = [self.link, self.ha, self.stats, self.sink]
        if self.keeper is not None:
            # Taken once the link is up (its first jobs publish), given up before it goes.
            self._parts.insert(1, self.keeper)
        self._started: list[_Part] = []
        self.catch_up_interval_s = catch_up_interval_s
        self._stopping = threading.Event()
        self._catch_up_now = threading.Event()
        self._catching_up: threading.Thread | None = None
        self._lag_warned = False
        self.stored = 0  # events this process stored first (the others were re-sends)

    def holds_lease(self) -> bool:
        """Whether this process runs the store's jobs done once now (always, alone)."""
        return self.keeper is None or self.keeper.holds

    def _once(self, hook: StatusHook) -> StatusHook:
        """A status hook that only the lease holder runs (re-sends, code-pool refills)."""
        if self.keeper is None:
            return hook

        def gated(kiosk: str, status: Status) -> None:
            if self.holds_lease():
                hook(kiosk, status)

        gated.__qualname__ = getattr(hook, "__qualname__", "status hook")
        return gated

    def start(self) -> None:
        for part in self._parts:
            part.start()
            self._started.append(part)
        if self.keeper is None:
            self.catch_up()  # a worker catches up when it takes the lease (`_lease_taken`)
        self._stopping.clear()
        self._catching_up = threading.Thread(
            target=self._catch_up_loop, name="bridge-catch-up", daemon=True
        )
        self._catching_up.start()

    # -- one of several workers ----------------------------------------------------------

    def _lease_taken(self) -> None:
        """What a fresh start does, now that this worker runs the store's jobs: say online,
        announce, publish the figures, re-send to every kiosk what its last status says
        it lacks (and top up its code pools), and catch up (on the catch-up thread)."""
        if self.link.connected:
            self.ha.connected()
        self.stats.changed()
        try:
            kiosks = self.repo.kiosks(self.config.store)
        except Exception:
            log.exception("could not read the kiosks' last statuses")
            kiosks = []
        for k in kiosks:
            try:
                status = Status.model_validate(k.last_status)
            except ValueError:
                continue
            for hook in (self.commands.kiosk_reported, self.rewards.kiosk_reported):
                try:
                    hook(k.kiosk, status)
                except Exception:
                    log.exception("could not bring %s up to date", k.kiosk)
        self._catch_up_now.set()

    def _count_stored(self, _events: list[Event], new: set[str]) -> None:
        self.stored += len(new)

    def _lease_lost(self) -> None:
        """Another worker runs the jobs now; taking the lease again announces again."""
        self.ha.forget()

    def lag(self) -> dict[str, Any]:
        """This worker's ingest lag: events waiting (taken and not stored, stored and not
        through the after-commit hooks) and the age of the oldest, in seconds."""
        h = self.sink.health()
        ages = [a for a in (h["oldest_pending_s"], h["after_commit_oldest_s"]) if a is not None]
        return {
            "waiting": h["pending"] + h["after_commit_waiting"],
            "oldest_s": max(ages) if ages else None,
            "stored": self.stored,
        }

    def _heartbeat(self) -> None:
        """Every lease round: write this worker's lag, and warn while it is too high."""
        assert self.worker is not None
        lag = self.lag()
        oldest = lag["oldest_s"]
        if oldest is not None and oldest > LAG_WARN_S:
            if not self._lag_warned:
                log.warning(
                    "worker %s, store %s: ingest lag %.0fs (%d events waiting)",
                    self.worker,
                    self.config.store,
                    oldest,
                    lag["waiting"],
                )
            self._lag_warned = True
        elif self._lag_warned:
            log.info("worker %s, store %s: ingest caught up", self.worker, self.config.store)
            self._lag_warned = False
        beat(self.repo.engine, self.config.store, self.worker, lag)

    def _workers_lag(self) -> dict[str, Any]:
        """For the stats document: every live worker's ingest lag."""
        return {"workers": live_workers(self.repo.engine, self.config.store)}

    def catch_up(self) -> None:
        """Count what the ledger, the code pools and the activities' attendance missed in
        the last `CATCH_UP_DAYS`, and pass on redemptions the other doors were not told of
        (each event once, safe alongside the live hooks)."""
        since = datetime.now(UTC) - timedelta(days=CATCH_UP_DAYS)
        try:
            until = self._settled_before()
        except Exception:
            log.exception("could not read the other workers' lag: catching up later")
            return
        try:
            self.members.catch_up(since, until)
        except Exception:
            log.exception("could not check the ledger for missed member events")
        try:
            self.rewards.catch_up(since, until)
        except Exception:
            log.exception("could not check the code pools for missed events")
        try:
            self.activities.catch_up(since, until)
        except Exception:
            log.exception("could not check the activities for missed arrivals")
        try:
            self.coupons.catch_up(since, until)
        except Exception:
            log.exception("could not check for redemptions not passed on")

    def _settled_before(self) -> datetime:
        """Events received before this have been through the after-commit hooks of every
        live worker, or never will be (a crash): what the catch-up may count. Under a
        backlog it would otherwise count, one by one, the very events the hooks are
        about to count as a batch."""
        now = datetime.now(UTC)
        behind = [self.lag()["oldest_s"]]
        if self.worker is not None:
            behind += [
                (w.get("oldest_s") or 0.0) + float(w.get("seen_s") or 0.0)
                for name, w in live_workers(self.repo.engine, self.config.store).items()
                if name != self.worker
            ]
        ages = [a for a in behind if a is not None]
        if not ages:
            return now
        return now - timedelta(seconds=max(ages) + IN_FLIGHT_MARGIN_S)

    def _catch_up_loop(self) -> None:
        while not self._stopping.is_set():
            self._catch_up_now.wait(self.catch_up_interval_s)
            self._catch_up_now.clear()
            if not self._stopping.is_set() and self.holds_lease():
                self.catch_up()

    def stop(self) -> None:
        self._stopping.set()
        self._catch_up_now.set()
        if self._catching_up is not None:
            self._catching_up.join()
            self._catching_up = None
        while self._started:
            self._started.pop().stop()
        if self.worker is not None:
            try:
                forget(self.repo.engine, self.config.store, self.worker)
            except Exception:
                log.warning("could not remove worker %s's heartbeat", self.worker)

    def wait_ready(self, timeout: float | None = None) -> bool:
        """True once connected and subscribed (tests and start-up logging wait on this)."""
        return self.link.wait_subscribed(timeout)

    @property
    def ready(self) -> bool:
        return self.link.subscribed

    def health(self) -> dict[str, Any]:
        """`/health`'s verdict: "degraded", with the problems named, when the broker session
        is down, the ingest worker is not running, the database is down (the worker is
        waiting for it), or a message taken from the broker has waited longer than
        `max_wait_s` to be stored; "ok" otherwise. Ages and counts only, no data."""
        ingest = self.sink.health()
        connected = self.link.subscribed
        problems: list[str] = []
        if not connected:
            problems.append("broker session down: not connected and subscribed")
        if not ingest["running"]:
            problems.append("ingest worker not running")
        if ingest["database_down_s"] is not None:
            problems.append(
                f"database unavailable for {ingest['database_down_s']:.0f}s"
                f" ({ingest['database_error']}): the ingest is waiting for it"
            )
        oldest = ingest["oldest_pending_s"]
        if oldest is not None and oldest > self.max_wait_s:
            problems.append(
                f"a message taken {oldest:.0f}s ago is not stored yet"
                f" (more than {self.max_wait_s:.0f}s)"
            )
        body: dict[str, Any] = {
            "status": "degraded" if problems else "ok",
            "problems": problems,
            "mqtt_connected": connected,
            "ingest": ingest,
        }
        if self.keeper is not None:
            try:
                holder = holders(self.repo.engine).get(store_lease(self.config.store))
            except Exception:
                holder = None
            body["worker"] = {
                "name": self.worker,
                "holds_lease": self.holds_lease(),
                "lease_holder": holder,
                "lag": self.lag(),
            }
        return body
