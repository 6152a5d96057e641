"""Frame sources deliver frames in order, end cleanly, and fail with a clear CameraError."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from kiosk.devices import corpus
from kiosk.devices.camera import CameraError, CameraThread, FrameSource, open_source


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
