"""Synthetic camera-like QR frames for tests and benchmarks.

A shop door camera sees codes on phone screens and paper: blurred, tilted, dark, glared,
compressed. Real footage cannot ship with the repository, so this module renders such
frames deterministically from a seed; tests and ``bench/bench_decode.py`` share it so that
read rates measured in one are the ones asserted in the other.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import cv2
import numpy as np
import segno

log = logging.getLogger(__name__)

WIDTH, HEIGHT = 640, 480

#: Distortions that show a code; ``"none"`` (no code, busy background) is separate.
DISTORTIONS: tuple[str, ...] = (
    "clean",
    "blur",
    "motion_blur",
    "dark",
    "low_contrast",
    "glare",
    "noise",
    "jpeg",
    "rotation",
    "perspective",
    "small",
    "inverted",
)
NO_CODE = "none"

Rng = np.random.Generator


def sample_token(rng: Rng) -> str:
    """A random text shaped like a real signed kiosk token (same length, same alphabet).

    Code size (QR version) drives how hard a frame is, so test codes should be as long
    as the real ones rather than short strings that read trivially.
    """
    payload = {
        "t": "c",
        "id": f"cp-{int(rng.integers(10**8, 10**9))}",
        "st": "store-1",
        "kid": "k1",
        "iat": int(rng.integers(1_700_000_000, 1_800_000_000)),
        "exp": int(rng.integers(1_800_000_000, 1_900_000_000)),
        "cp": "spring",
        "v": "10% off",
    }
    body = base64.urlsafe_b64encode(json.dumps(payload, separators=(",", ":")).encode())
    sig = base64.urlsafe_b64encode(rng.bytes(64))
    return f"O2O1.{body.decode().rstrip('=')}.{sig.decode().rstrip('=')}"


@functools.lru_cache(maxsize=256)
def _symbol(text: str) -> np.ndarray:
    """Module matrix with quiet zone, 0 = dark; cached because segno's masking is slow."""
    matrix = np.array(segno.make(text, error="m").matrix, dtype=np.uint8)
    matrix = np.pad(matrix, 4, constant_values=0)
    img = np.where(matrix > 0, 0, 255).astype(np.uint8)
    img.flags.writeable = False
    return img


def qr_card(text: str, size: int) -> np.ndarray:
    """The code with its quiet zone as a ``size`` x ``size`` grayscale image (dark on light)."""
    img = _symbol(text)
    # Upscale with nearest first, then area-downscale: gives the soft module edges a lens does.
    big = cv2.resize(img, None, fx=8, fy=8, interpolation=cv2.INTER_NEAREST)
    return cv2.resize(big, (size, size), interpolation=cv2.INTER_AREA)


