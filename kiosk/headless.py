"""`o2o-kiosk run --headless`: the kiosk without a screen, one JSON line per outcome.

Frames come from the camera source, codes from the decoder, outcomes from `Kiosk`; each
line is printed only after its outcome is on disk, so whatever reads stdout (a test, a
supervisor, a shop's own script) never sees a result a power cut could take back.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from types import FrameType
from typing import IO, Any

from kiosk.app import Kiosk
from kiosk.devices.camera import FrameSource
from kiosk.devices.qr import QrDecoder
from kiosk.store import Recorded

log = logging.getLogger(__name__)

#: Replayed files carry no capture times: they are taken as frames this far apart.
REPLAY_FRAME_S = 0.1


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
    kiosk: Kiosk,
    source: FrameSource,
    *,
    exit_at_end: bool,
    drain_timeout_s: float = 30.0,
    out: IO[str] = sys.stdout,
) -> int:
    """Scan until stopped (or, with `exit_at_end`, until a file source ends and the outbox
    has drained). Returns the process exit status."""
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_signal)
        signal.signal(signal.SIGINT, _on_signal)

    decoder = QrDecoder()
    kiosk.start()
    frames = 0
    status = 0
    try:
        while not stop.is_set():
            frame = source.read()
            if frame is None:
                if source.finite:
                    break
                time.sleep(0.05)
                continue
            t = frames * REPLAY_FRAME_S if source.finite else time.monotonic()
            frames += 1
            for decoded in decoder.decode(frame):
                if not kiosk.seen(decoded.text, t):
                    continue
                recorded = kiosk.handle_scan(decoded.text)
                out.write(json.dumps(outcome_line(recorded), ensure_ascii=False) + "\n")
                out.flush()
        log.info("camera source ended after %d frames", frames)
        if exit_at_end and not stop.is_set():
            pending = kiosk.store.outbox_size()
            log.info(
                "waiting up to %.0f s for %d events to reach the bridge", drain_timeout_s, pending
            )
            if not kiosk.sync.wait_drained(drain_timeout_s):
                left = kiosk.store.outbox_size()
                log.warning("%d events not yet acked; they stay queued for the next run", left)
                status = 1
        elif not exit_at_end:
            stop.wait()
    finally:
        source.close()
        kiosk.stop()
    return status
