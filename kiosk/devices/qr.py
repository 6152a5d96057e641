"""QR decoding for camera frames.

Stages, chosen by measurement on the synthetic corpus (``bench/bench_decode.py``):

1. zxing-cpp on the grayscale frame. It reads clean, dark, low-contrast, glared, noisy,
   JPEG-damaged, rotated, tilted, small and inverted (light-on-dark) codes, and at ~1 ms
   per 640x480 frame it is ~10x cheaper than plain pyzbar, so empty frames (the common
   case at a shop door) stay cheap.
2. zxing-cpp on an unsharp-masked frame: recovers most defocus blur and some motion blur.
   Together with stage 1 this is all an empty frame costs (~3 ms).
3. Only when zxing-cpp *detected* a symbol it could not decode (a checksum error: there
   is a code here, just damaged) do the expensive stages run, on the region around it:
   a stronger unsharp mask, then Wiener deconvolution for motion blur at 8 directions.

pyzbar is used only when zxing-cpp is unavailable or ``use_zxing=False``: on the corpus
it rescued no frame that the zxing-cpp stages missed, and it cannot read inverted or
strongly tilted codes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

log = logging.getLogger(__name__)

zxingcpp: Any
try:  # zxing-cpp is a wheel dependency, but a broken install must not stop the kiosk.
    import zxingcpp
except ImportError:  # pragma: no cover - depends on the environment
    zxingcpp = None

zbar_decode: Any = None
ZBarSymbol: Any = None
try:
    import pyzbar.pyzbar as _pyzbar

    zbar_decode, ZBarSymbol = _pyzbar.decode, _pyzbar.ZBarSymbol
except ImportError:  # pragma: no cover - libzbar missing
    pass

Point = tuple[int, int]

_MIN_SIDE = 21  # a version-1 QR symbol is 21 modules; anything smaller cannot hold one
_MAX_SIDE = 4096  # bound the cost of absurd inputs; larger frames are downscaled


_QR_FORMAT: Any = zxingcpp.BarcodeFormat.QRCode if zxingcpp is not None else None


@dataclass(frozen=True)
class Decoded:
    """One QR code read from a frame."""

    text: str
    #: Corners in frame pixel coordinates (top-left, top-right, bottom-right, bottom-left).
    polygon: tuple[Point, ...] = field(default=(), compare=False)
    #: Which stage read it (for diagnostics and the benchmark), e.g. ``"zxing"``.
    stage: str = field(default="", compare=False)


def _sharpen(gray: np.ndarray, sigma: float, amount: float) -> np.ndarray:
    blurred = cv2.GaussianBlur(gray, (0, 0), sigma)
    return cv2.addWeighted(gray, 1.0 + amount, blurred, -amount, 0)


def _line_psf(length: int, angle: float, size: int) -> np.ndarray:
    """A centred line point-spread function: what a straight camera/phone shake does."""
    k = np.zeros((size, size), np.float32)
    c = size // 2
    k[c, c - length // 2 : c - length // 2 + length] = 1.0
    m = cv2.getRotationMatrix2D((c, c), angle, 1.0)
    rotated: np.ndarray = cv2.warpAffine(k, m, (size, size))
    return rotated / max(float(rotated.sum()), 1e-6)


def _wiener_kernel(length: int, angle: float, k: float = 0.02, size: int = 31) -> np.ndarray:
    """A spatial Wiener deconvolution kernel, so deblurring is one ``cv2.filter2D`` call."""
    n = 64
    psf = _line_psf(length, angle, n)
    h = np.fft.fft2(np.fft.ifftshift(psf))
    w = np.real(np.fft.fftshift(np.fft.ifft2(np.conj(h) / (np.abs(h) ** 2 + k))))
    c, r = n // 2, size // 2
    ker = w[c - r : c + r + 1, c - r : c + r + 1].astype(np.float32)
    return ker / float(ker.sum())


class QrDecoder:
    """Reads every QR code in a frame; never raises, whatever the array."""

    def __init__(self, *, use_zxing: bool = True) -> None:
        self.use_zxing = use_zxing and zxingcpp is not None
        if use_zxing and zxingcpp is None:
            log.warning("zxing-cpp is not installed; decoding with pyzbar only")
        if not self.use_zxing and zbar_decode is None:
            log.error("neither zxing-cpp nor pyzbar is usable: no code will ever be read")
        self._deblur = [_wiener_kernel(8, a) for a in range(0, 180, 23)]

    # -- public ---------------------------------------------------------------------------

    def decode(self, frame: Any) -> list[Decoded]:
        """All distinct QR texts in ``frame`` (BGR, BGRA or grayscale; uint8 preferred)."""
        try:
            gray = _to_gray(frame)
            if gray is None:
                return []
            if self.use_zxing:
                return self._decode_zxing(gray)
            return self._decode_zbar(gray)
        except Exception:
            log.exception("QR decode failed on a %s", _describe(frame))
            return []

    # -- pipelines ------------------------------------------------------------------------

    def _decode_zxing(self, gray: np.ndarray) -> list[Decoded]:
        found, damaged = _zxing(gray, "zxing")
        if found:
            return found
        # No try_downscale: downscaling would undo the sharpening.
        found, damaged2 = _zxing(_sharpen(gray, 2.0, 1.0), "zxing-sharpen", downscale=False)
        if found:
            return found
        damaged += damaged2
        if not damaged:
            return []  # nothing that even looks like a symbol: the cheap, common path
        x0, y0, roi = _roi(gray, damaged)
        found, _ = _zxing(
            _sharpen(roi, 3.0, 1.5), "zxing-sharpen-strong", downscale=False, offset=(x0, y0)
        )
        for kernel in self._deblur:
            if found:
                break
            deblurred = cv2.filter2D(roi, -1, kernel, borderType=cv2.BORDER_REPLICATE)
            found, _ = _zxing(deblurred, "zxing-deblur", downscale=False, offset=(x0, y0))
        return found

    def _decode_zbar(self, gray: np.ndarray) -> list[Decoded]:
        if zbar_decode is None:
            return []
        found = _zbar(gray, "zbar")
        if not found:
            found = _zbar(cv2.bitwise_not(gray), "zbar-inverted")
        if not found:
            found = _zbar(_sharpen(gray, 2.0, 1.0), "zbar-sharpen")
        return found


def _zxing(
    img: np.ndarray, stage: str, *, downscale: bool = True, offset: Point = (0, 0)
) -> tuple[list[Decoded], list[Sequence[Point]]]:
    """Decoded codes, and the corners of symbols that were detected but failed to decode."""
    results = zxingcpp.read_barcodes(
        np.ascontiguousarray(img),
        formats=_QR_FORMAT,
        try_rotate=False,  # only matters for 1D codes; QR detection is rotation invariant
        try_downscale=downscale,
        try_invert=True,
        return_errors=True,
    )
    found: list[Decoded] = []
    damaged: list[Sequence[Point]] = []
    seen: set[str] = set()
    for r in results:
        pos = r.position
        poly = tuple(
            (int(p.x) + offset[0], int(p.y) + offset[1])
            for p in (pos.top_left, pos.top_right, pos.bottom_right, pos.bottom_left)
        )
        if r.valid and r.text and r.text not in seen:
            seen.add(r.text)
            found.append(Decoded(r.text, poly, stage))
        elif not r.valid:
            damaged.append(poly)
    return found, damaged


def _zbar(img: np.ndarray, stage: str) -> list[Decoded]:
    found: list[Decoded] = []
    seen: set[str] = set()
    for s in zbar_decode(img, symbols=[ZBarSymbol.QRCODE]):
        text = s.data.decode("utf-8", errors="replace")
        if text and text not in seen:
            seen.add(text)
            found.append(Decoded(text, tuple((int(p.x), int(p.y)) for p in s.polygon), stage))
    return found


def _roi(gray: np.ndarray, polys: list[Sequence[Point]]) -> tuple[int, int, np.ndarray]:
    """The region around damaged detections, with margin for a mislocated corner."""
    pts = np.array([p for poly in polys for p in poly], np.int64).reshape(-1, 2)
    x0, y0 = pts.min(axis=0)
    x1, y1 = pts.max(axis=0)
    m = max(24, int(0.35 * max(x1 - x0, y1 - y0)))
    h, w = gray.shape
    x0, y0 = max(0, int(x0) - m), max(0, int(y0) - m)
    x1, y1 = min(w, int(x1) + m), min(h, int(y1) + m)
    if x1 - x0 < _MIN_SIDE or y1 - y0 < _MIN_SIDE:
        return 0, 0, gray
    return x0, y0, gray[y0:y1, x0:x1]


def _to_gray(frame: Any) -> np.ndarray | None:
    """A contiguous uint8 grayscale view of ``frame``, or None if it cannot hold a code."""
    if not isinstance(frame, np.ndarray) or frame.size == 0:
        return None
    a = frame
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        return None
    if a.shape[0] < _MIN_SIDE or a.shape[1] < _MIN_SIDE:
        return None
    if a.dtype != np.uint8:
        if a.dtype == np.bool_:
            a = a.astype(np.uint8) * 255
        elif np.issubdtype(a.dtype, np.number) and not np.issubdtype(a.dtype, np.complexfloating):
            a = np.nan_to_num(a.astype(np.float32), nan=0.0, posinf=255.0, neginf=0.0)
            if a.max(initial=0.0) <= 1.0:
                a = a * 255.0  # float images in [0, 1]
            a = np.clip(a, 0, 255).astype(np.uint8)
        else:
            return None
    if a.ndim == 3:
        a = cv2.cvtColor(
            np.ascontiguousarray(a), cv2.COLOR_BGR2GRAY if a.shape[2] == 3 else cv2.COLOR_BGRA2GRAY
        )
    longest = max(a.shape)
    if longest > _MAX_SIDE:
        f = _MAX_SIDE / longest
        a = cv2.resize(a, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(a)


def _describe(frame: Any) -> str:
    if isinstance(frame, np.ndarray):
        return f"array shape={frame.shape} dtype={frame.dtype}"
    return type(frame).__name__


def timed_decode(decoder: QrDecoder, frame: np.ndarray) -> tuple[list[Decoded], float]:
    """Decode and return the wall time in milliseconds (for ``scan`` and the benchmark)."""
    t0 = time.perf_counter()
    out = decoder.decode(frame)
    return out, (time.perf_counter() - t0) * 1e3
