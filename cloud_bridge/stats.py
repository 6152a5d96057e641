"""Today's figures on `o2o/v1/{store}/stats`, retained, for any MQTT dashboard.

Published soon after events are stored (at most once per `interval_s`, so a backlog does
not publish thousands of times), and at least every `refresh_s` anyway, which also rolls
the figures over at midnight. See docs/mqtt.md. Working the figures out reads today's
events: on a day of tens of thousands of them (a load test, a chain's busiest store)
that takes a while, so the spacing also grows to `COST_SHARE` times what the last one
took, and the figures never take more than a tenth of the database's time.

Among several workers (`leases.py`), only the holder of the store's lease publishes, and
it cannot see the batches the others store: it publishes every `interval_s` (`every`), and
the document also carries every live worker's ingest lag (`extra`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import tzinfo
from typing import Any

from cloud_bridge.db import Repository
from o2o_protocol.messages import dumps
from o2o_protocol.mqtt import MqttLink
from o2o_protocol.topics import stats_topic

log = logging.getLogger(__name__)

#: Figures are worked out at most once per this many times their last cost.
COST_SHARE = 10.0


class StatsPublisher:
    """`changed()` after each stored batch; `stop()` publishes the last figures."""

    def __init__(
        self,
        link: MqttLink,
        repo: Repository,
        store: str,
        *,
        interval_s: float = 1.0,
        refresh_s: float = 60.0,
        zone: tzinfo | None = None,
        active: Callable[[], bool] | None = None,
        extra: Callable[[], dict[str, Any]] | None = None,
        every: bool = False,
    ) -> None:
        """`zone`: the shop's time zone, whose day the figures count (None: the machine's);
        `active`: whether this process publishes now (None: always); `extra`: more keys
        for the document; `every`: publish every `interval_s`, changed or not."""
        self.active = active
        self.extra = extra
        self.every = every
        self.zone = zone
        self.link = link
        self.repo = repo
        self.store = store
        self.interval_s = interval_s
        #: The spacing now: `interval_s`, or more while the figures are slow to work out.
        self.spacing_s = interval_s
        self.refresh_s = refresh_s
        self._wake = threading.Condition()
        self._dirty = True
        self._last = 0.0
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="bridge-stats", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    def changed(self) -> None:
        """The figures may have changed: publish them soon."""
        with self._wake:
            self._dirty = True
            self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                if self._stopping:
                    break
                self._wake.wait(self._wait())
                if self._stopping:
                    break
            self._maybe_publish()
        self._maybe_publish(force=True)

    def _maybe_publish(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if now - self._last >= self.refresh_s or self.every:
            self._dirty = True
        if not self._dirty or (not force and now - self._last < self.spacing_s):
            return
        self.publish()

    def _wait(self) -> float:
        if self._dirty or self.every:
            return max(0.05, self._last + self.spacing_s - time.monotonic())
        return 0.5

    def publish(self) -> None:
        """Publish today's figures, retained (not while another worker holds the lease)."""
        self._last = time.monotonic()
        if self.active is not None and not self.active():
            return
        self._dirty = False
        try:
            stats = self.repo.today_stats(self.store, zone=self.zone)
            if self.extra is not None:
                stats.update(self.extra())
        except Exception:
            log.exception("could not compute today's figures")
            return
        finally:
            cost = time.monotonic() - self._last
            self.spacing_s = max(self.interval_s, min(self.refresh_s, COST_SHARE * cost))
        self.link.publish(stats_topic(self.store), dumps(stats), qos=1, retain=True)
