"""A CJK-capable font as Kivy's default, so Chinese renders as text, not as boxes.

Kivy ships only Roboto, which has no Chinese glyphs. The font found here is registered
under Kivy's default font name, so every Label and Button picks it up without a
`font_name` in each .kv rule.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from pathlib import Path

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


def register_default_font() -> Path | None:
    """Make a CJK font Kivy's default (regular + bold). Returns its file, or None."""
    from kivy.core.text import DEFAULT_FONT, LabelBase

    regular = find_cjk_font()
    if regular is None:
        log.warning(
            "no CJK font found: Chinese text will show as boxes "
            "(install fonts-noto-cjk, or set %s to a font file)",
            FONT_ENV,
        )
        return None
    # Kivy's SDL2 text provider opens the first face of a .ttc collection (for Noto
    # Sans CJK that is the JP face); it still covers every simplified Chinese glyph.
    LabelBase.register(
        DEFAULT_FONT, fn_regular=str(regular), fn_bold=str(_bold_of(regular) or regular)
    )
    log.info("UI font: %s", regular)
    return regular
