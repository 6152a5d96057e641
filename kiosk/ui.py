"""`o2o-kiosk run`: the touch UI, wired to the scan pipeline and the kiosk runtime.

Threads: the scan pipeline (`kiosk.pipeline`) captures, decodes and records off the UI
thread, and also runs the screens' other blocking calls (joins, staff opens, reprints);
only the Kivy UI thread touches widgets, through `Clock.schedule_once`. A slow disk,
relay or decoder therefore never freezes the screen a customer is looking at.

Environment: `O2O_UI_WINDOW=1024x600` runs in a window of that size instead of full
screen (development, tests); `O2O_UI_FONT` names a font file (see `kiosk.screens.fonts`).

Full screen under X: SDL asks the window manager for it, and with none (a kiosk's bare X
server) the window stays at Kivy's default 800x600, partly off screen. So under X the
window is a borderless one of the display's size at its top-left corner instead.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, TypeVar

from kiosk.config import KioskConfig
from kiosk.devices.camera import CameraThread, FrameSource
from kiosk.localdb import Recorded
from kiosk.lockerflows import Opening
from kiosk.loyalty import MemberOffer, RatingSubject
from kiosk.pipeline import ScanFailed, ScanPipeline, ScanResult, camera_thread
from kiosk.runtime import KioskRuntime
from kiosk.screens.backend import PreorderView, StaffSnapshot, locker_views
from kiosk.screens.outcome import ERROR, LOADING, Outcome

if TYPE_CHECKING:
    from kiosk.screens.app import KioskApp

log = logging.getLogger(__name__)

NO_DISPLAY = "o2o-kiosk: error: no display for the touch UI: set DISPLAY or use --headless"
NO_KIVY = (
    "o2o-kiosk: error: the touch UI needs Kivy: pip install 'o2o-kiosk[kiosk]', or use --headless"
)
WINDOW_ENV = "O2O_UI_WINDOW"
#: SDL video drivers that show something on a real screen. Without this list SDL falls
#: back to its "offscreen" driver and the kiosk would run with an invisible window.
SCREEN_DRIVERS = "x11,wayland,kmsdrm"
#: Kivy's image loaders to use: SDL2_image reads every image the screens show (Kivy's own
#: atlases, the sign-up QR's PNG). Kivy's default list also imports Pillow (its fallback
#: loader), about 4.5 MB of the UI process for nothing.
IMAGE_PROVIDERS = "tex,dds,sdl2"

T = TypeVar("T")


def outcome_of(result: ScanResult) -> Outcome:
    """What the screens need from a scan's result, and nothing of the database."""
    if isinstance(result, ScanFailed):
        return Outcome(ERROR)
    if isinstance(result, Opening):
        return Outcome(LOADING, None, {"locker": result.locker, "order": result.order})
    reason = result.decision.reason
    return Outcome(
        event_type=result.event.type,
        reason=reason.value if reason is not None else None,
        data=dict(result.event.data),
        event_id=result.event.id,
    )


