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
from cloud_bridge.members import MemberService
from cloud_bridge.rewards import RewardService
from cloud_bridge.rules import CouponUsedElsewhere
from cloud_bridge.sink import EventSink
from cloud_bridge.stats import StatsPublisher
from o2o_protocol.mqtt import MqttLink

log = logging.getLogger(__name__)

#: At start, member events received this many days back that the ledger missed are
#: counted (`MemberService.catch_up`).
CATCH_UP_DAYS = 7
#: How often, while the bridge runs, it counts again what the ledger and pools missed.
CATCH_UP_INTERVAL_S = 300.0


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
        # Home Assistant: the store's device, the bridge's online state (ha.py).
        self.ha = HaAnnouncer(store)
        self.link = MqttLink(
            m,
            client_id=config.client_id(),
            session_expiry_s=m.session_expiry_s,
            manual_ack=True,
            shared_group=m.shared_group,
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
        )
        self.commands = CommandService(repo, store, self.link, limits=config.limits)
        self.members = MemberService(
            repo, store, self.commands, config.kiosks, settings=config.members
        )
        # Rewards and code pools (rewards.py): topped up on status, kept right by events.
        self.rewards = RewardService(repo, config, signing_key, self.commands)
        # Activities (activities.py): a ticket scanned at the door marks its sign-up.
        self.activities = ActivityService(repo, config, signing_key, self.commands)
        self.sink = EventSink(
            self.link,
            repo,
            store,
            after_stored=[
                CouponUsedElsewhere(repo, store, self.commands, config.kiosks),
                self.members.after_stored,
                self.rewards.after_stored,
                self.activities.after_stored,
            ],
            on_status=[self.commands.kiosk_reported, self.rewards.kiosk_reported],
            on_batch=self.stats.changed,
            max_batch=max_batch,
            limits=config.limits,
        )
        self._parts: list[_Part] = [self.link, self.ha, self.stats, self.sink]
        self._started: list[_Part] = []
        self.catch_up_interval_s = catch_up_interval_s
        self._stopping = threading.Event()
        self._catching_up: threading.Thread | None = None

    def start(self) -> None:
        for part in self._parts:
            part.start()
            self._started.append(part)
        self.catch_up()
        self._stopping.clear()
        self._catching_up = threading.Thread(
            target=self._catch_up_loop, name="bridge-catch-up", daemon=True
        )
        self._catching_up.start()

    def catch_up(self) -> None:
        """Count what the ledger, the code pools and the activities' attendance missed in
        the last `CATCH_UP_DAYS` (each event once, safe alongside the live hooks)."""
        since = datetime.now(UTC) - timedelta(days=CATCH_UP_DAYS)
        try:
            self.members.catch_up(since)
        except Exception:
            log.exception("could not check the ledger for missed member events")
        try:
            self.rewards.catch_up(since)
        except Exception:
            log.exception("could not check the code pools for missed events")
        try:
            self.activities.catch_up(since)
        except Exception:
            log.exception("could not check the activities for missed arrivals")

    def _catch_up_loop(self) -> None:
        while not self._stopping.wait(self.catch_up_interval_s):
            self.catch_up()

    def stop(self) -> None:
        self._stopping.set()
        if self._catching_up is not None:
            self._catching_up.join()
            self._catching_up = None
        while self._started:
            self._started.pop().stop()

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
        return {
            "status": "degraded" if problems else "ok",
            "problems": problems,
            "mqtt_connected": connected,
            "ingest": ingest,
        }
