"""The one scan pipeline both runners use: camera → decoder → quiet window → scan service.

Threads: the camera captures in its own (`CameraThread`: a live camera hands over only
its newest frame and is reopened with backoff; files deliver every frame); a reader
decodes frames and drops codes still held up (`QuietWindow`); a worker records each new
scan, and runs the runner's other blocking jobs (a join, a staff open, a reprint), one
at a time, in order. A runner chooses only where outcomes go (`on_outcome`) and how it
starts and stops. A `DBError` means nothing was recorded (`ScanFailed`, nothing shown
as done); any exception in one scan is logged and the door keeps working. The camera's
state is the `camera` field of the kiosk's retained MQTT status, whatever the runner.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from kiosk.devices.camera import CameraThread, CaptureSource, FrameSource, Picamera2Source
from kiosk.devices.camera import open_source as open_camera
from kiosk.devices.qr import QrDecoder
from kiosk.localdb import DBError, Recorded
from kiosk.lockerflows import Opening

log = logging.getLogger(__name__)

#: Replayed files carry no capture times: they are taken as frames this far apart.
REPLAY_FRAME_S = 0.1
#: First and longest wait between attempts to reopen a camera that disappeared.
REOPEN_BACKOFF_S = (0.5, 10.0)
#: How long the reader waits for a frame before checking for a stop request.
POLL_S = 0.25


@dataclass(frozen=True)
class ScanFailed:
    """A scan whose outcome could not be recorded: nothing happened, try again."""

    text: str
    error: str


ScanResult = Recorded | Opening | ScanFailed


class Scanner(Protocol):
    """What the pipeline needs of the kiosk (`KioskRuntime`)."""

    def scan(self, text: str) -> Recorded | Opening: ...

    def add_telemetry(self, key: str, source: Callable[[], object]) -> None: ...


class QuietWindow:
    """The same code held in front of the camera for seconds is one scan, not several.

    Keyed by the scanned text; a code counts again once it has been out of sight for
    `window_s`. Times are the frames' capture times, so replays behave like live cameras.
    """

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._last_seen: dict[str, float] = {}

    def is_new(self, text: str, t: float) -> bool:
        last = self._last_seen.get(text)
        self._last_seen[text] = t
        if len(self._last_seen) > 256:
            cutoff = t - self.window_s
            self._last_seen = {k: v for k, v in self._last_seen.items() if v >= cutoff}
        return last is None or t - last > self.window_s


def camera_thread(
    source: FrameSource,
    *,
    reopen: Callable[[], FrameSource] | None = None,
    backoff: tuple[float, float] = REOPEN_BACKOFF_S,
) -> CameraThread:
    """Capture the already open `source` in its own thread; a live one is reopened with
    `reopen` (by default the same device) when it fails. The device is opened once."""
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
        return reopen() if reopen is not None else open_camera(spec)

    return CameraThread(spec or "camera", opener=opener, backoff=backoff)


def _spec_of(source: FrameSource) -> str | None:
    """The `--camera` spec that opens `source` again, when it is one we know."""
    if isinstance(source, Picamera2Source):
        return "picamera2"
    if isinstance(source, CaptureSource):
        return str(source.target)
    return None


class ScanPipeline:
    """Camera frames in, one `on_outcome(result)` per new scan out (on the worker thread).

    Without a camera, texts come in through `submit` only (tests, a keyboard scanner).
    """

    def __init__(
        self,
        kiosk: Scanner,
        camera: CameraThread | None,
        *,
        on_outcome: Callable[[ScanResult], None],
        quiet_window_s: float,
        decoder: QrDecoder | None = None,
    ) -> None:
        self.kiosk = kiosk
        self.camera = camera
        self.on_outcome = on_outcome
        self.quiet = QuietWindow(quiet_window_s)
        self.decoder = decoder or QrDecoder()
        self.frames = 0
        self._stop = threading.Event()
        self._jobs: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._worker = threading.Thread(target=self._work, name="scan-worker", daemon=True)
        self._reader = threading.Thread(target=self._read, name="camera-reader", daemon=True)
        if camera is not None:
            kiosk.add_telemetry("camera", lambda: camera.state)

    @property
    def camera_state(self) -> str:
        return self.camera.state if self.camera is not None else "none"

    @property
    def worker(self) -> threading.Thread:
        return self._worker

    def start(self) -> None:
        self._worker.start()
        if self.camera is not None:
            self._reader.start()

    def submit(self, text: str) -> None:
        """Queue one scanned text (thread-safe), as if the camera had just seen it."""
        self._jobs.put(lambda: self._scan(text))

    def call(self, job: Callable[[], None]) -> None:
        """Queue any blocking job behind the scans; it posts its own result."""
        self._jobs.put(job)

    def wait_camera_end(self, stop: threading.Event, poll_s: float = POLL_S) -> bool:
        """Block until the camera ends (True: a file used up, or a live one lost for good)
        or `stop` is set (False). Without a camera, until `stop`."""
        while not stop.wait(poll_s):
            if self.camera is not None and not self._reader.is_alive():
                return True
        return False

    def drain(self, timeout: float = 30.0) -> bool:
        """Wait until every scan seen so far is recorded (the reader is done first)."""
        if self._reader.is_alive():
            self._reader.join(timeout)
        done = threading.Event()
        self._jobs.put(done.set)
        return done.wait(timeout) if self._worker.is_alive() else True

    def stop(self, timeout: float = 10.0) -> None:
        """Stop reading, close the camera, finish the jobs already queued (they may be on
        their way to disk), then stop. Safe to call twice."""
        self._stop.set()
        if self.camera is not None:
            self.camera.close()
        if self._reader.is_alive():
            self._reader.join(5)
        if self._worker.is_alive():
            self._jobs.put(None)
            self._worker.join(timeout)

    # --- threads -----------------------------------------------------------------------

    def _read(self) -> None:
        camera = self.camera
        assert camera is not None
        while not self._stop.is_set():
            frame = camera.get(timeout=POLL_S)
            if frame is None:
                if camera.ended:
                    break  # a file source is used up, or a live one could not be reopened
                continue
            t = self.frames * REPLAY_FRAME_S if camera.finite else time.monotonic()
            self.frames += 1
            try:
                decoded = self.decoder.decode(frame)
            except Exception:
                log.exception("decoding a frame failed")
                continue
            for code in decoded:
                if self.quiet.is_new(code.text, t):
                    self.submit(code.text)
        if camera.finite:
            log.info("camera source ended after %d frames", self.frames)
        elif not self._stop.is_set():
            log.error("camera stopped after %d frames and cannot be reopened", self.frames)

    def _scan(self, text: str) -> None:
        result: ScanResult
        try:
            result = self.kiosk.scan(text)
        except DBError as exc:
            # Nothing was recorded, so nothing is shown as done; the next scan may succeed.
            log.error("scan not recorded: %s", exc)
            result = ScanFailed(text, str(exc))
        except Exception as exc:  # one bad scan must never take the door down
            log.exception("scan failed")
            result = ScanFailed(text, type(exc).__name__)
        if isinstance(result, Opening):
            # Staff loading a locker: `locker.loaded` is recorded when it closes.
            log.info("locker %d open to load order %s", result.locker, result.order)
        self.on_outcome(result)

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                job()
            except Exception:  # a job's own bug must not stop the scans behind it
                log.exception("a queued job failed")