class Session:
    """Everything behind the screen for one run; `stop` shuts it down in order, once.

    It is also the screens' `Backend`: each call runs on the pipeline's worker thread and
    its answer comes back on the UI thread, so no screen waits on a disk, relay or printer.
    """

    def __init__(self, kiosk: KioskRuntime, app: KioskApp, camera: CameraThread | None) -> None:
        self.kiosk = kiosk
        self.app = app
        self.pipeline = ScanPipeline(
            kiosk,
            camera,
            on_outcome=lambda result: self._post(app.show_outcome, outcome_of(result)),
            quiet_window_s=kiosk.quiet_window_s,
        )
        self._watch: Any = None
        self._stopped = False
        self._starter: threading.Thread | None = None
        #: The kiosk could not start (the window closed itself; the exit status says so).
        self.failed = False
        kiosk.add_listener(self._recorded)
        app.backend = self
        app.bind(on_start=lambda *_: self.start(), on_stop=lambda *_: self.stop())

    @staticmethod
    def _post(fn: Callable[[T], Any], value: T) -> None:
        from kivy.clock import Clock

        Clock.schedule_once(lambda _dt: fn(value))

    def submit(self, text: str) -> None:
        """A scanned text, as if the camera had seen it (tests, a keyboard scanner)."""
        self.pipeline.submit(text)

    def _recorded(self, recorded: Recorded) -> None:
        """Outcomes recorded outside the worker (a door shut on a loaded order, a printer
        fault, a remote command) reach the screen here; the worker posts its own."""
        if threading.current_thread() is self.pipeline.worker:
            return
        self._post(self.app.show_background, outcome_of(recorded))

    def _job(self, name: str, work: Callable[[], T], done: Callable[[T], None], failed: T) -> None:
        """Run `work` on the worker thread; `done` gets its answer (or `failed`) on the UI."""

        def job() -> None:
            try:
                result = work()
            except Exception as exc:  # the message might quote the input: log its type
                log.error("could not %s: %s", name, type(exc).__name__, exc_info=name != "join")
                result = failed
            self._post(done, result)

        self.pipeline.call(job)

    # --- the screens' calls (Backend) ------------------------------------------------

    def join(self, phone: str, done: Callable[[Outcome | None], None]) -> None:
        """A member from a typed phone number. The number lives only in this closure:
        it is never logged, and the screen has already cleared it."""

        def work() -> Outcome | None:
            recorded = self.kiosk.join(phone)
            return None if recorded is None else outcome_of(recorded)

        failed: Outcome | None = Outcome(ERROR)
        self._job("join", work, done, failed)

    def staff_snapshot(self, done: Callable[[StaffSnapshot], None]) -> None:
        self.pipeline.call(lambda: self._post(done, self._snapshot()))

    def _snapshot(self) -> StaffSnapshot:
        try:
            state = self.kiosk.state()
        except Exception:
            log.exception("could not read the kiosk's state for the staff screen")
            return StaffSnapshot(
                active=self.kiosk.staff_active(), outbox=-1, camera=self.pipeline.camera_state
            )
        return StaffSnapshot(
            active=state.staff_active,
            preorders=[PreorderView(p.order, p.name) for p in state.pending],
            lockers=locker_views(state.locker_orders, state.lockers),
            printer=state.printer,
            camera=self.pipeline.camera_state,
            outbox=state.outbox,
            online=state.online,
        )

    def staff_open(self, number: int, done: Callable[[Outcome], None]) -> None:
        self._job(
            f"open locker {number}",
            lambda: outcome_of(self.kiosk.staff_open(number)),
            done,
            Outcome(ERROR),
        )

    def reprint(self, done: Callable[[str | None], None]) -> None:
        """Print the newest receipt again (paper jam, customer lost it); None if none."""
        self._job("reprint the last receipt", self.kiosk.reprint_last_receipt, done, None)

    def offer(self, member_id: str, done: Callable[[MemberOffer | None], None]) -> None:
        """The rewards a member can afford, for the result screen after a check-in."""
        self._job("read a member's rewards", lambda: self.kiosk.offer(member_id), done, None)

    def redeem(self, member_id: str, reward_id: str, done: Callable[[Outcome], None]) -> None:
        """Spend points on a reward (the runtime prints the voucher); the screen shows only
        what this records."""
        self._job(
            f"redeem reward {reward_id}",
            lambda: outcome_of(self.kiosk.redeem(member_id, reward_id)),
            done,
            Outcome(ERROR),
        )

    def rate(
        self, subject: RatingSubject, rating: int, done: Callable[[Outcome | None], None]
    ) -> None:
        """A visitor's rating of what the result screen showed; None if not recorded."""
        failed: Outcome | None = None
        self._job(
            f"record a rating of {subject.subject}",
            lambda: outcome_of(self.kiosk.rate(subject, rating)),
            done,
            failed,
        )

    def end_staff(self) -> None:
        """Staff left the staff screen: end staff mode now, so the next customer's pickup
        code opens their locker instead of starting a load."""
        self.kiosk.staff_logout()

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Start the kiosk off the UI thread: recovery after a restart writes to disk and
        reads door sensors. Screens may call the backend at once; their jobs wait in the
        pipeline's queue until it runs."""
        from kivy.clock import Clock

        self._starter = threading.Thread(target=self._start_parts, name="kiosk-start")
        self._starter.start()
        if self.pipeline.camera is not None:
            self._watch = Clock.schedule_interval(lambda _dt: self._watch_camera(), 1.0)

    def _start_parts(self) -> None:
        try:
            self.kiosk.start()
        except Exception:
            log.exception("the kiosk could not start")
            self.failed = True
            self._post(lambda _: self.app.stop(), None)
            return
        self.pipeline.start()

    def _watch_camera(self) -> None:
        self.app.camera_problem = self.pipeline.camera_state == "reopening"

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._watch is not None:
            self._watch.cancel()
        if self._starter is not None:
            self._starter.join()  # a start under way finishes first, then stops in order
        self.pipeline.stop()  # closes the camera too
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
    os.environ.setdefault("KIVY_IMAGE", IMAGE_PROVIDERS)
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


class _DisplayMode(ctypes.Structure):
    _fields_ = (
        ("format", ctypes.c_uint32),
        ("w", ctypes.c_int),
        ("h", ctypes.c_int),
        ("refresh_rate", ctypes.c_int),
        ("driverdata", ctypes.c_void_p),
    )


