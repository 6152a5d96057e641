"""Leases in the database: among the workers of one service, one runs each store's jobs.

Several workers (`o2o-bridge run --worker NAME`) split a store's ingest through a shared
subscription; the jobs that must run once (the stats document, Home Assistant discovery,
command re-sends and code-pool refills on a kiosk's status, the periodic catch-up) run
only on the worker holding the store's lease. A lease is one row of `leases`, taken or
renewed by one atomic statement (an upsert that only writes when the row is this
worker's or has expired), so two workers never both hold it.

Timing: a lease lasts `LEASE_TTL_S` and its holder renews it every `RENEW_S`. A holder
that cannot renew (the database is down, another worker took it) stops its jobs at once,
and in any case once its own copy of the expiry has passed, whatever its thread is
doing. When a holder dies without a word (SIGKILL, a power cut), another worker takes the
lease within `LEASE_TTL_S + RENEW_S` (6 s); one that stops cleanly gives it up, and the
next worker takes it within `RENEW_S`. Expiry is in Unix time from each worker's clock:
workers on several machines need their clocks in step (NTP keeps them within
milliseconds, far below the TTL).

Each worker also writes a heartbeat per store (`workers`: when, and its ingest lag), which
the holder puts in the store's stats document.

The stores spread over the workers: a worker holding more than its share of the leases
(their number over the live workers', rounded up) gives one up every `YIELD_PAUSE_S` and
leaves it alone for as long, so another worker takes it. The first worker up takes every
lease; those that start later get their share within seconds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine, delete, select
from sqlalchemy.dialects import postgresql, sqlite

from cloud_bridge.db import one_line
from cloud_bridge.db.tables import LeaseRow, WorkerRow

log = logging.getLogger(__name__)

#: How long a lease lasts without renewal (seconds).
LEASE_TTL_S = 5.0
#: How often its holder renews it, and a worker without it tries to take it.
RENEW_S = 1.0
#: A worker whose heartbeat is older than this is no longer counted as live.
WORKER_GONE_S = 3 * LEASE_TTL_S
#: A worker counts towards the share of leases while its heartbeat is this recent.
SHARING_S = 3 * RENEW_S
#: How often one process gives up a lease over its share, and how long it then leaves it.
YIELD_PAUSE_S = 3 * RENEW_S

_yields: dict[str, float] = {}  # holder: when this process last gave a lease up
_yields_lock = threading.Lock()


def store_lease(store: str) -> str:
    """The name of a store's lease."""
    return f"store:{store}"


class Lease:
    """One named lease as `holder` sees it: `acquire()` takes or renews it atomically."""

    def __init__(self, engine: Engine, name: str, holder: str, *, ttl_s: float = LEASE_TTL_S):
        self.engine = engine
        self.name = name
        self.holder = holder
        self.ttl_s = ttl_s
        self._insert = sqlite.insert if engine.dialect.name == "sqlite" else postgresql.insert

    def acquire(self, now: float | None = None) -> bool:
        """Take the lease if it is free or expired, renew it if it is ours: True if we hold
        it for `ttl_s` from `now`. One statement, so two workers never both succeed."""
        now = time.time() if now is None else now
        stmt = self._insert(LeaseRow).values(
            name=self.name, holder=self.holder, expires_at=now + self.ttl_s
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=[LeaseRow.name],
            set_={"holder": stmt.excluded.holder, "expires_at": stmt.excluded.expires_at},
            where=(LeaseRow.holder == stmt.excluded.holder) | (LeaseRow.expires_at < now),
        )
        # RETURNING, not the row count: drivers differ on the count of an upsert that
        # wrote nothing (psycopg reports one).
        with self.engine.begin() as conn:
            return conn.execute(stmt.returning(LeaseRow.holder)).first() is not None

    def release(self) -> None:
        """Give the lease up (if ours), so another worker takes it at its next try."""
        with self.engine.begin() as conn:
            conn.execute(
                delete(LeaseRow).where(LeaseRow.name == self.name, LeaseRow.holder == self.holder)
            )


def holders(engine: Engine, now: float | None = None) -> dict[str, str | None]:
    """Every lease's holder (None: expired, free for the taking), by name."""
    now = time.time() if now is None else now
    with engine.connect() as conn:
        rows = conn.execute(select(LeaseRow.name, LeaseRow.holder, LeaseRow.expires_at)).all()
    return {name: (holder if expires > now else None) for name, holder, expires in rows}


def beat(engine: Engine, store: str, worker: str, lag: dict[str, Any]) -> None:
    """Write this worker's heartbeat for a store, with its ingest lag."""
    insert = sqlite.insert if engine.dialect.name == "sqlite" else postgresql.insert
    stmt = insert(WorkerRow).values(store=store, worker=worker, seen_at=time.time(), lag=lag)
    stmt = stmt.on_conflict_do_update(
        index_elements=[WorkerRow.store, WorkerRow.worker],
        set_={"seen_at": stmt.excluded.seen_at, "lag": stmt.excluded.lag},
    )
    with engine.begin() as conn:
        conn.execute(stmt)


def forget(engine: Engine, store: str, worker: str) -> None:
    """A worker that stops cleanly is no longer one of the live ones."""
    with engine.begin() as conn:
        conn.execute(delete(WorkerRow).where(WorkerRow.store == store, WorkerRow.worker == worker))


