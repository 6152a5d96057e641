"""Synthetic camera-like QR frames for tests and benchmarks.

A shop door camera sees codes on phone screens and paper: blurred, tilted, dark, glared,
compressed. Real footage cannot ship with the repository, so this module renders such
frames deterministically from a seed; tests and ``bench/bench_decode.py`` share it so that
read rates measured in one are the ones asserted in the other.

Two sets: ``DISTORTIONS``, one camera fault at a time on a code of a typical length, and
``HARD_DISTORTIONS`` (``hard_frames``), rendered another way on purpose: dense codes from
long real signed tokens, codes whose quiet zone the frame edge cuts or the surroundings
fill, 5-15 degree rotations, phone screens with moire and refresh banding, faded thermal
slips, and their combinations, each through a camera whose softness, noise and JPEG
quality vary per frame.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import zlib
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

#: Frames made differently from ``DISTORTIONS``: what an end-to-end run at a door showed
#: and what a shop's codes and screens are. Names starting with ``dense`` show a long token.
HARD_DISTORTIONS: tuple[str, ...] = (
    "dense",
    "edge_cut",
    "no_quiet_zone",
    "rotated_5_15",
    "screen",
    "thermal",
    "dense_rotated_edge",
    "dense_screen",
    "screen_rotated_edge",
    "thermal_rotated",
)

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


_NAMES = ("王小明", "Li Na", "陈思远", "Alexandra Montgomery-Whitfield", "欧阳娜娜", "Zhang Wei")
_CAMPAIGNS = ("春季十次卡·咖啡与甜点", "周末团购 双人下午茶套餐", "Flash sale: pastries", "会员日")
_SEASONS = ("spring", "member-day", "weekend")
_VALUES = ("满100减20，周二至周五下午可用", "¥10 off", "买一送一（限饮品）", "20% off any cake")


def sample_dense_token(rng: Rng) -> str:
    """A real signed token as long as a rich one gets (400-800 characters: QR version
    15-22 at level M): a campaign coupon with a Chinese name, value, hours and uses, or a
    reservation with a customer name and service. Signed with a key drawn from ``rng``
    (Ed25519 signing is deterministic, so the corpus stays reproducible)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from o2o_protocol.codes import issue_code

    key = Ed25519PrivateKey.from_private_bytes(rng.bytes(32))
    iat = int(rng.integers(1_700_000_000, 1_800_000_000))
    city = rng.choice(["shanghai-jingan", "beijing-chaoyang", "shenzhen-nanshan"])
    store = f"store-{city}-0{int(rng.integers(1, 9))}"
    code_id = base64.urlsafe_b64encode(rng.bytes(int(rng.integers(9, 24)))).decode().rstrip("=")
    n_windows = int(rng.integers(1, 4))
    hours = [
        {
            "days": sorted({int(d) for d in rng.integers(1, 8, size=int(rng.integers(2, 6)))}),
            "from": f"{int(rng.integers(6, 12)):02d}:{int(rng.choice([0, 30])):02d}",
            "to": f"{int(rng.integers(13, 23)):02d}:{int(rng.choice([0, 30])):02d}",
        }
        for _ in range(n_windows)
    ]
    if rng.random() < 0.7:
        fields: dict[str, object] = {
            "type": "c",
            "exp": iat + 30 * 86400,
            "cp": f"campaign-{int(rng.integers(1000, 99999))}-{rng.choice(_SEASONS)}",
            "v": str(rng.choice(_VALUES)),
            "cn": str(rng.choice(_CAMPAIGNS)),
            "ck": str(rng.choice(["coupon", "group_buy", "flash_sale", "visit_card"])),
            "hrs": hours,
            "n": str(rng.choice(_NAMES)),
        }
        if fields["ck"] == "visit_card":
            fields["uses"] = int(rng.integers(2, 21))
    else:
        fields = {
            "type": "r",
            "exp": iat + 2 * 86400,
            "at": iat + 86400,
            "n": str(rng.choice(_NAMES)),
            "sv": str(
                rng.choice(
                    ["洗剪吹 + 护理（资深发型师）", "Latte art workshop for two", "儿童烘焙体验课"]
                )
            ),
            "ac": f"act-{int(rng.integers(10**6, 10**9))}",
        }
    return issue_code(key, id=f"cp-{code_id}", store=store, iat=iat, **fields)  # type: ignore[arg-type]


