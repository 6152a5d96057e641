"""Frame sources deliver frames in order, end cleanly, and fail with a clear CameraError;
a live camera is reopened with backoff, drops frames a slow decoder cannot take, and its
state reaches the kiosk status."""

from __future__ import annotations

import io
import itertools
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from devtools import corpus
from kiosk.config import load_config
from kiosk.devices.camera import CameraError, CameraThread, FrameSource, open_source
from kiosk.headless import run_headless
from kiosk.pipeline import QuietWindow
from kiosk.runtime import KioskRuntime
from tests.keys import Issuer


def _marked(i: int) -> np.ndarray:
    """A frame whose identity survives lossy encoding: mean brightness 20 * (i + 1)."""
    return np.full((48, 64, 3), 20 * (i + 1), np.uint8)


def _ident(frame: np.ndarray) -> int:
    return round(float(frame.mean()) / 20) - 1


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    import cv2

    # Written out of order; names decide playback order.
    for i in (3, 0, 2, 1):
        cv2.imwrite(str(tmp_path / f"frame{i:03d}.png"), _marked(i))
    (tmp_path / "notes.txt").write_text("ignored")
    (tmp_path / "frame001b.jpg").write_bytes(b"not really a jpeg")
    return tmp_path


def _drain(src: FrameSource) -> list[np.ndarray]:
    out = []
    while (f := src.read()) is not None:
        out.append(f)
    return out


def test_image_directory_plays_in_name_order_then_none(image_dir: Path) -> None:
    src = open_source(str(image_dir))
    assert src.finite
    frames = _drain(src)
    assert [_ident(f) for f in frames] == [0, 1, 2, 3]  # unreadable one skipped
    assert frames[0].shape == (48, 64, 3)
    assert src.read() is None
    src.close()


def test_video_file_round_trip(tmp_path: Path) -> None:
    path = corpus.write_video(tmp_path / "clip.avi", [_marked(i) for i in range(6)], fps=5)
    src = open_source(str(path))
    assert src.finite
    assert [_ident(f) for f in _drain(src)] == list(range(6))
    assert src.read() is None
    src.close()


def test_video_of_codes_still_decodes(tmp_path: Path) -> None:
    from kiosk.devices.qr import QrDecoder

    rng = np.random.default_rng(2)
    texts = [corpus.sample_token(rng) for _ in range(3)]
    path = corpus.write_video(
        tmp_path / "codes.avi", [corpus.make_frame(t, "clean", rng) for t in texts]
    )
    dec = QrDecoder()
    src = open_source(str(path))
    assert [[d.text for d in dec.decode(f)] for f in _drain(src)] == [[t] for t in texts]


@pytest.mark.parametrize("spec", ["/nonexistent/dir", "/dev/video99", "missing.mp4", ""])
def test_missing_source_raises_camera_error(spec: str) -> None:
    with pytest.raises(CameraError):
        open_source(spec)


def test_picamera2_missing_is_a_clear_error() -> None:
    try:
        import picamera2  # noqa: F401
    except ImportError:
        with pytest.raises(CameraError, match="picamera2"):
            open_source("picamera2")
    else:  # pragma: no cover - only on a Pi
        pytest.skip("picamera2 installed")


def test_camera_thread_delivers_every_frame_of_a_finite_source(image_dir: Path) -> None:
    got = []
    with CameraThread(str(image_dir)) as cam:
        while (f := cam.get(timeout=5)) is not None:
            got.append(_ident(f))
            time.sleep(0.05)  # a slow consumer must not lose frames
        assert cam.ended
    assert got == [0, 1, 2, 3]
    assert cam.state == "closed"


class FlakyLive:
    """A live source that fails after a few frames; reopening gives a fresh one."""

    finite = False
    opened = 0

    def __init__(self) -> None:
        FlakyLive.opened += 1
        self.n = 0
        self.closed = False

    def read(self) -> np.ndarray | None:
        if self.closed:
            return None
        self.n += 1
        if self.n > 3:
            raise CameraError("unplugged")
        time.sleep(0.002)
        return _marked(self.n)

    def close(self) -> None:
        self.closed = True


def test_camera_thread_live_keeps_latest_and_reopens() -> None:
    FlakyLive.opened = 0
    cam = CameraThread("fake", opener=lambda _spec: FlakyLive(), backoff=(0.01, 0.05))
    try:
        assert cam.get(timeout=2) is not None
        deadline = time.monotonic() + 3
        while FlakyLive.opened < 3 and time.monotonic() < deadline:
            cam.get(timeout=0.5)
        assert FlakyLive.opened >= 3
        assert cam.state in ("ok", "reopening")
    finally:
        cam.close()
    assert cam.state == "closed"
    assert cam.get(timeout=0.1) is None


def test_camera_thread_live_drops_stale_frames() -> None:
    class Counter:
        finite = False

        def __init__(self) -> None:
            self.i = 0
            self.stop = threading.Event()

        def read(self) -> np.ndarray | None:
            time.sleep(0.001)
            self.i += 1
            return np.full((4, 4), self.i % 256, np.uint8)

        def close(self) -> None:
            pass

    cam = CameraThread(Counter())
    try:
        first = cam.get(timeout=2)
        time.sleep(0.2)  # consumer falls behind: frames pile up at the producer
        later = cam.get(timeout=2)
        assert first is not None and later is not None
        assert int(later[0, 0]) != (int(first[0, 0]) + 1) % 256  # skipped ahead, not queued
    finally:
        cam.close()