def background(rng: Rng, busy: bool = False) -> np.ndarray:
    """A camera-like scene: gradient, blotches, and for ``busy`` lines, boxes and text."""
    h, w = HEIGHT, WIDTH
    base = rng.uniform(60, 190, size=3)
    # A linear gradient plus low-frequency blotches, both by upscaling a tiny array.
    gx, gy = rng.uniform(-30, 30, size=2)
    corners = np.array([[-gx - gy, gx - gy], [-gx + gy, gx + gy]], np.float32)
    grad = cv2.resize(corners, (w, h), interpolation=cv2.INTER_LINEAR)
    low = cv2.resize(rng.normal(0, 25, size=(6, 8)).astype(np.float32), (w, h))
    lum = grad + low
    img = cv2.merge([np.clip(lum + np.float32(b), 0, 255).astype(np.uint8) for b in base])
    n_shapes = int(rng.integers(25, 45)) if busy else int(rng.integers(3, 8))
    for _ in range(n_shapes):
        color = tuple(int(v) for v in rng.integers(0, 256, size=3))
        kind = int(rng.integers(0, 4))
        p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        p2 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        if kind == 0:
            cv2.line(img, p1, p2, color, int(rng.integers(1, 6)))
        elif kind == 1:
            cv2.rectangle(img, p1, p2, color, int(rng.integers(-1, 4)))
        elif kind == 2:
            cv2.circle(img, p1, int(rng.integers(5, 80)), color, int(rng.integers(-1, 4)))
        else:
            cv2.putText(
                img, "OPEN 9-18 SALE", p1, cv2.FONT_HERSHEY_SIMPLEX, rng.uniform(0.5, 2), color, 2
            )
    if busy:
        # Fine high-contrast texture (tiles, fabric, shelves): the false-positive bait.
        cells = (rng.random((HEIGHT // 8, WIDTH // 8)) > 0.5).astype(np.uint8) * 255
        tile: np.ndarray = cv2.resize(cells, (w, h), interpolation=cv2.INTER_NEAREST)
        mask = np.zeros((h, w), np.uint8)
        x, y = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
        mask[y : y + int(rng.integers(80, 220)), x : x + int(rng.integers(80, 300))] = 1
        img[mask > 0] = tile[mask > 0, None]
    return img


def _paste(dst: np.ndarray, card: np.ndarray, corners: np.ndarray, invert: bool) -> None:
    """Warp a grayscale card onto ``dst`` at the four ``corners`` (tl, tr, br, bl)."""
    s = card.shape[0]
    src = np.array([[0, 0], [s, 0], [s, s], [0, s]], np.float32)
    m = cv2.getPerspectiveTransform(src, corners.astype(np.float32))
    if invert:
        card = 255 - card
    warped = cv2.warpPerspective(card, m, (WIDTH, HEIGHT), flags=cv2.INTER_LINEAR)
    mask = cv2.warpPerspective(np.full_like(card, 255), m, (WIDTH, HEIGHT))
    # Hard-edged paste; the camera blur applied afterwards softens the card edge.
    np.copyto(dst, warped[..., None], where=(mask > 127)[..., None])


def _placement(rng: Rng, size: int, angle: float = 0.0, tilt: float = 0.0) -> np.ndarray:
    """Corners of a ``size`` square somewhere in frame, rotated by ``angle`` degrees and
    foreshortened by ``tilt`` (fraction by which one edge shrinks, as when a phone is held
    at an angle)."""
    half = size / 2
    sq = np.array([[-half, -half], [half, -half], [half, half], [-half, half]], np.float64)
    if tilt:
        side = int(rng.integers(0, 4))
        k = 1.0 - tilt
        # Shrink one edge towards the centre line of the square.
        if side == 0:
            sq[[0, 1], 0] *= k
        elif side == 1:
            sq[[1, 2], 1] *= k
        elif side == 2:
            sq[[2, 3], 0] *= k
        else:
            sq[[3, 0], 1] *= k
    a = np.deg2rad(angle)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    pts = sq @ rot.T
    ext = np.abs(pts).max(axis=0) + 4
    cx = rng.uniform(ext[0], max(ext[0] + 1, WIDTH - ext[0]))
    cy = rng.uniform(ext[1], max(ext[1] + 1, HEIGHT - ext[1]))
    return pts + np.array([cx, cy])


def _motion_kernel(length: int, angle: float) -> np.ndarray:
    line = np.zeros((length, length), np.float32)
    line[length // 2, :] = 1.0
    m = cv2.getRotationMatrix2D((length / 2 - 0.5, length / 2 - 0.5), angle, 1.0)
    k: np.ndarray = cv2.warpAffine(line, m, (length, length))
    return k / k.sum()


def _camera(img: np.ndarray, rng: Rng, noise: float = 3.0) -> np.ndarray:
    """Mild lens softness and sensor noise that every real frame has."""
    img = cv2.GaussianBlur(img, (0, 0), 0.6)
    # Luma noise, shared by the three channels: a third of the cost of colour noise.
    n = rng.standard_normal(img.shape[:2], dtype=np.float32) * np.float32(noise)
    out = img.astype(np.int16) + n.astype(np.int16)[..., None]
    return np.clip(out, 0, 255).astype(np.uint8)


def make_frame(text: str | None, distortion: str, rng: Rng) -> np.ndarray:
    """One 640x480 BGR frame showing ``text`` as a QR code under ``distortion``.

    ``text=None`` or ``distortion="none"`` gives a frame with no code and a busy background.
    """
    if text is None or distortion == NO_CODE:
        return _camera(background(rng, busy=True), rng)
    if distortion not in DISTORTIONS:
        raise ValueError(f"unknown distortion {distortion!r}; expected one of {DISTORTIONS}")
    return make_multi_frame([text], distortion, rng)


def make_multi_frame(texts: Sequence[str], distortion: str, rng: Rng) -> np.ndarray:
    """A frame with each of ``texts`` as its own code, side by side (at most 2 fit well)."""
    img = background(rng)
    n = max(1, len(texts))
    angle = float(rng.uniform(-8, 8))
    tilt = 0.0
    size = int(rng.uniform(250, 330)) if n == 1 else int(rng.uniform(230, 270))
    if distortion == "rotation":
        angle = float(rng.uniform(20, 70)) * float(rng.choice([-1, 1]))
        size = int(size * 0.85)
    elif distortion == "perspective":
        tilt = float(rng.uniform(0.25, 0.4))
    elif distortion == "small":
        size = int(rng.uniform(150, 185))
    for i, text in enumerate(texts):
        corners = _placement(rng, size, angle, tilt)
        if n > 1:
            # Keep codes apart: each gets its own vertical strip of the frame.
            strip = WIDTH / n
            corners[:, 0] += strip * i + strip / 2 - corners[:, 0].mean()
            corners[:, 1] += HEIGHT / 2 - corners[:, 1].mean()
        _paste(img, qr_card(text, size), corners, invert=distortion == "inverted")
    return _distort(img, distortion, rng, corners.mean(axis=0))


def _distort(img: np.ndarray, distortion: str, rng: Rng, center: np.ndarray) -> np.ndarray:
    noise = 3.0
    if distortion == "blur":
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(1.6, 2.2))
    elif distortion == "motion_blur":
        img = cv2.filter2D(img, -1, _motion_kernel(int(rng.integers(7, 10)), rng.uniform(0, 180)))
    elif distortion == "dark":
        img = (img.astype(np.float32) * rng.uniform(0.12, 0.22)).astype(np.uint8)
        noise = 2.0
    elif distortion == "low_contrast":
        lo = rng.uniform(90, 120)
        img = (lo + img.astype(np.float32) * rng.uniform(0.15, 0.22)).astype(np.uint8)
    elif distortion == "glare":
        # A specular spot on the code (a phone screen or laminated card under a lamp).
        cx, cy = center + rng.uniform(-60, 60, size=2)
        r = rng.uniform(50, 90)
        xx = ((np.arange(WIDTH, dtype=np.float32) - cx) ** 2)[None, :]
        yy = ((np.arange(HEIGHT, dtype=np.float32) - cy) ** 2)[:, None]
        spot = np.exp(-(xx + yy) / np.float32(2 * r * r)) * np.float32(rng.uniform(110, 150))
        img = np.clip(img.astype(np.float32) + spot[..., None], 0, 255).astype(np.uint8)
    elif distortion == "noise":
        noise = float(rng.uniform(22, 30))
    elif distortion == "jpeg":
        img = _camera(img, rng)
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(8, 14))])
        decoded = cv2.imdecode(buf, cv2.IMREAD_COLOR) if ok else None
        return img if decoded is None else np.asarray(decoded)
    return _camera(img, rng, noise)


