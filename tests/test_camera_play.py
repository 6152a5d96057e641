"""A recorded session played as a live camera (`o2o-kiosk run --camera DIR --camera-fps N`):
what `make demo` shows in the kiosk window on a machine with a display."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from kiosk.devices.camera import CameraError, CameraThread, PlayedSource, play_source


def _frames(directory: Path, n: int) -> Path:
    directory.mkdir()
    for i in range(n):
        cv2.imwrite(str(directory / f"f{i:03d}.png"), np.full((8, 8, 3), i * 20, np.uint8))
    return directory


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.slept.append(round(s, 6))
        self.now += s


def test_frames_come_at_the_given_rate_and_start_again_at_the_end(tmp_path: Path) -> None:
    from kiosk.devices.camera import open_source

    d = _frames(tmp_path / "session", 3)
    t = FakeTime()
    src = PlayedSource(lambda: open_source(str(d)), 10, clock=t.clock, sleep=t.sleep)
    shades = [int(src.read()[0, 0, 0]) for _ in range(7)]  # type: ignore[index]
    assert shades == [0, 20, 40, 0, 20, 40, 0]  # played over and over, in name order
    assert t.slept == [0.1] * 6  # the first frame at once, then one every 1/10 s
    assert src.finite is False  # the kiosk treats it as a live camera


def test_a_slow_reader_is_not_made_to_catch_up(tmp_path: Path) -> None:
    """Like a live camera: after a stall the next frame comes at once, not a burst."""
    from kiosk.devices.camera import open_source

    d = _frames(tmp_path / "session", 2)
    t = FakeTime()
    src = PlayedSource(lambda: open_source(str(d)), 10, clock=t.clock, sleep=t.sleep)
    src.read()
    t.now += 5.0  # the decoder was busy for 5 s
    src.read()
    src.read()
    assert t.slept == [0.1]


def test_the_camera_thread_keeps_delivering_a_played_session(tmp_path: Path) -> None:
    d = _frames(tmp_path / "session", 2)
    with CameraThread(play_source(str(d), 200)) as cam:
        got = [cam.get(timeout=5) for _ in range(6)]
        assert all(f is not None for f in got)
        assert not cam.ended


def test_a_source_that_cannot_be_played_is_a_clear_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CameraError, match="no frames"):
        play_source(str(empty), 10).read()
    with pytest.raises(CameraError, match="above 0"):
        play_source(str(_frames(tmp_path / "s", 1)), 0)


def test_played_camera_and_exit_at_end_exclude_each_other(tmp_path: Path) -> None:
    d = _frames(tmp_path / "session", 1)
    cfg = tmp_path / "kiosk.toml"
    cfg.write_text('store = "s"\nkiosk = "k"\n')
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "kiosk.cli",
            "run",
            "--headless",
            "--config",
            str(cfg),
            "--camera",
            str(d),
            "--camera-fps",
            "10",
            "--exit-at-end",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 2
    assert "--camera-fps" in run.stderr and "--exit-at-end" in run.stderr
