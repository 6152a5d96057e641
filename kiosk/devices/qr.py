"""QR decoding for camera frames.

Goal (``bench/bench_decode.py``, per distortion, against both libraries in one run):
never miss a frame that plain zxing-cpp or plain pyzbar reads on its own, at a median
time under half of plain pyzbar's. Stages, each kept because it reads frames the earlier
ones miss, on the classic corpus and on the hard one that is rendered differently (dense
long tokens, cut or missing quiet zones, 5-15 degree rotations, phone screens, thermal
slips; ``devtools/corpus.py``):

1. zxing-cpp on the grayscale frame. It reads clean, dark, low-contrast, glared, noisy,
   JPEG-damaged, rotated, tilted, small, dense and inverted (light-on-dark) codes, and at
   ~1 ms per 640x480 frame it is over 10x cheaper than plain pyzbar. It reads 378 of the
   bench's 440 code frames; the rest of a frame's stages run only when it reads nothing.
2. The finder gate (``find_finder_patterns``, ``looks_like_qr``; ~2 ms): places crossed
   in 1:1:3:1:1 proportion by both a row and a column scan, on the frame after a 2x2
   closing (which lifts a phone screen's dark pixel-grid gaps, narrower than a module,
   so the moire no longer breaks the finders); two of them with about the same module
   size, 11 or more modules apart, open stages 3, 5 and 6. Measured: open on each of 51
   frames that pyzbar read and the zxing-cpp stages missed (hard corpus, seeds 101 and
   202, and dense screen codes turned 8 degrees with the quiet zone cut) and on every
   defocused frame the sharpen stage read (three seeds); on busy code-free frames, open
   on 19% (of 120; counting places alone, two or more: 28%), so most of them skip the
   costly stages. Before it, pyzbar ran only when zxing-cpp was missing, and plain
   pyzbar read screen codes this decoder missed, one of them clean and upright (kept in
   ``tests/test_qr.py``).
3. zxing-cpp on an unsharp-masked frame: recovers defocus blur (blur 55% -> 95%).
4. Motion deblur, only when the frame's most textured region is smeared along one
   direction (gradient structure tensor at half resolution, ~0.5 ms; no other corpus
   frame passes that gate): blur angle from the tensor at full resolution, blur length
   from the cepstrum, then one or two Wiener deconvolutions of that region only.
   Motion blur 30% -> 100%, at ~10-20 ms for those frames. It has its own gate because
   a smear also wipes out finder patterns.
5. Plain pyzbar on the grayscale frame. zxing-cpp cannot see through a phone screen's
   moire where zbar can (screens 45% vs 95%, dense screen codes 20% vs 90%); it reads 28
   frames on the bench that the stages before it missed.
6. zxing-cpp on the closed frame upscaled 2x (cubic): more pixels per module for a dense
   screen code (~3 px). It read 5 of the 7 hard frames that the stages before it
   missed (seeds 101 and 202).

Removed by measurement: a stronger unsharp mask and 8-direction deconvolution around
symbols zxing-cpp detected but could not decode (it read 0 frames once stage 4 existed;
zxing-cpp rarely even detects a symbol under motion blur); a gate on symbols zxing-cpp
detected but could not decode (``return_errors``): it stayed shut on most screen frames
pyzbar read; zbar at a lower scan density (half the cost, but it lost a tenth of the hard
frames plain pyzbar read).

With ``use_zxing=False`` (or zxing-cpp missing) pyzbar does the stages 1, 3 and 4 alone,
plus an inverted pass since zbar cannot read light-on-dark codes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
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


#: Decodes one (preprocessed) image; ``offset`` maps its pixels back to the frame.
Reader = Callable[[np.ndarray, str, Point], list[Decoded]]


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


_CELL = 8  # cell side (px, at half resolution) of the gradient-energy map
#: Below this ratio of weakest to strongest gradient-energy direction (at half
#: resolution), a textured region is smeared along one direction: motion blur. Measured
#: on two corpus seeds: motion-blurred codes 0.29-0.54; sharp, defocused, rotated,
#: tilted, small codes and busy code-free scenes 0.67-1.0 (perspective the lowest).
_MOTION_ANISOTROPY = 0.6
_WIENER_K = 0.01  # noise-to-signal term; 0.005-0.02 read the same frames, 0.05 lost some


@dataclass(frozen=True)
class MotionBlur:
    """Where the textured (code-like) region is and how it is smeared."""

    #: ROI in frame pixels: x0, y0, x1, y1 (end-exclusive).
    box: tuple[int, int, int, int]
    #: Blur direction, degrees counter-clockwise from the x axis (as ``_line_psf``).
    angle: float
    #: Weakest / strongest gradient energy over the region (1 = isotropic).
    anisotropy: float


def _tensor(sxx: float, syy: float, sxy: float) -> tuple[float, float]:
    """Anisotropy (weak / strong eigenvalue) and blur angle of a gradient structure tensor.

    The strongest gradient direction (x right, y down) is across the smear; the blur runs
    perpendicular to it. ``_line_psf`` angles are counter-clockwise with y up, hence the
    sign flip.
    """
    half_tr = (sxx + syy) / 2
    if half_tr <= 0:
        return 1.0, 0.0
    disc = float(np.sqrt(max(half_tr * half_tr - (sxx * syy - sxy * sxy), 0.0)))
    across = 0.5 * float(np.degrees(np.arctan2(2 * sxy, sxx - syy)))
    return (half_tr - disc) / (half_tr + disc), float((-(across + 90.0)) % 180.0)


def find_motion_blur(gray: np.ndarray) -> MotionBlur | None:
    """The code-like region of ``gray`` and its blur direction, or None when there is no
    textured region or it is not smeared along one direction.

    A QR code has as many edges across x as across y (in its own axes, so at any rotation
    its gradient structure tensor is nearly isotropic); a straight shake removes the
    gradient energy along its direction only. The decision costs one Sobel pass at half
    resolution and some 40x30-cell sums (~0.5 ms on 640x480), so frames without a smeared
    code (nearly all of them) never pay for deconvolution.
    """
    h, w = gray.shape
    # Half resolution: the smear is still several pixels long, at a quarter of the cost.
    small = cv2.resize(gray, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
    bh, bw = small.shape[0] // _CELL, small.shape[1] // _CELL
    if bh < 3 or bw < 3:
        return None
    g = small[: bh * _CELL, : bw * _CELL]
    gx = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3)

    def cells(a: np.ndarray) -> np.ndarray:
        mean: np.ndarray = cv2.resize(a, (bw, bh), interpolation=cv2.INTER_AREA)
        return mean

    jxx, jyy, jxy = cells(gx * gx), cells(gy * gy), cells(gx * gy)
    energy = jxx + jyy
    flat = energy.ravel()
    k98, k50 = int(0.98 * (flat.size - 1)), flat.size // 2
    part = np.partition(flat, (k50, k98))
    top = float(part[k98])
    if top <= 8.0 * float(part[k50]):  # nothing stands out of the sensor noise
        return None
    mask = (energy >= 0.25 * top).astype(np.uint8)
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n < 2:
        return None
    comp_energy = np.bincount(labels.ravel(), weights=flat, minlength=n)[1:]
    best = int(np.argmax(comp_energy)) + 1
    sel = labels == best
    anisotropy, _ = _tensor(float(jxx[sel].sum()), float(jyy[sel].sum()), float(jxy[sel].sum()))
    if anisotropy >= _MOTION_ANISOTROPY:
        return None
    # Every component nearly as strong as the best one: a second code shares the shake.
    keep = [i + 1 for i, e in enumerate(comp_energy) if e >= 0.25 * comp_energy[best - 1]]
    scale = 2 * _CELL
    x0 = min(int(stats[i, cv2.CC_STAT_LEFT]) for i in keep) * scale
    y0 = min(int(stats[i, cv2.CC_STAT_TOP]) for i in keep) * scale
    x1 = max(int(stats[i, cv2.CC_STAT_LEFT] + stats[i, cv2.CC_STAT_WIDTH]) for i in keep)
    y1 = max(int(stats[i, cv2.CC_STAT_TOP] + stats[i, cv2.CC_STAT_HEIGHT]) for i in keep)
    m = scale  # the blur and the cell grid both blunt the region's edge
    box = (max(0, x0 - m), max(0, y0 - m), min(w, x1 * scale + m), min(h, y1 * scale + m))
    # The angle at full resolution, over the region only: half resolution and the
    # background cost up to 7 degrees, and deconvolution tolerates about 5.
    roi = gray[box[1] : box[3], box[0] : box[2]]
    fx = cv2.Sobel(roi, cv2.CV_32F, 1, 0, ksize=3)
    fy = cv2.Sobel(roi, cv2.CV_32F, 0, 1, ksize=3)
    _, angle = _tensor(float((fx * fx).sum()), float((fy * fy).sum()), float((fx * fy).sum()))
    return MotionBlur(box, angle, anisotropy)


def blur_length(roi: np.ndarray, angle: float, *, longest: int = 20) -> float:
    """Blur length in pixels along ``angle``, from the cepstrum of ``roi``.

    A straight blur of length L multiplies the spectrum by a sinc whose zeros repeat
    every 1/L; in the cepstrum (spectrum of the log spectrum) that shows as a negative
    peak at distance L along the blur direction. Measured: within 0.5 px of the true
    length on every motion-blurred corpus frame.
    """
    h, w = roi.shape
    f = roi.astype(np.float32)
    f -= float(f.mean())
    f *= cv2.createHanningWindow((w, h), cv2.CV_32F)
    spec = cv2.dft(f, flags=cv2.DFT_COMPLEX_OUTPUT)
    logmag = np.log(cv2.magnitude(spec[..., 0], spec[..., 1]) + 1e-3)
    # The log spectrum is real and even, so its forward transform is the (unscaled) real
    # cepstrum; only where its minimum lies matters.
    cep = np.fft.fftshift(cv2.dft(logmag, flags=cv2.DFT_COMPLEX_OUTPUT)[..., 0])
    longest = max(4, min(longest, min(h, w) // 4))
    r = np.arange(3.0, longest + 0.5, 0.5, dtype=np.float32)
    t = np.radians(angle)
    xs = (w // 2 + r * np.cos(t)).astype(np.float32)[None, :]
    ys = (h // 2 - r * np.sin(t)).astype(np.float32)[None, :]
    profile = cv2.remap(cep, xs, ys, cv2.INTER_LINEAR)[0]
    return float(r[int(np.argmin(profile))])


def wiener_deblur(roi: np.ndarray, length: int, angle: float, k: float = _WIENER_K) -> np.ndarray:
    """Wiener deconvolution of a straight blur, in the frequency domain (one forward and
    one inverse DFT of the ROI; replicate-padded so the wrap-around ringing stays off it)."""
    h, w = roi.shape
    pad = length + 8
    ph, pw = cv2.getOptimalDFTSize(h + 2 * pad), cv2.getOptimalDFTSize(w + 2 * pad)
    img = cv2.copyMakeBorder(
        roi, pad, ph - h - pad, pad, pw - w - pad, cv2.BORDER_REPLICATE
    ).astype(np.float32)
    size = 2 * (length // 2 + 2) + 1
    psf = np.zeros((ph, pw), np.float32)
    psf[:size, :size] = _line_psf(length, angle, size)
    psf = np.roll(psf, (-(size // 2), -(size // 2)), (0, 1))
    hf = cv2.dft(psf, flags=cv2.DFT_COMPLEX_OUTPUT)
    hr, hi = hf[..., 0], hf[..., 1]
    den = hr * hr + hi * hi + np.float32(k)
    filt = np.dstack((hr / den, hi / den))  # conj(H) / (|H|^2 + k), conj via CONJB below
    spec = cv2.dft(img, flags=cv2.DFT_COMPLEX_OUTPUT)
    out = cv2.mulSpectrums(spec, filt, 0, conjB=True)
    res = cv2.idft(out, flags=cv2.DFT_REAL_OUTPUT | cv2.DFT_SCALE)
    return np.clip(res[pad : pad + h, pad : pad + w], 0, 255).astype(np.uint8)


#: Adaptive-threshold block (px) and offset for the finder-pattern count: a block of ~3
#: modules of a typical code keeps finder rings under screen banding and thermal fade;
#: the offset keeps flat, noisy areas from making runs.
_FINDER_BLOCK, _FINDER_C = 21, 7
_FINDER_STEP = 2  # every 2nd row and column: a finder's 3-module core spans 4+ px
_FINDER_HITS = 2  # scans of each direction that must cross one finder
_FINDER_CELL = 8  # px: hits of row and column scans meet within a cell (and its neighbours)


def _finder_centres(b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows, columns and module sizes (px) at the centres of dark-light-dark-light-dark
    runs in 1:1:3:1:1 proportion (a QR finder pattern crossed through its middle) along
    the rows of ``b`` (uint8, 1 = dark). Vectorised over all runs of the image at once."""
    bp = cv2.copyMakeBorder(b, 0, 0, 1, 1, cv2.BORDER_CONSTANT, value=0)
    pts = cv2.findNonZero(cv2.absdiff(bp[:, 1:], bp[:, :-1]))
    if pts is None or len(pts) < 6:
        none = np.zeros(0, np.int32)
        return none, none, none.astype(np.float32)
    pts = pts.reshape(-1, 2)
    cols, rows = pts[:, 0], pts[:, 1]
    n = rows.size - 5
    # Six transitions on one row bound five runs; the first must start a dark run.
    ok = (rows[5:] == rows[:-5]) & (bp[rows[:-5], cols[:-5] + 1] == 1)
    runs = np.diff(cols).astype(np.float32)
    unit = (cols[5:] - cols[:-5]).astype(np.float32) / np.float32(7.0)
    ok &= unit >= 1.3
    for k, modules, tol in ((0, 1, 0.5), (1, 1, 0.5), (2, 3, 0.9), (3, 1, 0.5), (4, 1, 0.5)):
        ok &= np.abs(runs[k : k + n] - modules * unit) <= np.maximum(tol * unit, 1.0)
    i = np.nonzero(ok)[0]
    return rows[i], (cols[i + 2] + cols[i + 3]) // 2, unit[i]