def test_live_camera_that_fails_goes_reopening_then_ok() -> None:
    """Unplugged: the state says so while reopening fails, and recovers by itself."""
    attempts = []

    def opener(_spec: str) -> FrameSource:
        attempts.append(time.monotonic())
        if 2 <= len(attempts) <= 3:  # the first two reopen attempts find no device
            raise CameraError("no such device")
        return FlakyLive()

    cam = CameraThread("fake", opener=opener, backoff=(0.02, 0.2))
    states = [cam.state]
    try:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and not (len(attempts) >= 4 and states[-1] == "ok"):
            cam.get(timeout=0.01)
            if cam.state != states[-1]:
                states.append(cam.state)
        assert states[:3] == ["ok", "reopening", "ok"], states
        assert len(attempts) >= 4
        # Backoff: the wait before each failed attempt's successor doubles.
        gaps = [b - a for a, b in itertools.pairwise(attempts[1:4])]
        assert gaps[0] >= 0.02 and gaps[1] >= 0.04, gaps
        assert cam.get(timeout=2) is not None  # frames flow again
    finally:
        cam.close()
    assert cam.state == "closed"


def test_slow_consumer_gets_fresh_frames_not_a_backlog() -> None:
    """A decoder slower than the camera sees each frame at most once and always the
    newest: nothing queues up behind it."""

    class Numbered:
        finite = False

        def __init__(self) -> None:
            self.i = 0

        def read(self) -> np.ndarray | None:
            time.sleep(0.002)  # a 500 frames/s camera
            self.i += 1
            return np.full((2, 2), self.i, np.int64)

        def close(self) -> None:
            pass

    src = Numbered()
    cam = CameraThread(src)
    got, behind = [], []
    try:
        for _ in range(10):
            frame = cam.get(timeout=2)
            assert frame is not None
            got.append(int(frame[0, 0]))
            behind.append(src.i - got[-1])  # frames captured since this one
            time.sleep(0.03)  # a 33 frames/s decoder
        produced = src.i
    finally:
        cam.close()
    assert got == sorted(set(got))  # in order, none twice
    assert max(behind) <= 3, behind  # each frame taken was (nearly) the newest
    assert len(got) < produced / 3  # most frames were dropped, not queued


def _kiosk(tmp_path: Path) -> tuple[KioskRuntime, Issuer]:
    """A kiosk on its own data directory, with a broker nobody listens on (it works offline)."""
    issuer = Issuer(store="s1")
    ((kid, key),) = issuer.config_keys.items()
    config = tmp_path / "kiosk.toml"
    config.write_text(
        f'store = "s1"\nkiosk = "k1"\ndata_dir = "data"\n[keys]\n"{kid}" = "{key}"\n'
        '[mqtt]\nurl = "mqtt://127.0.0.1:1"\n',
        encoding="utf-8",
    )
    return KioskRuntime(load_config(config)), issuer


def test_headless_loop_reports_camera_state_in_status(tmp_path: Path) -> None:
    kiosk, issuer = _kiosk(tmp_path)
    member = issuer.code("m", "u1", n="Ann")
    frame = corpus.make_frame(member, "clean", np.random.default_rng(1))
    attempts = []

    class Door:
        """Shows the member's code, then is unplugged; comes back on the third try."""

        finite = False

        def __init__(self) -> None:
            self.n = 0

        def read(self) -> np.ndarray | None:
            self.n += 1
            if self.n > 2:
                raise CameraError("unplugged")
            time.sleep(0.01)
            return frame

        def close(self) -> None:
            pass

    def reopen() -> FrameSource:
        attempts.append(1)
        if len(attempts) < 3:
            raise CameraError("no such device")
        return Door()

    out = io.StringIO()
    stop = threading.Event()
    result: list[int] = []
    runner = threading.Thread(
        target=lambda: result.append(
            run_headless(
                kiosk,
                Door(),
                exit_at_end=False,
                out=out,
                reopen=reopen,
                backoff=(0.02, 0.05),
                stop=stop,
            )
        )
    )
    runner.start()
    states: list[str] = []
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and len(attempts) < 4:
            state = kiosk.telemetry().get("camera")
            if state is not None and (not states or state != states[-1]):
                states.append(state)
            time.sleep(0.002)
    finally:
        stop.set()
        runner.join(10)
    assert not runner.is_alive() and result == [0]
    assert states[:3] == ["ok", "reopening", "ok"], states
    assert kiosk.telemetry()["camera"] == "closed"
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    # The same code seen again after the camera came back is still one visit.
    assert [(x["type"], x["data"]["member_id"]) for x in lines] == [("checkin", "u1")]


def test_quiet_window_merges_a_code_held_up() -> None:
    q = QuietWindow(3.0)
    assert q.is_new("A", 0.0)
    assert not q.is_new("A", 1.0)
    assert not q.is_new("A", 3.5)  # still in sight: seen 2.5 s ago
    assert q.is_new("B", 3.6)
    assert q.is_new("A", 7.0)  # away for 3.5 s: a new scan
