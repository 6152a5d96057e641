"""`o2o-kiosk run`: the touch UI, wired to the camera, the decoder and `Kiosk`.

Threads: the camera captures in its own (`CameraThread`); a reader decodes frames and
drops codes still held up (`Kiosk.seen`); a worker records outcomes (scans, joins and
staff calls: disk I/O, relays); only the Kivy UI thread touches widgets, through
`Clock.schedule_once`. A slow disk, relay or decoder therefore never freezes the screen
a customer is looking at.

Environment: `O2O_UI_WINDOW=1024x600` runs in a window of that size instead of full
screen (development, tests); `O2O_UI_FONT` names a font file (see `kiosk.screens.fonts`).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import queue
import re
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any, TypeVar

from kiosk.app import Kiosk, Opening
from kiosk.config import KioskConfig
from kiosk.devices.camera import CameraError, CameraThread
from kiosk.devices.qr import QrDecoder
from kiosk.headless import REPLAY_FRAME_S
from kiosk.receipts import Receipt, receipt_for
from kiosk.screens.backend import PreorderView, StaffSnapshot, locker_views
from kiosk.screens.outcome import ERROR, LOADING, Outcome
from kiosk.store import Recorded

if TYPE_CHECKING:
    from kiosk.screens.app import KioskApp

log = logging.getLogger(__name__)

NO_DISPLAY = "o2o-kiosk: error: no display for the touch UI: set DISPLAY or use --headless"
NO_KIVY = (
    "o2o-kiosk: error: the touch UI needs Kivy: pip install 'o2o-kiosk[ui]', or use --headless"
)
WINDOW_ENV = "O2O_UI_WINDOW"
#: SDL video drivers that show something on a real screen. Without this list SDL falls
#: back to its "offscreen" driver and the kiosk would run with an invisible window.
SCREEN_DRIVERS = "x11,wayland,kmsdrm"
#: How far back "reprint last receipt" looks for an event that printed something.
REPRINT_SEARCH = 50

T = TypeVar("T")


def outcome_of(recorded: Recorded | Opening) -> Outcome:
    """What the screens need from a recorded scan, and nothing of the store."""
    if isinstance(recorded, Opening):
        return Outcome(LOADING, None, {"locker": recorded.locker, "order": recorded.order})
    reason = recorded.decision.reason
    return Outcome(
        event_type=recorded.event.type,
        reason=reason.value if reason is not None else None,
        data=dict(recorded.event.data),
    )


class ScanWorker:
    """Records scans, and runs the screens' other blocking calls (a join, a locker opened
    by staff, a reprint), off the UI thread, one at a time, in the order they arrive."""

    def __init__(self, kiosk: Kiosk, deliver: Callable[[Outcome], None]) -> None:
        self.kiosk = kiosk
        self.deliver = deliver
        self._inbox: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="scan-worker", daemon=True)

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    def start(self) -> None:
        self._thread.start()

    def submit(self, text: str) -> None:
        """Queue one scanned text (thread-safe): from the camera reader, or a test."""
        self._inbox.put(lambda: self._scan(text))

    def call(self, job: Callable[[], None]) -> None:
        """Queue any blocking job; it must catch its own errors and post its own result."""
        self._inbox.put(job)

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the jobs already queued (they may be on their way to disk), then stop."""
        if self._thread.is_alive():
            self._inbox.put(None)
            self._thread.join(timeout)

    def _scan(self, text: str) -> None:
        try:
            outcome = outcome_of(self.kiosk.handle_scan(text))
        except Exception:
            log.exception("could not record a scan")
            outcome = Outcome(ERROR)
        self.deliver(outcome)

    def _run(self) -> None:
        while (job := self._inbox.get()) is not None:
            try:
                job()
            except Exception:  # a job's own bug must not stop the scans behind it
                log.exception("a UI job failed")


class CameraReader:
    """Decodes camera frames and passes each new code (not one still held up) on."""

    def __init__(
        self,
        camera: CameraThread,
        seen: Callable[[str, float], bool],
        submit: Callable[[str], None],
        *,
        decoder: QrDecoder | None = None,
    ) -> None:
        self.camera = camera
        self.seen = seen
        self.submit = submit
        self.decoder = decoder or QrDecoder()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="camera-reader", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.camera.close()
        if self._thread.is_alive():
            self._thread.join(5)

    def _run(self) -> None:
        frames = 0
        while not self._stop.is_set():
            frame = self.camera.get(timeout=0.25)
            if frame is None:
                if self.camera.ended:
                    log.info("camera source ended after %d frames", frames)
                    return
                continue
            # Replayed files carry no capture times: space them like headless mode does.
            t = frames * REPLAY_FRAME_S if self.camera.finite else time.monotonic()
            frames += 1
            try:
                decoded = self.decoder.decode(frame)
            except Exception:
                log.exception("decoding a frame failed")
                continue
            for code in decoded:
                if self.seen(code.text, t):
                    self.submit(code.text)