def live_workers(engine: Engine, store: str, now: float | None = None) -> dict[str, Any]:
    """The live workers of a store (heartbeat within `WORKER_GONE_S`): each one's lag and
    how long ago it was seen."""
    now = time.time() if now is None else now
    stmt = select(WorkerRow.worker, WorkerRow.seen_at, WorkerRow.lag).where(
        WorkerRow.store == store, WorkerRow.seen_at > now - WORKER_GONE_S
    )
    with engine.connect() as conn:
        rows = conn.execute(stmt.order_by(WorkerRow.worker)).all()
    return {w: {**lag, "seen_s": round(max(0.0, now - seen), 1)} for w, seen, lag in rows}


def over_share(engine: Engine, holder: str, now: float | None = None) -> bool:
    """Whether `holder` holds more leases than its share among the live workers."""
    now = time.time() if now is None else now
    with engine.connect() as conn:
        leases = conn.execute(select(LeaseRow.holder, LeaseRow.expires_at)).all()
        live = conn.execute(
            select(WorkerRow.worker).where(WorkerRow.seen_at > now - SHARING_S).distinct()
        ).all()
    workers = {w for (w,) in live} | {holder}
    share = -(-len(leases) // len(workers))  # rounded up
    mine = sum(1 for h, expires in leases if h == holder and expires > now)
    return mine > share


def _may_yield(holder: str) -> bool:
    """One lease given up per process every `YIELD_PAUSE_S`: the others see the change
    before the next (all of a process's stores giving theirs up at once would overshoot)."""
    now = time.monotonic()
    with _yields_lock:
        if now - _yields.get(holder, -YIELD_PAUSE_S) < YIELD_PAUSE_S:
            return False
        _yields[holder] = now
        return True


class LeaseKeeper:
    """Keeps a lease on its own thread: tries every `renew_s`; `holds` says whether this
    worker may run the jobs now. `on_gain` runs when the lease is taken (do what a fresh
    start does), `on_loss` when it is lost; `heartbeat` runs on every round."""

    def __init__(
        self,
        lease: Lease,
        *,
        renew_s: float = RENEW_S,
        on_gain: Callable[[], None] | None = None,
        on_loss: Callable[[], None] | None = None,
        heartbeat: Callable[[], None] | None = None,
        balance: bool = False,
    ) -> None:
        """`balance`: give the lease up when this worker holds more than its share."""
        self.lease = lease
        self.balance = balance
        self._resting_until = 0.0  # monotonic: a lease given up is left alone until then
        self.renew_s = renew_s
        self._on_gain = on_gain
        self._on_loss = on_loss
        self._heartbeat = heartbeat
        self._held = False
        self._deadline = 0.0  # monotonic: past it, the lease may be another's
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    @property
    def holds(self) -> bool:
        """This worker holds the lease now (and its own copy of the expiry has not passed)."""
        return self._held and time.monotonic() < self._deadline

    def start(self) -> None:
        self._stopping.clear()
        self._round()  # the first worker up runs the jobs from its first second
        self._thread = threading.Thread(
            target=self._run, name=f"lease-{self.lease.name}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop renewing and give the lease up, so another worker takes it at once."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        was = self._held
        self._held = False
        try:
            self.lease.release()
        except Exception as exc:
            log.warning("could not give up lease %s: %s", self.lease.name, one_line(exc))
        if was and self._on_loss is not None:
            self._call(self._on_loss)

    def _run(self) -> None:
        while not self._stopping.wait(self.renew_s):
            self._round()

    def _round(self) -> None:
        started = time.monotonic()
        if started < self._resting_until:
            if self._heartbeat is not None:
                self._call(self._heartbeat)
            return
        if self._held and self.balance and self._give_up_for_balance():
            if self._heartbeat is not None:
                self._call(self._heartbeat)
            return
        try:
            ok = self.lease.acquire()
        except Exception as exc:
            ok = False
            if not self._failing:
                log.warning("could not renew lease %s: %s", self.lease.name, one_line(exc))
            self._failing = True
        else:
            self._failing = False
        if ok:
            self._deadline = started + self.lease.ttl_s
            if not self._held:
                self._held = True
                log.info("worker %s took lease %s", self.lease.holder, self.lease.name)
                if self._on_gain is not None:
                    self._call(self._on_gain)
        elif self._held:
            self._held = False
            log.warning("worker %s lost lease %s", self.lease.holder, self.lease.name)
            if self._on_loss is not None:
                self._call(self._on_loss)
        if self._heartbeat is not None:
            self._call(self._heartbeat)

    def _give_up_for_balance(self) -> bool:
        """Give the lease up if this worker holds more than its share (one a round)."""
        holder = self.lease.holder
        try:
            if not over_share(self.lease.engine, holder) or not _may_yield(holder):
                return False
        except Exception as exc:
            log.warning("could not count the leases: %s", one_line(exc))
            return False
        self._held = False  # the jobs stop before another worker may start them
        try:
            self.lease.release()
        except Exception as exc:
            self._held = True  # still ours, until its expiry
            log.warning("could not give up lease %s: %s", self.lease.name, one_line(exc))
            return False
        self._resting_until = time.monotonic() + YIELD_PAUSE_S
        log.info("worker %s gave up lease %s to another worker", holder, self.lease.name)
        if self._on_loss is not None:
            self._call(self._on_loss)
        return True

    @staticmethod
    def _call(work: Callable[[], None]) -> None:
        try:
            work()
        except Exception:
            log.exception("%s failed", getattr(work, "__qualname__", work))