@functools.lru_cache(maxsize=256)
def _matrix(text: str, mask: int | None = None) -> np.ndarray:
    """Module matrix, 1 = dark; cached because segno's choice of mask is slow (0.2 s for
    a dense code). ``mask`` fixes the mask pattern instead (any one reads the same)."""
    matrix = np.array(segno.make(text, error="m", mask=mask).matrix, dtype=np.uint8)
    matrix.flags.writeable = False
    return matrix


@functools.lru_cache(maxsize=256)
def _symbol(text: str, quiet: int = 4, mask: int | None = None) -> np.ndarray:
    """The symbol with ``quiet`` modules of quiet zone as an image, 0 = dark."""
    matrix = np.pad(_matrix(text, mask), quiet, constant_values=0)
    img = np.where(matrix > 0, 0, 255).astype(np.uint8)
    img.flags.writeable = False
    return img


def qr_card(text: str, size: int, quiet: int = 4, mask: int | None = None) -> np.ndarray:
    """The code with ``quiet`` modules of quiet zone as a ``size`` x ``size`` grayscale
    image (dark on light)."""
    img = _symbol(text, quiet, mask)
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


def _placement(rng: Rng, size: float, angle: float = 0.0, tilt: float = 0.0) -> np.ndarray:
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


# -- the hard set ---------------------------------------------------------------------------


def _mask(text: str) -> int:
    """The hard set's mask pattern: fixed per text (no rng draw), so segno need not score
    all eight, which took most of the time the hard set took to render."""
    return zlib.crc32(text.encode()) % 8


def _modules(text: str) -> int:
    return int(_matrix(text, _mask(text)).shape[0])


def _symbol_corners(
    rng: Rng, side: float, quiet_px: float, angle: float, tilt: float, edges: Sequence[str]
) -> np.ndarray:
    """Corners (tl, tr, br, bl) of the symbol itself (no quiet zone) in the frame.

    Without ``edges`` the quiet zone stays in frame; with them, the code is pushed against
    those frame edges until only 0-2.5 modules of its quiet zone are left there (less than
    the 4 the standard asks for, and none on the frame's side of the edge)."""
    card = _placement(rng, side + 2 * quiet_px, angle, tilt)
    centre = card.mean(axis=0)
    sym = centre + (card - centre) * (side / (side + 2 * quiet_px))
    for edge in edges:
        margin = float(rng.uniform(0.0, 2.5)) * quiet_px / 4
        if edge == "left":
            sym[:, 0] += margin - sym[:, 0].min()
        elif edge == "right":
            sym[:, 0] += (WIDTH - 1 - margin) - sym[:, 0].max()
        elif edge == "top":
            sym[:, 1] += margin - sym[:, 1].min()
        else:
            sym[:, 1] += (HEIGHT - 1 - margin) - sym[:, 1].max()
    return sym


def _edges(rng: Rng) -> list[str]:
    """One frame edge, or two meeting at a corner (a code held into a corner of the view)."""
    horizontal = str(rng.choice(["left", "right"]))
    vertical = str(rng.choice(["top", "bottom"]))
    first, second = (horizontal, vertical) if rng.random() < 0.5 else (vertical, horizontal)
    return [first, second] if rng.random() < 0.3 else [first]