class Session:
    """Everything behind the screen for one run; `stop` shuts it down in order, once.

    It is also the screens' `Backend`: each call runs on the worker thread and its answer
    comes back on the UI thread, so no screen ever waits on a disk, a relay or a printer.
    """

    def __init__(self, kiosk: Kiosk, app: KioskApp, camera: CameraThread | None) -> None:
        self.kiosk = kiosk
        self.app = app
        self.camera = camera

        def deliver(outcome: Outcome) -> None:
            self._post(app.show_outcome, outcome)

        self.worker = ScanWorker(kiosk, deliver)
        self.reader = (
            CameraReader(camera, kiosk.seen, self.worker.submit) if camera is not None else None
        )
        self._watch: Any = None
        self._stopped = False
        kiosk.add_listener(self._recorded)
        app.backend = self
        app.bind(on_start=lambda *_: self.start(), on_stop=lambda *_: self.stop())

    @staticmethod
    def _post(fn: Callable[[T], Any], value: T) -> None:
        from kivy.clock import Clock

        Clock.schedule_once(lambda _dt: fn(value))

    def submit(self, text: str) -> None:
        self.worker.submit(text)

    def _recorded(self, recorded: Recorded) -> None:
        """Outcomes recorded outside the worker (a door shut on a loaded order, a printer
        fault, a remote command) reach the screen here; the worker posts its own."""
        if threading.current_thread() is self.worker.thread:
            return
        self._post(self.app.show_background, outcome_of(recorded))

    # --- the screens' calls (Backend) ------------------------------------------------

    def join(self, phone: str, done: Callable[[Outcome | None], None]) -> None:
        """A member from a typed phone number. The number lives only in this closure:
        it is never logged, and the screen has already cleared it."""

        def job() -> None:
            result: Outcome | None
            try:
                recorded = self.kiosk.join(phone)
                result = None if recorded is None else outcome_of(recorded)
            except Exception as exc:  # the message might quote the input: log its type only
                log.error("could not record a join: %s", type(exc).__name__)
                result = Outcome(ERROR)
            self._post(done, result)

        self.worker.call(job)

    def staff_snapshot(self, done: Callable[[StaffSnapshot], None]) -> None:
        self.worker.call(lambda: self._post(done, self._snapshot()))

    def _snapshot(self) -> StaffSnapshot:
        kiosk = self.kiosk
        try:
            preorders = [PreorderView(p.order, p.name) for p in kiosk.store.preorders("pending")]
            lockers = locker_views(kiosk.store.locker_orders(), kiosk.lockers.status())
            outbox = kiosk.store.outbox_size()
        except Exception:
            log.exception("could not read the kiosk's state for the staff screen")
            preorders, lockers, outbox = [], [], -1
        return StaffSnapshot(
            active=kiosk.staff_active(),
            preorders=preorders,
            lockers=lockers,
            printer=str(kiosk.printer.status),
            camera=self.camera.state if self.camera is not None else "none",
            outbox=outbox,
            online=kiosk.sync.connected,
        )

    def staff_open(self, number: int, done: Callable[[Outcome], None]) -> None:
        def job() -> None:
            try:
                result = outcome_of(self.kiosk.staff_open(number))
            except Exception:
                log.exception("staff could not open locker %d", number)
                result = Outcome(ERROR)
            self._post(done, result)

        self.worker.call(job)

    def reprint(self, done: Callable[[str | None], None]) -> None:
        """Print the newest receipt again (paper jam, customer lost it); None if none."""

        def job() -> None:
            title = None
            try:
                receipt = self._last_receipt()
                if receipt is not None and self.kiosk.printer.submit(receipt):
                    title = receipt.title
            except Exception:
                log.exception("could not reprint the last receipt")
            self._post(done, title)

        self.worker.call(job)

    def _last_receipt(self) -> Receipt | None:
        cfg = self.kiosk.cfg
        for event in self.kiosk.store.history(REPRINT_SEARCH):
            receipt = receipt_for(
                str(event.get("type", "")),
                event.get("data") or {},
                language=cfg.ui.language,
                ts=event.get("ts"),
                next_visit_url=cfg.printer.next_visit_url or None,
            )
            if receipt is not None:
                return receipt
        return None

    def end_staff(self) -> None:
        """Staff left the staff screen: end staff mode now, so the next customer's pickup
        code opens their locker instead of starting a load."""
        # `Kiosk` has no logout verb yet; its session is this one deadline.
        self.kiosk.staff_logout()

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        from kivy.clock import Clock

        self.kiosk.start()
        self.worker.start()
        if self.reader is not None:
            self.reader.start()
            self._watch = Clock.schedule_interval(lambda _dt: self._watch_camera(), 1.0)

    def _watch_camera(self) -> None:
        if self.camera is not None:
            self.app.camera_problem = self.camera.state == "reopening"

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._watch is not None:
            self._watch.cancel()
        if self.reader is not None:
            self.reader.stop()  # closes the camera too
        elif self.camera is not None:
            self.camera.close()
        self.worker.stop()
        self.kiosk.stop()
        log.info("kiosk UI stopped")


