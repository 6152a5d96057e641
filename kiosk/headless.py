"""`o2o-kiosk run --headless`: the kiosk without a screen, one JSON line per outcome.

The scan pipeline (`kiosk.pipeline`) does the scanning; this runner prints every
recorded outcome (including those recorded later, when a door shuts) as one JSON line,
only after it is on disk, so whatever reads stdout (a test, a supervisor, a shop's own
script) never sees a result a power cut could take back. See docs/cli.md.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import IO, Any

from kiosk.devices.camera import FrameSource
from kiosk.localdb import Recorded
from kiosk.pipeline import REOPEN_BACKOFF_S, ScanPipeline, ScanResult, camera_thread
from kiosk.runtime import KioskRuntime

log = logging.getLogger(__name__)


def outcome_line(recorded: Recorded) -> dict[str, Any]:
    event = recorded.event
    reason = recorded.decision.reason
    return {
        "event": event.id,
        "type": event.type,
        "reason": reason.value if reason else None,
        "seq": event.seq,
        "ts": event.ts,
        "data": event.data,
    }


def run_headless(
    kiosk: KioskRuntime,
    source: FrameSource,
    *,
    exit_at_end: bool,
    drain_timeout_s: float = 30.0,
    out: IO[str] = sys.stdout,
    reopen: Callable[[], FrameSource] | None = None,
    backoff: tuple[float, float] = REOPEN_BACKOFF_S,
    stop: threading.Event | None = None,
) -> int:
    """Scan until stopped (or, with `exit_at_end`, until a file source ends and the outbox
    has drained). Returns the process exit status.

    `reopen` and `backoff` say how a live source that fails is opened again (default:
    the same device, 0.5 s doubling to 10 s). Setting `stop` ends the run like SIGTERM
    does (for a caller that runs this off the main thread, where signals cannot reach it).
    """
    stop = stop or threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_signal)
        signal.signal(signal.SIGINT, _on_signal)

    printing = threading.Lock()

    def _print(recorded: Recorded) -> None:
        with printing:
            out.write(json.dumps(outcome_line(recorded), ensure_ascii=False) + "\n")
            out.flush()

    def _outcome(result: ScanResult) -> None:
        """Lines come from the listener (every outcome, once on disk), not from here."""

    camera = camera_thread(source, reopen=reopen, backoff=backoff)
    pipeline = ScanPipeline(kiosk, camera, on_outcome=_outcome, quiet_window_s=kiosk.quiet_window_s)
    kiosk.add_listener(_print)
    status = 0
    try:
        kiosk.start()
        pipeline.start()
        ended = pipeline.wait_camera_end(stop)
        if ended and exit_at_end and not stop.is_set():
            pipeline.drain(drain_timeout_s)
            if not kiosk.wait_idle(drain_timeout_s):
                log.warning("a locker door is still open; its outcome comes when it closes")
            log.info(
                "waiting up to %.0f s for %d events to reach the bridge",
                drain_timeout_s,
                kiosk.outbox_size(),
            )
            if not kiosk.wait_drained(drain_timeout_s):
                left = kiosk.outbox_size()
                log.warning("%d events not yet acked; they stay queued for the next run", left)
                status = 1
        elif ended and not exit_at_end:
            stop.wait()  # keep syncing (and reporting the camera state) until told to stop
    finally:
        pipeline.stop()
        kiosk.stop()
    return status