def _paste_surface(
    dst: np.ndarray,
    surface: np.ndarray,
    box: tuple[float, float, float, float],
    corners: np.ndarray,
) -> np.ndarray:
    """Warp ``surface`` (BGR) so that its ``box`` (the symbol: x0, y0, x1, y1) lands on
    ``corners``; returns the mask of frame pixels it covers. Linear interpolation without
    a prefilter: a finely patterned surface (a screen's pixel grid) aliases into moire, as
    on a camera sensor."""
    x0, y0, x1, y1 = box
    src = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float32)
    m = cv2.getPerspectiveTransform(src, corners.astype(np.float32))
    warped = cv2.warpPerspective(surface, m, (WIDTH, HEIGHT), flags=cv2.INTER_LINEAR)
    cover = cv2.warpPerspective(
        np.full(surface.shape[:2], 255, np.uint8), m, (WIDTH, HEIGHT), flags=cv2.INTER_LINEAR
    )
    mask = cover > 127
    dst[mask] = warped[mask]
    return mask


def _card_surface(text: str, module_px: float, quiet: int, tint: np.ndarray) -> np.ndarray:
    """A printed card (white paper): the code and its quiet zone only."""
    n = _modules(text) + 2 * quiet
    card = qr_card(text, round(n * module_px), quiet, _mask(text))
    return np.clip(card[..., None].astype(np.float32) * tint, 0, 255).astype(np.uint8)


def _no_quiet_surface(
    text: str, module_px: float, rng: Rng
) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """The code with 0-1 modules of quiet zone on a poster whose dark border or print
    (text, lines, blocks) runs right up to it."""
    dark = rng.random() < 0.5
    # A dark surround right at the symbol would extend its finder patterns' outer rings:
    # no decoder could find them, nor a phone camera. One light module is what is left.
    quiet = 1 if dark else int(rng.integers(0, 2))
    n = _modules(text)
    side = round((n + 2 * quiet) * module_px)
    pad = round(8 * module_px)
    full = side + 2 * pad
    if dark:
        surface = np.full((full, full, 3), int(rng.integers(15, 70)), np.uint8)
    else:
        surface = np.full((full, full, 3), int(rng.integers(170, 240)), np.uint8)
        for _ in range(int(rng.integers(12, 25))):
            color = tuple(int(v) for v in rng.integers(0, 90, size=3))
            p1 = (int(rng.integers(0, full)), int(rng.integers(0, full)))
            if rng.random() < 0.5:
                cv2.putText(
                    surface,
                    "SALE 50% 新品",
                    p1,
                    cv2.FONT_HERSHEY_SIMPLEX,
                    float(rng.uniform(0.5, 1.5)),
                    color,
                    int(rng.integers(1, 4)),
                )
            else:
                p2 = (int(rng.integers(0, full)), int(rng.integers(0, full)))
                cv2.rectangle(surface, p1, p2, color, int(rng.integers(-1, 5)))
    card = qr_card(text, side, quiet, _mask(text))
    surface[pad : pad + side, pad : pad + side] = card[..., None]
    q = quiet * side / (n + 2 * quiet)
    return surface, (pad + q, pad + q, pad + side - q, pad + side - q)


_SCREEN_SCALE = 3  # screen surfaces are drawn at 3x camera resolution, pixel grid included


def _screen_surface(
    text: str, module_px: float, rng: Rng
) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """A phone showing the code: app header, white margin, the screen's pixel grid (dark
    gaps between pixels, 1.1-1.9 camera pixels apart: aliases into moire), a black level
    lifted by reflections, a bluish white, and the phone's dark bezel around it."""
    s = _SCREEN_SCALE
    n = _modules(text) + 8
    code = round(n * module_px * s)
    sw, sh = round(code * 1.12), round(code * 1.55)
    bezel = round(code * 0.06)
    white, black = float(rng.uniform(200, 250)), float(rng.uniform(12, 45))
    lum = np.full((sh, sw), white, np.float32)
    ox, oy = (sw - code) // 2, round(sh * 0.3)
    card = qr_card(text, code, 4, _mask(text)).astype(np.float32) / 255.0
    lum[oy : oy + code, ox : ox + code] = black + card * (white - black)
    lum[: round(sh * 0.08)] = float(rng.uniform(60, 160))  # app header bar
    period = float(rng.uniform(1.1, 1.9)) * s
    fill = float(rng.uniform(0.6, 0.8))
    lit_x = (np.arange(sw, dtype=np.float32) % period) < fill * period
    lit_y = (np.arange(sh, dtype=np.float32) % period) < fill * period
    gap = float(rng.uniform(0.35, 0.7))
    norm = 1.0 / (1.0 - gap * (1 - fill * fill))  # keeps the screen's mean brightness
    lum *= np.where(lit_y[:, None] & lit_x[None, :], np.float32(norm), np.float32(norm * (1 - gap)))
    tint = np.array([1.0, rng.uniform(0.92, 0.98), rng.uniform(0.82, 0.92)], np.float32)
    screen = np.clip(lum[..., None] * tint, 0, 255).astype(np.uint8)
    body = np.full((sh + 2 * bezel, sw + 2 * bezel, 3), int(rng.integers(10, 40)), np.uint8)
    body[bezel : bezel + sh, bezel : bezel + sw] = screen
    q = 4 * code / n
    x0, y0 = bezel + ox + q, bezel + oy + q
    return body, (x0, y0, x0 + code - 2 * q, y0 + code - 2 * q)