def find_finder_patterns(gray: np.ndarray) -> list[tuple[float, float, float]]:
    """Places that look like a QR finder pattern, as (x, y, module size) in pixels:
    crossed in 1:1:3:1:1 proportion by both a row and a column scan (what zbar looks
    for). Text, shapes and random texture cross that way along one direction, rarely
    along both at the same place."""
    b = cv2.adaptiveThreshold(
        gray, 1, cv2.ADAPTIVE_THRESH_MEAN_C, cv2.THRESH_BINARY_INV, _FINDER_BLOCK, _FINDER_C
    )
    h, w = b.shape
    step, cell = _FINDER_STEP, _FINDER_CELL
    across = np.zeros((h // cell + 1, w // cell + 1), np.uint8)
    down = np.zeros_like(across)
    units = np.zeros(across.shape, np.float32)
    r, c, u = _finder_centres(b[::step])
    np.add.at(across, (r * step // cell, c // cell), 1)
    np.add.at(units, (r * step // cell, c // cell), u)
    r, c, u = _finder_centres(cv2.transpose(b[:, ::step]))
    np.add.at(down, (c // cell, r * step // cell), 1)
    np.add.at(units, (c // cell, r * step // cell), u)
    k = np.ones((2, 2), np.uint8)
    both = (cv2.dilate(across, k) >= _FINDER_HITS) & (cv2.dilate(down, k) >= _FINDER_HITS)
    n, labels, _, centroids = cv2.connectedComponentsWithStats(both.astype(np.uint8))
    hits = across.astype(np.float32) + down
    near = np.ones((3, 3), np.uint8)
    places = []
    for j in range(1, n):
        around = cv2.dilate((labels == j).astype(np.uint8), near) > 0
        count = float(hits[around].sum())
        if count:
            x, y = centroids[j]
            places.append((float(x) * cell, float(y) * cell, float(units[around].sum()) / count))
    return places


def looks_like_qr(places: list[tuple[float, float, float]]) -> bool:
    """Two finder-like places of about the same module size at least 11 modules apart,
    as two finders of one symbol are (14 or more; a version-1 code is 21 modules wide).
    Noise makes finder-like places too, but mostly alone or in clumps."""
    for i, (x1, y1, u1) in enumerate(places):
        for x2, y2, u2 in places[i + 1 :]:
            if 0.6 * u2 <= u1 <= u2 / 0.6 and np.hypot(x1 - x2, y1 - y2) >= 5.5 * (u1 + u2):
                return True
    return False


class QrDecoder:
    """Reads every QR code in a frame; never raises, whatever the array."""

    def __init__(self, *, use_zxing: bool = True) -> None:
        self.use_zxing = use_zxing and zxingcpp is not None
        if use_zxing and zxingcpp is None:
            log.warning("zxing-cpp is not installed; decoding with pyzbar only")
        if not self.use_zxing and zbar_decode is None:
            log.error("neither zxing-cpp nor pyzbar is usable: no code will ever be read")

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
        found = _zxing(gray, "zxing")
        if found:
            return found
        # A 2x2 closing lifts the thin dark gaps of a phone screen's pixel grid (a code's
        # modules are wider): the finder count sees through the moire, and so does
        # zxing-cpp once the closed frame is upscaled.
        closed = cv2.morphologyEx(gray, cv2.MORPH_CLOSE, np.ones((2, 2), np.uint8))
        finders = looks_like_qr(find_finder_patterns(closed))
        if finders:
            # No try_downscale: downscaling would undo the sharpening.
            found = _zxing(_sharpen(gray, 2.0, 1.0), "zxing-sharpen", downscale=False)
        if not found:
            found = self._motion(gray, _zxing_reader)  # its own gate: smeared finders
        if found or not finders:
            return found
        if zbar_decode is not None:
            found = _zbar(gray, "zbar")
        if not found:
            # 2x cubic: more pixels per module of a dense code (~3 px at the door) for
            # zxing-cpp's sampler.
            up = cv2.resize(closed, None, fx=2.0, fy=2.0, interpolation=cv2.INTER_CUBIC)
            found = _zxing(up, "zxing-screen", downscale=False, scale=0.5)
        return found

    def _motion(self, gray: np.ndarray, read: Reader) -> list[Decoded]:
        """Undo a straight motion blur around the code-like region, if there is one."""
        blur = find_motion_blur(gray)
        if blur is None:
            return []
        x0, y0, x1, y1 = blur.box
        roi = gray[y0:y1, x0:x1]
        est = blur_length(roi, blur.angle)
        lo = int(np.floor(est))
        # The nearest whole lengths first; deconvolution tolerates +-5 degrees but not a
        # length off by 2.
        lengths = [lo, lo + 1] if est > lo else [lo, lo - 1, lo + 1]
        for length in lengths:
            if length < 2:
                continue
            found = read(wiener_deblur(roi, length, blur.angle), "motion", (x0, y0))
            if found:
                return found
        return []

    def _decode_zbar(self, gray: np.ndarray) -> list[Decoded]:
        if zbar_decode is None:
            return []
        found = _zbar(gray, "zbar")
        if not found:
            found = _zbar(cv2.bitwise_not(gray), "zbar-inverted")
        if not found:
            found = _zbar(_sharpen(gray, 2.0, 1.0), "zbar-sharpen")
        if not found:
            found = self._motion(gray, _zbar_reader)
        return found


def _zxing(
    img: np.ndarray,
    stage: str,
    *,
    downscale: bool = True,
    offset: Point = (0, 0),
    scale: float = 1.0,
) -> list[Decoded]:
    results = zxingcpp.read_barcodes(
        np.ascontiguousarray(img),
        formats=_QR_FORMAT,
        try_rotate=False,  # only matters for 1D codes; QR detection is rotation invariant
        try_downscale=downscale,
        try_invert=True,
    )
    found: list[Decoded] = []
    seen: set[str] = set()
    for r in results:
        if r.valid and r.text and r.text not in seen:
            seen.add(r.text)
            pos = r.position
            poly = tuple(
                (int(p.x * scale) + offset[0], int(p.y * scale) + offset[1])
                for p in (pos.top_left, pos.top_right, pos.bottom_right, pos.bottom_left)
            )
            found.append(Decoded(r.text, poly, stage))
    return found


def _zxing_reader(img: np.ndarray, stage: str, offset: Point) -> list[Decoded]:
    return _zxing(img, f"zxing-{stage}", downscale=False, offset=offset)


def _zbar_reader(img: np.ndarray, stage: str, offset: Point) -> list[Decoded]:
    return _zbar(img, f"zbar-{stage}", offset=offset)


def _zbar(img: np.ndarray, stage: str, *, offset: Point = (0, 0)) -> list[Decoded]:
    found: list[Decoded] = []
    seen: set[str] = set()
    for s in zbar_decode(img, symbols=[ZBarSymbol.QRCODE]):
        text = s.data.decode("utf-8", errors="replace")
        if text and text not in seen:
            seen.add(text)
            poly = tuple((int(p.x) + offset[0], int(p.y) + offset[1]) for p in s.polygon)
            found.append(Decoded(text, poly, stage))
    return found


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
