"""Frame sources: live cameras, video files and image directories behind one interface.

Files and directories make the kiosk testable end to end without hardware
(``o2o-kiosk run --camera DIR --exit-at-end``); :class:`CameraThread` keeps capture off
the UI and decision threads.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import cv2
import numpy as np

log = logging.getLogger(__name__)


def _quiet_opencv() -> None:
    """OpenCV prints its own `[ WARN:0@…]` lines on stderr (a missing /dev/video0, a
    backend it lacks); our errors already say it in one line. `OPENCV_LOG_LEVEL` set by
    the user still wins."""
    if "OPENCV_LOG_LEVEL" not in os.environ:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)


_quiet_opencv()

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp"})
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mjpg", ".mjpeg"})


class CameraError(Exception):
    """A camera source cannot be opened or used; the message names the source."""


@runtime_checkable
class FrameSource(Protocol):
    """Where frames come from. ``read`` returns None at the end of a finite source."""

    def read(self) -> np.ndarray | None: ...

    def close(self) -> None: ...

    @property
    def finite(self) -> bool: ...


class ImageDirSource:
    """Images in a directory, in name order; unreadable files are skipped with a warning."""

    finite = True

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._paths = sorted(
            p for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
        )
        self._next = 0

    def read(self) -> np.ndarray | None:
        while self._next < len(self._paths):
            path = self._paths[self._next]
            self._next += 1
            img = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if img is not None:
                return img
            log.warning("skipping unreadable image %s", path)
        return None

    def close(self) -> None:
        self._next = len(self._paths)


class CaptureSource:
    """An OpenCV ``VideoCapture``: a device (live) or a video file (finite)."""

    def __init__(self, target: int | str, *, finite: bool) -> None:
        self.target = target
        self._finite = finite
        self._cap = cv2.VideoCapture(target)
        if not self._cap.isOpened():
            self._cap.release()
            kind = "video file" if finite else "camera device"
            raise CameraError(f"cannot open {kind} {target!r}")
        self._closed = False

    @property
    def finite(self) -> bool:
        return self._finite

    def read(self) -> np.ndarray | None:
        if self._closed:
            return None
        ok, frame = self._cap.read()
        if not ok or frame is None:
            if self._finite:
                return None
            raise CameraError(f"camera {self.target!r} stopped delivering frames")
        return frame

    def close(self) -> None:
        self._closed = True
        self._cap.release()


class Picamera2Source:
    """The Raspberry Pi camera module through picamera2 (imported only when chosen)."""

    finite = False

    def __init__(self, size: tuple[int, int] = (640, 480)) -> None:
        try:
            from picamera2 import Picamera2  # type: ignore[import-not-found,unused-ignore]
        except ImportError as exc:
            raise CameraError(
                "camera 'picamera2' chosen but the picamera2 package is not installed "
                "(on Raspberry Pi OS: sudo apt install python3-picamera2)"
            ) from exc
        self._cam: Any = None
        try:
            self._cam = Picamera2()
            config = self._cam.create_video_configuration(
                main={"size": size, "format": "RGB888"}  # RGB888 is BGR byte order in numpy
            )
            self._cam.configure(config)
            self._cam.start()
        except Exception as exc:
            if self._cam is not None:  # or the camera stays busy for every later reopen
                with contextlib.suppress(Exception):
                    self._cam.close()
            raise CameraError(f"cannot start picamera2: {exc}") from exc
        self._closed = False

    def read(self) -> np.ndarray | None:
        if self._closed:
            return None
        try:
            return np.asarray(self._cam.capture_array("main"))
        except Exception as exc:
            raise CameraError(f"picamera2 capture failed: {exc}") from exc

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                self._cam.stop()
                self._cam.close()
            except Exception:
                log.exception("closing picamera2")


def open_source(spec: str) -> FrameSource:
    """Open ``--camera SOURCE``: ``0``, ``/dev/video0``, ``picamera2``, a video file or a
    directory of images. Raises :class:`CameraError` naming the source if it cannot."""
    spec = spec.strip()
    if not spec:
        raise CameraError("empty camera source")
    if spec == "picamera2":
        return Picamera2Source()
    if spec.isdigit():
        return CaptureSource(int(spec), finite=False)
    path = Path(spec)
    if spec.startswith("/dev/"):
        if not path.exists():
            raise CameraError(f"camera device {spec}: no such device")
        return CaptureSource(spec, finite=False)
    if not path.exists():
        raise CameraError(f"camera source {spec}: no such file or directory")
    if path.is_dir():
        src = ImageDirSource(path)
        if not src._paths:
            log.warning("camera directory %s holds no images (%s)", spec, sorted(IMAGE_SUFFIXES))
        return src
    if path.suffix.lower() in IMAGE_SUFFIXES:
        raise CameraError(f"camera source {spec}: a single image; pass its directory instead")
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        log.warning("camera source %s: unknown suffix, trying it as a video file", spec)
    return CaptureSource(str(path), finite=True)


class PlayedSource:
    """A file or directory played as a live camera: `fps` frames a second, from the start
    again at its end. For demos and trials on a machine without a camera; a finite source
    read directly goes as fast as the decoder, which suits tests but not a person watching.
    """

    finite = False

    def __init__(
        self,
        opener: Callable[[], FrameSource],
        fps: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not fps > 0:
            raise CameraError(f"frames per second must be above 0 (got {fps})")
        self._opener = opener
        self._source = opener()
        self._period = 1.0 / fps
        self._clock, self._sleep = clock, sleep
        self._due = clock()
        self._closed = False

    def read(self) -> np.ndarray | None:
        if self._closed:
            return None
        frame = self._source.read()
        if frame is None:  # the end: play it again
            self._source.close()
            self._source = self._opener()
            frame = self._source.read()
            if frame is None:
                raise CameraError("the played camera source holds no frames")
        wait = self._due - self._clock()
        if wait > 0:
            self._sleep(wait)
        self._due = max(self._due, self._clock()) + self._period
        return frame

    def close(self) -> None:
        self._closed = True
        self._source.close()


def play_source(spec: str, fps: float) -> FrameSource:
    """Open a video file or image directory (as `open_source`) to play as a live camera."""
    source = open_source(spec)
    if not source.finite:
        source.close()
        raise CameraError(f"camera source {spec}: only a video file or a directory can be played")
    first = [source]

    def opener() -> FrameSource:
        return first.pop() if first else open_source(spec)

    return PlayedSource(opener, fps)


class CameraThread:
    """Captures in a daemon thread so a slow decoder never stalls the camera driver.

    Live sources keep only the newest frame (a consumer that falls behind skips frames
    rather than decoding a growing backlog of stale ones) and are reopened with backoff
    when they fail. Finite sources (files, directories) deliver every frame: the producer
    waits until the consumer has taken the previous one, so a test run is deterministic.
    """

    def __init__(
        self,
        spec_or_source: str | FrameSource,
        *,
        opener: Callable[[str], FrameSource] = open_source,
        backoff: tuple[float, float] = (0.5, 10.0),
    ) -> None:
        if isinstance(spec_or_source, str):
            self._spec: str | None = spec_or_source
            self._source: FrameSource | None = opener(spec_or_source)
        else:
            self._spec = None
            self._source = spec_or_source
        self._opener = opener
        self._backoff = backoff
        self.finite = self._source.finite
        self._cond = threading.Condition()
        self._frame: np.ndarray | None = None
        self._seq = 0  # frames produced so far
        self._ended = False  # finite source exhausted, or closed
        self._stop = threading.Event()
        self._state = "ok"
        self._thread = threading.Thread(target=self._run, name="camera", daemon=True)
        self._thread.start()

    @property
    def state(self) -> str:
        """``"ok"``, ``"reopening"`` (live source failed, retrying) or ``"closed"``."""
        return self._state

    @property
    def ended(self) -> bool:
        """True once a finite source is exhausted (and its last frame taken) or closed."""
        with self._cond:
            return self._ended and self._frame is None

    def get(self, timeout: float | None = None) -> np.ndarray | None:
        """The next frame, waiting up to ``timeout`` seconds (None = forever); None on
        timeout or once the source has ended."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._frame is None and not self._ended:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cond.wait(remaining)
            frame, self._frame = self._frame, None
            self._cond.notify_all()  # a finite producer waits for this slot to empty
            return frame

    def close(self) -> None:
        """Stop capturing and release the device; safe to call twice."""
        self._stop.set()
        with self._cond:
            self._ended = True
            self._frame = None  # a closed camera hands out nothing more
            self._cond.notify_all()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self._state = "closed"

    def __enter__(self) -> CameraThread:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- producer -------------------------------------------------------------------------

    def _run(self) -> None:
        delay = self._backoff[0]
        try:
            while not self._stop.is_set():
                src = self._source
                if src is None:
                    # Always wait before trying again, and back off until a frame arrives:
                    # a camera that opens but cannot deliver must not spin a core.
                    self._stop.wait(delay)
                    delay = min(delay * 2, self._backoff[1])
                    self._reopen()
                    continue
                try:
                    frame = src.read()
                except Exception as exc:
                    frame = None
                    if self.finite:
                        log.error("camera source failed: %s", exc)
                        break
                    log.warning("camera read failed: %s; reopening", exc)
                if frame is None:
                    if self.finite or self._stop.is_set():
                        break
                    self._drop_source()
                    continue
                delay = self._backoff[0]  # it works again: the next failure starts afresh
                self._put(frame)
        finally:
            self._drop_source()
            with self._cond:
                self._ended = True
                self._cond.notify_all()
            self._state = "closed"

    def _put(self, frame: np.ndarray) -> None:
        with self._cond:
            if self.finite:
                while self._frame is not None and not self._stop.is_set():
                    self._cond.wait(0.5)
            if self._stop.is_set():
                return  # closed while this frame was being read
            self._frame = frame  # live: overwrite, dropping the frame nobody took
            self._seq += 1
            self._cond.notify_all()

    def _drop_source(self) -> None:
        src, self._source = self._source, None
        if src is not None:
            try:
                src.close()
            except Exception:
                log.exception("closing camera source")
        if not self._stop.is_set() and not self.finite:
            self._state = "reopening"

    def _reopen(self) -> bool:
        if self._spec is None:
            log.error("camera source failed and cannot be reopened (no spec)")
            self._stop.set()
            return False
        try:
            self._source = self._opener(self._spec)
        except Exception as exc:
            log.warning("reopening camera %s failed: %s", self._spec, exc)
            return False
        log.info("camera %s reopened", self._spec)
        self._state = "ok"
        return True