def _sdl_library() -> ctypes.CDLL | None:
    """The SDL2 library Kivy's window uses: the copy in Kivy's wheel, else the system's."""
    spec = importlib.util.find_spec("kivy")
    if spec is not None and spec.origin:
        site = Path(spec.origin).parent.parent
        for candidate in sorted(site.glob("Kivy.libs/libSDL2-2*.so*")):
            return ctypes.CDLL(str(candidate))
    name = ctypes.util.find_library("SDL2-2.0") or "libSDL2-2.0.so.0"
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


def display_size() -> tuple[int, int, str] | None:
    """The first display's size in pixels and SDL's video driver ("x11", "kmsdrm", ...),
    asked before Kivy opens its window; None when SDL cannot tell."""
    sdl = _sdl_library()
    if sdl is None:
        return None
    video = 0x20  # SDL_INIT_VIDEO
    if sdl.SDL_InitSubSystem(video) != 0:
        return None
    try:
        mode = _DisplayMode()
        if sdl.SDL_GetDesktopDisplayMode(0, ctypes.byref(mode)) != 0:
            return None
        sdl.SDL_GetCurrentVideoDriver.restype = ctypes.c_char_p
        driver = (sdl.SDL_GetCurrentVideoDriver() or b"").decode()
        return int(mode.w), int(mode.h), driver
    finally:
        sdl.SDL_QuitSubSystem(video)  # Kivy sets its hints, then starts video afresh


def _configure_window() -> None:
    from kivy.config import Config

    Config.set("kivy", "exit_on_escape", "0")  # a keyboard left plugged in must not quit
    Config.set("input", "mouse", "mouse,disable_multitouch")
    # No multisample buffers: a 4x copy of the window's colour and depth buffers (30 MB
    # of this process under Mesa's software GL). The screens' shapes smooth their own
    # edges (kiosk.screens.shapes).
    Config.set("graphics", "multisamples", "0")
    size = os.environ.get(WINDOW_ENV, "")
    if match := re.fullmatch(r"(\d+)x(\d+)", size.strip()):
        Config.set("graphics", "fullscreen", "0")
        Config.set("graphics", "width", match.group(1))
        Config.set("graphics", "height", match.group(2))
    else:
        if size:
            log.warning("%s=%r is not WIDTHxHEIGHT; using the full screen", WINDOW_ENV, size)
        Config.set("graphics", "show_cursor", "0")
        # Only where X may be used: on KMS/DRM (the kiosk's unit) SDL's full screen is right.
        display = display_size() if os.environ.get("DISPLAY") else None
        if display is not None and display[2] == "x11":
            width, height, _ = display
            log.info("display %dx%d under X: a borderless window that covers it", width, height)
            Config.set("graphics", "fullscreen", "0")
            Config.set("graphics", "borderless", "1")
            Config.set("graphics", "width", str(width))
            Config.set("graphics", "height", str(height))
            Config.set("graphics", "position", "custom")
            Config.set("graphics", "left", "0")
            Config.set("graphics", "top", "0")
        else:
            Config.set("graphics", "fullscreen", "auto")


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


def create_app(
    kiosk: KioskRuntime, *, camera: CameraThread | None = None
) -> tuple[KioskApp, Session]:
    """The app and what runs behind it; without a camera, feed texts to `Session.submit`.

    Call `open_window()` first. The session starts and stops with the app.
    """
    from kiosk.screens.app import KioskApp

    app = KioskApp(kiosk.ui, store_label=kiosk.label)
    return app, Session(kiosk, app, camera)


def run_ui(cfg: KioskConfig, source: FrameSource) -> int:
    """Run the touch UI until the window closes or SIGTERM/SIGINT. Returns the exit status.

    `source` is the camera the command line already opened: it is not opened again.
    """
    if importlib.util.find_spec("kivy") is None:  # the `kiosk` extra
        source.close()
        print(NO_KIVY, file=sys.stderr)
        return 2
    try:
        # First the data (its lock): a second kiosk on the same data fails here, before
        # any window or GL thread exists.
        kiosk = KioskRuntime(cfg)
    except BaseException:
        source.close()
        raise
    try:
        opened = open_window()
    except BaseException:
        kiosk.stop()
        source.close()
        raise
    if not opened:
        kiosk.stop()
        source.close()
        print(NO_DISPLAY, file=sys.stderr)
        return 2
    app, session = create_app(kiosk, camera=camera_thread(source))

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        from kivy.clock import Clock

        log.info("signal %d: stopping", signum)
        Clock.schedule_once(lambda _dt: app.stop())

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _on_signal)
    try:
        app.run()
    finally:
        session.stop()
    return 1 if session.failed else 0