def corpus_frames(
    texts: Sequence[str], distortions: Iterable[str], seed: int
) -> list[tuple[str | None, str, np.ndarray]]:
    """``(text, distortion, frame)`` for every distortion x text; ``"none"`` gives no-code
    frames (one per text)."""
    rng = np.random.default_rng(seed)
    out: list[tuple[str | None, str, np.ndarray]] = []
    for d in distortions:
        for t in texts:
            if d == NO_CODE:
                out.append((None, d, make_frame(None, d, rng)))
            else:
                out.append((t, d, make_frame(t, d, rng)))
    return out


def write_corpus(
    directory: str | Path, texts: Sequence[str], distortions: Iterable[str], seed: int
) -> list[Path]:
    """Write the corpus as PNGs named ``00000-<distortion>.png`` so name order is
    generation order; returns the paths in that order."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (_, dist, frame) in enumerate(corpus_frames(texts, distortions, seed)):
        p = d / f"{i:05d}-{dist}.png"
        if not cv2.imwrite(str(p), frame):
            raise OSError(f"could not write {p}")
        paths.append(p)
    return paths


def write_video(path: str | Path, frames: Sequence[np.ndarray], fps: float = 10.0) -> Path:
    """Write frames as a video. MJPG in .avi is what opencv-python-headless can always
    encode (no H.264 there); quality is set high so codes survive."""
    p = Path(path)
    if not frames:
        raise ValueError("no frames to write")
    h, w = frames[0].shape[:2]
    fourcc = cv2.VideoWriter.fourcc(*("MJPG" if p.suffix.lower() == ".avi" else "mp4v"))
    writer = cv2.VideoWriter(str(p), fourcc, fps, (w, h))
    if not writer.isOpened():
        raise OSError(f"cannot open a video writer for {p}")
    try:
        writer.set(cv2.VIDEOWRITER_PROP_QUALITY, 95)
        for f in frames:
            if f.ndim == 2:
                f = cv2.cvtColor(f, cv2.COLOR_GRAY2BGR)
            writer.write(f)
    finally:
        writer.release()
    return p