def _prepare_kivy() -> None:
    """Kivy reads these at import: set them first, keeping whatever the user chose."""
    os.environ.setdefault("KIVY_NO_ARGS", "1")  # our command line is not Kivy's
    # Kivy's own mode takes over the root logger and sys.stderr; ours stays in charge.
    os.environ.setdefault("KIVY_LOG_MODE", "PYTHON")
    debug = logging.getLogger().getEffectiveLevel() <= logging.DEBUG
    os.environ.setdefault("KCFG_KIVY_LOG_LEVEL", "debug" if debug else "warning")
    if not debug:
        logging.getLogger("kivy").setLevel(logging.WARNING)
    os.environ.setdefault("KIVY_WINDOW", "sdl2")  # the x11 fallback prints and exits
    os.environ.setdefault("SDL_VIDEODRIVER", SCREEN_DRIVERS)
    logging.getLogger("kivy").addFilter(_quiet_window_failure)


def _quiet_window_failure(record: logging.LogRecord) -> bool:
    """Kivy logs a failed window as a critical message with tracebacks inside; we print
    one line instead, and keep the details for `-v`."""
    message = record.getMessage()
    if "Unable to find any valuable Window provider" in message:
        log.debug("%s", message)
        return False
    return True


def _configure_window() -> None:
    from kivy.config import Config

    Config.set("kivy", "exit_on_escape", "0")  # a keyboard left plugged in must not quit
    Config.set("input", "mouse", "mouse,disable_multitouch")
    size = os.environ.get(WINDOW_ENV, "")
    if match := re.fullmatch(r"(\d+)x(\d+)", size.strip()):
        Config.set("graphics", "fullscreen", "0")
        Config.set("graphics", "width", match.group(1))
        Config.set("graphics", "height", match.group(2))
    else:
        if size:
            log.warning("%s=%r is not WIDTHxHEIGHT; using the full screen", WINDOW_ENV, size)
        Config.set("graphics", "fullscreen", "auto")
        Config.set("graphics", "show_cursor", "0")


def open_window() -> bool:
    """Create Kivy's window (a process-wide singleton). False when there is no display."""
    _prepare_kivy()
    _configure_window()
    from kivy.core.window import Window

    if Window is None:
        return False
    from kiosk.screens.fonts import register_default_font

    register_default_font()
    return True


def create_app(kiosk: Kiosk, *, camera: CameraThread | None = None) -> tuple[KioskApp, Session]:
    """The app and what runs behind it; without a camera, feed texts to `Session.submit`.

    Call `open_window()` first. The session starts and stops with the app.
    """
    from kiosk.screens.app import KioskApp

    cfg = kiosk.cfg
    app = KioskApp(cfg.ui, store_label=f"{cfg.store} · {cfg.kiosk}")
    return app, Session(kiosk, app, camera)


def run_ui(cfg: KioskConfig, *, camera: str) -> int:
    """Run the touch UI until the window closes or SIGTERM/SIGINT. Returns the exit status."""
    if importlib.util.find_spec("kivy") is None:  # the optional `ui` extra
        print(NO_KIVY, file=sys.stderr)
        return 2
    if not open_window():
        print(NO_DISPLAY, file=sys.stderr)
        return 2
    try:
        camera_thread = CameraThread(camera)
    except CameraError as exc:
        print(f"o2o-kiosk: error: camera: {exc}", file=sys.stderr)
        return 2
    kiosk = Kiosk(cfg)
    kiosk.add_telemetry("camera", lambda: camera_thread.state)
    app, session = create_app(kiosk, camera=camera_thread)

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        from kivy.clock import Clock

        log.info("signal %d: stopping", signum)
        Clock.schedule_once(lambda _dt: app.stop())

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _on_signal)
    log.info(
        "kiosk %s/%s starting, camera %s, broker %s", cfg.store, cfg.kiosk, camera, cfg.mqtt.url
    )
    try:
        app.run()
    finally:
        session.stop()
    return 0
