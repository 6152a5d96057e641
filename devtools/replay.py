"""Recorded scan sessions: image directories that play like a customer at the door.

Each code is held up for a few frames, then the view is empty for a while, the way a
real camera sees it; replayed at the kiosk's nominal frame rate, the quiet window treats
every appearance as one scan. The demo and the end-to-end tests are built on these.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from devtools.corpus import make_frame


def write_session(
    directory: str | Path,
    texts: Sequence[str],
    *,
    hold_frames: int = 3,
    gap_frames: int = 35,
    distortion: str = "clean",
    seed: int = 7,
) -> list[Path]:
    """Write `texts` as one scan session of PNG frames, in name order; returns the paths.

    With the default 35 empty frames between codes (3.5 s at 10 frames/s), the same code
    shown twice counts as two scans under the default 3 s quiet window.
    """
    rng = np.random.default_rng(seed)
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    empty = _png(make_frame(None, "none", rng))
    paths: list[Path] = []

    def put(png: bytes) -> None:
        path = out / f"frame-{len(paths):05d}.png"
        path.write_bytes(png)
        paths.append(path)

    for text in texts:
        frame = _png(make_frame(text, distortion, rng))
        for _ in range(hold_frames):
            put(frame)
        for _ in range(gap_frames):
            put(empty)
    return paths


def write_empty(directory: str | Path, frames: int = 1, *, seed: int = 7) -> list[Path]:
    """A camera that sees the door and nobody with a code (a kiosk that idles online)."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    png = _png(make_frame(None, "none", np.random.default_rng(seed)))
    paths = [out / f"frame-{i:05d}.png" for i in range(frames)]
    for path in paths:
        path.write_bytes(png)
    return paths


def _png(frame: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", frame)
    if not ok:
        raise OSError("could not encode a frame as PNG")
    return buf.tobytes()
