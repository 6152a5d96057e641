"""Text for the screens: a CJK font as Kivy's default, its Simplified Chinese face, and a
text provider that opens each font face once.

Kivy ships only Roboto, which has no Chinese glyphs. The font found here is registered
under Kivy's default font name, so every Label and Button picks it up without a
`font_name` in each .kv rule.

Two things Kivy's own SDL2 text provider gets wrong for a kiosk, fixed by `SharedFaceLabel`:

- It opens the font once per size (and weight): every distinct font size keeps its own
  copy of the CJK font's tables, about 2.5 MB each, so twenty sizes cost 50 MB.
  `SharedFaceLabel` keeps one FreeType face per font file and sets its size per call.
- It always opens the first face of a collection: NotoSansCJK-Regular.ttc starts with the
  Japanese face, whose 返, 过, 直, 令 are not the shapes a Chinese reader expects.
  Here the Simplified Chinese face of the collection is used.

The faces read their font file through `pread`, not a memory map: a mapped 19 MB CJK font
stays resident page by page as glyphs are drawn, 64 kB around each, so every new name at
the door would keep more of it (400 random characters: 21 MB for two weights). Read,
the two faces cost a fixed 4.5 MB (the tables FreeType keeps), and each glyph is drawn
once into the glyph cache.
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import shutil
import subprocess
from collections import OrderedDict
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Set to a font file to override the search (e.g. a shop's brand font with CJK glyphs).
FONT_ENV = "O2O_UI_FONT"

#: Where Debian/Raspberry Pi OS, Fedora and Arch put CJK fonts, best first.
KNOWN_FONTS = (
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/google-noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJKsc-Regular.otf",
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",
)
_FONT_SUFFIXES = (".ttf", ".otf", ".ttc")
#: The face of a collection to use: the Simplified Chinese one (Noto Sans CJK SC).
CHINESE_FAMILY = "CJK SC"


def _fc_match(family: str) -> Path | None:
    fc_match = shutil.which("fc-match")
    if fc_match is None:
        return None
    try:
        found = subprocess.run(
            [fc_match, "-f", "%{file}", family],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    path = Path(found) if found else None
    # fc-match always answers something; only a real CJK family will do.
    if path and path.suffix.lower() in _FONT_SUFFIXES and "cjk" in path.name.lower():
        return path if path.is_file() else None
    return None


def find_cjk_font() -> Path | None:
    """The regular-weight CJK font file to use, or None when the machine has none."""
    override = os.environ.get(FONT_ENV)
    if override:
        if Path(override).is_file():
            return Path(override)
        log.warning("%s=%s: no such font file; searching the system fonts", FONT_ENV, override)
    found = _fc_match("Noto Sans CJK SC")
    if found:
        return found
    return next((Path(p) for p in KNOWN_FONTS if Path(p).is_file()), None)


def _bold_of(regular: Path) -> Path | None:
    bold = regular.with_name(regular.name.replace("Regular", "Bold"))
    return bold if bold != regular and bold.is_file() else None


def chinese_face_index(path: str | Path) -> int:
    """The index of the Simplified Chinese face in a font collection (0 for a single font
    or a collection without one)."""
    import freetype

    first = freetype.Face(str(path), 0)
    count = int(first.num_faces)
    if count <= 1:
        return 0
    for index in range(count):
        face = first if index == 0 else freetype.Face(str(path), index)
        family = (face.family_name or b"").decode("utf-8", "replace")
        if family.endswith(CHINESE_FAMILY):  # not "Noto Sans Mono CJK SC"
            return index
    return 0


# --- the text provider ----------------------------------------------------------------------

#: (font file, face index) -> the one FreeType face for it, shared by every size.
_faces: dict[tuple[str, int], Any] = {}
#: Font file -> the face of it to use (files not listed: their first face).
_face_index: dict[str, int] = {}
#: Glyph cache: (font file, size, character) -> (advance 26.6, left, top, coverage or None).
_glyphs: OrderedDict[tuple[str, int, str], tuple[int, int, int, Any]] = OrderedDict()
#: Enough for the glyphs of every screen in both languages; one at 40 px is ~1.6 kB.
GLYPH_CACHE = 2048


class _StreamRec(ctypes.Structure):
    """FreeType's `FT_StreamRec` (ftsystem.h): a font file read through callbacks."""


