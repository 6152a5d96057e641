"""The kiosk application object: wires the store, the decisions and sync together.

Screens and the headless runner both talk to `Kiosk` only; it owns no widgets and no
camera, so the same path from scanned text to durable outcome serves both.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from kiosk import __version__
from kiosk.config import KioskConfig
from kiosk.decisions import Facts, QuietWindow, Rules, decide
from kiosk.store import KioskStore, Recorded
from kiosk.sync import Sync
from o2o_protocol.codes import Rejected, verify_code
from o2o_protocol.timeutil import local_day

log = logging.getLogger(__name__)


class Kiosk:
    """One kiosk: `handle_scan(text)` turns a scanned text into a recorded outcome."""

    def __init__(
        self,
        cfg: KioskConfig,
        *,
        store: KioskStore | None = None,
        sync: Sync | None = None,
        clock: Callable[[], float] = time.time,
        telemetry: Callable[[], dict[str, Any]] = dict,
    ) -> None:
        self.cfg = cfg
        self.clock = clock
        self.keys = cfg.public_keys()
        self.rules = Rules(
            points_per_visit=cfg.rules.points_per_visit,
            once_per_day=cfg.rules.once_per_day,
            reservation_early_min=cfg.rules.reservation_early_min,
            reservation_late_min=cfg.rules.reservation_late_min,
        )
        self.store = store or KioskStore(cfg.data_dir, store=cfg.store, kiosk=cfg.kiosk)
        self.sync = sync or Sync(cfg.mqtt, self.store, version=__version__, telemetry=telemetry)
        self.quiet = QuietWindow(cfg.rules.quiet_window_s)

    def start(self) -> None:
        self.sync.start()

    def stop(self) -> None:
        self.sync.stop()
        self.store.close()

    def seen(self, text: str, t: float) -> bool:
        """True when this text is a new scan (not the same code still held up)."""
        return self.quiet.is_new(text, t)

    def handle_scan(self, text: str) -> Recorded:
        """Verify, decide, record durably, then wake sync. Returns only once on disk."""
        now = self.clock()
        result = verify_code(text, self.keys, store=self.cfg.store, now=now)
        facts = Facts() if isinstance(result, Rejected) else self.store.facts_for(result)
        decision = decide(
            result,
            facts,
            self.rules,
            now=now,
            today=local_day(now),
            text=text,
        )
        recorded = self.store.record(decision, now)
        self.sync.notify()
        log.info(
            "scan -> %s%s (event %s)",
            decision.event_type.value,
            f" ({decision.reason.value})" if decision.reason else "",
            recorded.event.id,
        )
        return recorded