def _thermal_surface(
    text: str, module_px: float, rng: Rng
) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """A receipt from a thermal printer: off-white paper, grey rather than black print that
    fades across the slip, missing dots, and white streaks along the paper feed where a
    heating element is weak."""
    n = _modules(text) + 8
    code = round(n * module_px)
    sw, sh = round(code * 1.35), round(code * 2.0)
    paper = float(rng.uniform(200, 240))
    ox, oy = (sw - code) // 2, round(sh * 0.35)
    ink = np.zeros((sh, sw), np.float32)
    ink[oy : oy + code, ox : ox + code] = (
        1.0 - qr_card(text, code, 4, _mask(text)).astype(np.float32) / 255.0
    )
    lines = np.zeros((sh, sw), np.uint8)
    for i, words in enumerate(("O2O COFFEE", "2026-05-04 14:32", "TOTAL 38.00", "SCAN AT DOOR")):
        y = round(sh * 0.06) + i * round(sh * 0.06)
        cv2.putText(
            lines, words, (round(sw * 0.08), y), cv2.FONT_HERSHEY_SIMPLEX, code / 420, 255, 1
        )
    cv2.putText(
        lines,
        "THANK YOU",
        (round(sw * 0.2), round(sh * 0.94)),
        cv2.FONT_HERSHEY_SIMPLEX,
        code / 380,
        255,
        1,
    )
    ink = np.maximum(ink, lines.astype(np.float32) / 255.0)
    strength = float(rng.uniform(0.4, 0.75))  # how dark the darkest print still is
    fade = cv2.resize(
        np.array(
            [[1.0, rng.uniform(0.55, 0.95)], [rng.uniform(0.6, 1.0), rng.uniform(0.55, 0.9)]],
            np.float32,
        ),
        (sw, sh),
        interpolation=cv2.INTER_LINEAR,
    )
    dropped = rng.random((sh, sw)) > rng.uniform(0.05, 0.2)
    dots: np.ndarray = cv2.GaussianBlur(dropped.astype(np.float32), (0, 0), 0.7)
    for _ in range(int(rng.integers(0, 3))):
        x = int(rng.integers(ox, ox + code))
        dots[:, x : x + int(rng.integers(1, 3))] *= float(rng.uniform(0.1, 0.5))
    lum = paper * (1.0 - strength * fade * dots * ink)
    tint = np.array([rng.uniform(0.88, 0.95), rng.uniform(0.95, 0.99), 1.0], np.float32)
    slip = np.clip(lum[..., None] * tint, 0, 255).astype(np.uint8)
    q = 4 * code / n
    return slip, (ox + q, oy + q, ox + code - q, oy + code - q)


def _varied_camera(img: np.ndarray, rng: Rng) -> np.ndarray:
    """A camera unlike ``_camera``'s: lens softness, sensor noise and (for half the
    frames, as from a USB camera streaming MJPEG) JPEG quality vary per frame."""
    img = cv2.GaussianBlur(img, (0, 0), float(rng.uniform(0.45, 0.9)))
    n = rng.standard_normal(img.shape[:2], dtype=np.float32) * np.float32(rng.uniform(1.5, 5.0))
    img = np.clip(img.astype(np.int16) + n.astype(np.int16)[..., None], 0, 255).astype(np.uint8)
    if rng.random() < 0.5:
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(60, 92))])
        if ok:
            img = np.asarray(cv2.imdecode(buf, cv2.IMREAD_COLOR))
    return img