_READ = ctypes.CFUNCTYPE(
    ctypes.c_ulong,
    ctypes.POINTER(_StreamRec),
    ctypes.c_ulong,
    ctypes.POINTER(ctypes.c_ubyte),
    ctypes.c_ulong,
)
_StreamRec._fields_ = [
    ("base", ctypes.c_void_p),
    ("size", ctypes.c_ulong),
    ("pos", ctypes.c_ulong),
    ("descriptor", ctypes.c_void_p),
    ("pathname", ctypes.c_void_p),
    ("read", _READ),
    ("close", ctypes.c_void_p),
    ("memory", ctypes.c_void_p),
    ("cursor", ctypes.c_void_p),
    ("limit", ctypes.c_void_p),
]
_FT_OPEN_STREAM = 0x2


def _open_face(path: str, index: int) -> Any:
    """A freetype-py face reading `path` with `pread` (see the module docstring)."""
    import freetype
    from freetype import raw

    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        size = os.fstat(fd).st_size
    except OSError:
        os.close(fd)
        raise

    def read(_stream: Any, offset: int, buffer: Any, count: int) -> int:
        if count == 0:  # a seek: 0 means it can be done
            return 0 if offset <= size else 1
        try:
            data = os.pread(fd, count, offset)
            ctypes.memmove(buffer, data, len(data))
        except Exception:  # nothing may escape into C: a short read is FreeType's error
            return 0
        return len(data)

    callback = _READ(read)
    stream = _StreamRec(size=size, read=callback)
    args = freetype.FT_Open_Args(flags=_FT_OPEN_STREAM)
    args.stream = ctypes.cast(ctypes.pointer(stream), ctypes.c_void_p)
    handle = freetype.FT_Face()
    error = raw.FT_Open_Face(freetype.get_handle(), ctypes.byref(args), index, ctypes.byref(handle))
    if error:
        os.close(fd)
        raise freetype.FT_Exception(error)
    face = freetype.Face.__new__(freetype.Face)
    face._FT_Face, face._index, face._name_strings, face._filebodys = handle, index, {}, []
    # FreeType reads through these for as long as the face lives (faces live as long
    # as the process: `_faces` keeps them).
    face._o2o_stream = (stream, callback, fd)
    return face


def _face(path: str, size: int) -> Any:
    key = (path, _face_index.get(path, 0))
    face = _faces.get(key)
    if face is None:
        face = _faces[key] = _open_face(*key)
    if face.size.x_ppem != size:
        face.set_pixel_sizes(0, size)
    return face


def _glyph(path: str, size: int, char: str) -> tuple[int, int, int, Any]:
    key = (path, size, char)
    glyph = _glyphs.get(key)
    if glyph is not None:
        _glyphs.move_to_end(key)
        return glyph
    import freetype
    import numpy as np

    face = _face(path, size)
    face.load_char(char, freetype.FT_LOAD_RENDER | freetype.FT_LOAD_TARGET_NORMAL)
    slot = face.glyph
    bitmap = slot.bitmap._FT_Bitmap
    coverage = None
    if bitmap.rows and bitmap.width:
        # Copied out as bytes: np.ctypeslib.as_array would make a ctypes array type per
        # glyph shape, which ctypes caches for good (a slow leak over a day of names).
        pitch = abs(bitmap.pitch)
        raw = ctypes.string_at(bitmap.buffer, bitmap.rows * pitch)
        rows = np.frombuffer(raw, np.uint8).reshape(bitmap.rows, pitch)
        coverage = rows[:, : bitmap.width].copy()
        if bitmap.pitch < 0:
            coverage = coverage[::-1]
    glyph = (int(slot.advance.x), int(slot.bitmap_left), int(slot.bitmap_top), coverage)
    _glyphs[key] = glyph
    if len(_glyphs) > GLYPH_CACHE:
        _glyphs.popitem(last=False)
    return glyph


def _metrics(path: str, size: int) -> tuple[int, int]:
    """Ascent and descent (negative) in pixels, rounded outwards as SDL_ttf does."""
    face = _face(path, size)
    return math.ceil(face.size.ascender / 64), math.floor(face.size.descender / 64)


