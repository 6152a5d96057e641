"""`o2o-kiosk run --headless`: the kiosk without a screen, one JSON line per outcome.

Frames come from the camera source, codes from the decoder, outcomes from `Kiosk`; each
line is printed only after its outcome is on disk, so whatever reads stdout (a test, a
supervisor, a shop's own script) never sees a result a power cut could take back.

Capture runs in a :class:`CameraThread`: a live camera hands over only its newest frame
(a decoder that falls behind skips frames instead of working through a stale backlog),
is reopened with backoff when it disappears, and its state (``ok``, ``reopening``,
``closed``) is the ``camera`` field of the kiosk's retained MQTT status. Files and
directories still deliver every frame, so replayed sessions stay deterministic.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import IO, Any

from kiosk.app import Kiosk, Opening
from kiosk.devices.camera import (
    CameraThread,
    CaptureSource,
    FrameSource,
    Picamera2Source,
    open_source,
)
from kiosk.devices.qr import QrDecoder
from kiosk.store import Recorded, StoreError

log = logging.getLogger(__name__)

#: Replayed files carry no capture times: they are taken as frames this far apart.
REPLAY_FRAME_S = 0.1
#: First and longest wait between attempts to reopen a camera that disappeared.
REOPEN_BACKOFF_S = (0.5, 10.0)
#: How long the scan loop waits for a frame before checking for a stop request.
POLL_S = 0.25


def camera_thread(
    source: FrameSource,
    *,
    reopen: Callable[[], FrameSource] | None = None,
    backoff: tuple[float, float] = REOPEN_BACKOFF_S,
) -> CameraThread:
    """Capture ``source`` in its own thread; a live one is reopened with ``reopen`` (by
    default the same device through :func:`open_source`) when it fails."""
    if source.finite:
        return CameraThread(source)
    spec = _spec_of(source)
    if reopen is None and spec is None:
        log.warning("camera %r cannot be reopened if it fails", source)
        return CameraThread(source, backoff=backoff)
    first: list[FrameSource] = [source]

    def opener(spec: str) -> FrameSource:
        if first:  # the already open source, so the device is not opened twice
            return first.pop()
        return reopen() if reopen is not None else open_source(spec)

    return CameraThread(spec or "camera", opener=opener, backoff=backoff)


def _spec_of(source: FrameSource) -> str | None:
    """The ``--camera`` spec that opens ``source`` again, when it is one we know."""
    if isinstance(source, Picamera2Source):
        return "picamera2"
    if isinstance(source, CaptureSource):
        return str(source.target)
    return None


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
    reopen: Callable[[], FrameSource] | None = None,
    backoff: tuple[float, float] = REOPEN_BACKOFF_S,
    stop: threading.Event | None = None,
) -> int:
    """Scan until stopped (or, with `exit_at_end`, until a file source ends and the outbox
    has drained). Returns the process exit status.

    ``reopen`` and ``backoff`` say how a live source that fails is opened again (default:
    the same device, 0.5 s doubling to 10 s). Setting ``stop`` ends the run like SIGTERM
    does (for a caller that runs this off the main thread, where signals cannot reach it).
    """
    stop = stop or threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_signal)
        signal.signal(signal.SIGINT, _on_signal)

    decoder = QrDecoder()
    camera = camera_thread(source, reopen=reopen, backoff=backoff)
    kiosk.add_telemetry("camera", lambda: camera.state)
    printing = threading.Lock()

    def _print(recorded: Recorded) -> None:
        # Every outcome, including those recorded later by a door closing, once on disk.
        with printing:
            out.write(json.dumps(outcome_line(recorded), ensure_ascii=False) + "\n")
            out.flush()

    kiosk.add_listener(_print)
    kiosk.start()
    frames = 0
    status = 0
    try:
        while not stop.is_set():
            frame = camera.get(timeout=POLL_S)
            if frame is None:
                if camera.ended:
                    break  # a file source is used up, or a live one could not be reopened
                continue
            t = frames * REPLAY_FRAME_S if camera.finite else time.monotonic()
            frames += 1
            for decoded in decoder.decode(frame):
                if not kiosk.seen(decoded.text, t):
                    continue
                try:
                    outcome = kiosk.handle_scan(decoded.text)
                except StoreError as exc:
                    # Nothing was recorded, so nothing is shown; the next scan may succeed.
                    log.error("scan not recorded: %s", exc)
                    continue
                except Exception:  # one bad scan must never take the door down
                    log.exception("scan failed")
                    continue
                if isinstance(outcome, Opening):
                    # Staff loading a locker: `locker.loaded` is recorded when it closes.
                    log.info("locker %d open to load order %s", outcome.locker, outcome.order)
        if camera.finite:
            log.info("camera source ended after %d frames", frames)
        elif not stop.is_set():
            log.error("camera stopped after %d frames and cannot be reopened", frames)
        if exit_at_end and not stop.is_set():
            if not kiosk.wait_idle(drain_timeout_s):
                log.warning("a locker door is still open; its outcome comes when it closes")
            pending = kiosk.store.outbox_size()
            log.info(
                "waiting up to %.0f s for %d events to reach the bridge", drain_timeout_s, pending
            )
            if not kiosk.sync.wait_drained(drain_timeout_s):
                left = kiosk.store.outbox_size()
                log.warning("%d events not yet acked; they stay queued for the next run", left)
                status = 1
        elif not exit_at_end:
            stop.wait()  # keep syncing (and reporting the camera state) until told to stop
    finally:
        camera.close()
        kiosk.stop()
    return status