def make_hard_frame(
    text: str,
    distortion: str,
    rng: Rng,
    *,
    angle: float | None = None,
    edges: Sequence[str] | None = None,
) -> np.ndarray:
    """One 640x480 BGR frame of ``text`` under a ``HARD_DISTORTIONS`` entry.

    The code's size follows its density, as a customer holds a dense code closer: about
    2.8-3.6 camera pixels per module for a dense code (which then fills most of the
    frame's height), 3.6-4.8 for a typical one (a 250-330 px card like ``DISTORTIONS``').
    ``angle`` (degrees) and ``edges`` (frame edges that cut the quiet zone: ``"left"``,
    ``"right"``, ``"top"``, ``"bottom"``) pin what is otherwise drawn from ``rng``, to
    rebuild one frame seen at a door."""
    if distortion not in HARD_DISTORTIONS:
        raise ValueError(f"unknown distortion {distortion!r}; expected one of {HARD_DISTORTIONS}")
    img = background(rng, busy=rng.random() < 0.5)
    n = _modules(text)
    dense = distortion.startswith("dense")
    if dense:
        module = float(rng.uniform(2.8, 3.6))
        module = min(module, 0.92 * HEIGHT / (n + 8))
    else:
        module = float(rng.uniform(250, 330)) / (n + 8)
    if angle is None:
        rotated = "rotated" in distortion
        angle = float(rng.uniform(5, 15) * rng.choice([-1, 1]) if rotated else rng.uniform(-4, 4))
    tilt = float(rng.uniform(0.05, 0.15)) if "thermal" in distortion else 0.0
    if edges is None:
        edges = _edges(rng) if "edge" in distortion else []
    side, quiet_px = n * module, 4 * module
    if "screen" in distortion:
        surface, box = _screen_surface(text, module, rng)
    elif "thermal" in distortion:
        surface, box = _thermal_surface(text, module, rng)
    elif distortion == "no_quiet_zone":
        surface, box = _no_quiet_surface(text, module, rng)
    else:
        tint = np.array(rng.uniform(0.88, 1.0, size=3), np.float32)
        surface = _card_surface(text, module, 4, tint)
        q = 4 * surface.shape[0] / (n + 8)
        box = (q, q, surface.shape[1] - q, surface.shape[0] - q)
    corners = _symbol_corners(rng, side, quiet_px, angle, tilt, edges)
    mask = _paste_surface(img, surface, box, corners)
    if "screen" in distortion:
        # Refresh banding: the rolling shutter catches the screen's PWM dimming as bright
        # and dark horizontal bands across the screen only.
        period = float(rng.uniform(25, 120))
        depth = float(rng.uniform(0.15, 0.4))
        rows = np.arange(HEIGHT, dtype=np.float32)
        band = 1.0 - depth * (0.5 + 0.5 * np.sin(2 * np.pi * rows / period + rng.uniform(0, 6.3)))
        shaded = img.astype(np.float32) * band[:, None, None]
        img = np.where(mask[..., None], np.clip(shaded, 0, 255).astype(np.uint8), img)
    return _varied_camera(img, rng)


def hard_frames(per: int, seed: int) -> list[tuple[str, str, np.ndarray]]:
    """``(text, distortion, frame)``: ``per`` frames of every ``HARD_DISTORTIONS`` entry,
    each with its own token (a long real signed one for ``dense*``)."""
    rng = np.random.default_rng(seed)
    out: list[tuple[str, str, np.ndarray]] = []
    for d in HARD_DISTORTIONS:
        for _ in range(per):
            text = sample_dense_token(rng) if d.startswith("dense") else sample_token(rng)
            out.append((text, d, make_hard_frame(text, d, rng)))
    return out


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