def shared_face_label() -> type:
    """Kivy's text-provider class drawing with FreeType faces opened once (see the module
    docstring); made on demand so that importing this module does not import Kivy."""
    import numpy as np
    from kivy.core.image import ImageData
    from kivy.core.text import LabelBase

    class SharedFaceLabel(LabelBase):
        def _font(self) -> tuple[str, int]:
            return str(self.options["font_name_r"]), max(1, int(self.options["font_size"]))

        def get_extents(self, text: str) -> tuple[int, int]:
            path, size = self._font()
            ascent, descent = _metrics(path, size)
            advance = sum(_glyph(path, size, c)[0] for c in text)
            return math.ceil(advance / 64), ascent - descent

        def get_cached_extents(self) -> Any:
            return self.get_extents

        def get_ascent(self) -> int:
            return _metrics(*self._font())[0]

        def get_descent(self) -> int:
            return _metrics(*self._font())[1]

        def _render_begin(self) -> None:
            self._layers: dict[tuple[float, ...], Any] = {}  # colour -> coverage

        def _render_text(self, text: str, x: float, y: float) -> None:
            path, size = self._font()
            ascent, _ = _metrics(path, size)
            width, height = self._size
            color = tuple(self.options["color"])
            coverage = self._layers.get(color)
            if coverage is None:
                coverage = self._layers[color] = np.zeros((height, width), np.uint8)
            pen, baseline = int(x) * 64, int(y) + ascent
            for char in text:
                advance, left, top, bitmap = _glyph(path, size, char)
                if bitmap is not None:
                    gx, gy = pen // 64 + left, baseline - top
                    x0, y0 = max(gx, 0), max(gy, 0)
                    x1 = min(gx + bitmap.shape[1], width)
                    y1 = min(gy + bitmap.shape[0], height)
                    if x1 > x0 and y1 > y0:
                        target = coverage[y0:y1, x0:x1]
                        np.maximum(target, bitmap[y0 - gy : y1 - gy, x0 - gx : x1 - gx], target)
                pen += advance

        def _render_end(self) -> Any:
            width, height = self._size
            rgba = np.zeros((height, width, 4), np.uint8)
            for color, coverage in self._layers.items():  # markup: a layer per colour
                mask = coverage > 0
                for channel in range(3):
                    rgba[..., channel][mask] = int(color[channel] * 255)
                alpha = (coverage.astype(np.uint16) * int(color[3] * 255) // 255).astype(np.uint8)
                np.maximum(rgba[..., 3], alpha, rgba[..., 3])
            self._layers = {}
            return ImageData(width, height, "rgba", rgba.tobytes())

    return SharedFaceLabel


def install_text_provider() -> None:
    """Make `SharedFaceLabel` Kivy's text provider. Call before `kivy.uix.label` is
    imported (the labels and the markup labels bind the provider at import)."""
    import sys

    import kivy.core.text as core_text

    if "kivy.uix.label" in sys.modules or "kivy.core.text.markup" in sys.modules:
        log.warning("Kivy's labels are already imported: keeping its own text provider")
        return
    if core_text.Label.__name__ == "SharedFaceLabel":
        return
    core_text.Label = core_text.Text = shared_face_label()


def register_default_font() -> Path | None:
    """Make a CJK font Kivy's default (regular + bold), drawn by `SharedFaceLabel` from its
    Simplified Chinese face. Returns its file, or None."""
    from kivy.core.text import DEFAULT_FONT, LabelBase

    install_text_provider()
    regular = find_cjk_font()
    if regular is None:
        log.warning(
            "no CJK font found: Chinese text will show as boxes "
            "(install fonts-noto-cjk, or set %s to a font file)",
            FONT_ENV,
        )
        return None
    bold = _bold_of(regular) or regular
    for path in {regular, bold}:
        _face_index[str(path)] = chinese_face_index(path)
    LabelBase.register(DEFAULT_FONT, fn_regular=str(regular), fn_bold=str(bold))
    log.info("UI font: %s (face %d)", regular, _face_index[str(regular)])
    return regular
