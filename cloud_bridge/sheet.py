"""A printable sheet of codes (`o2o-bridge codes --sheet`): A4 pages of QR codes in a grid,
each with its id printed under it, for flyers and for cutting into vouchers.

300 dpi, 3 x 4 codes a page: a campaign code (some 400 characters) gets about 8 pixels
a module, about 6 cm across, which a kiosk camera reads from a hand's length; the id
under it lets staff find a code in the list (`issued_codes`) when a customer asks.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import segno
from PIL import Image, ImageDraw, ImageFont

#: A4 at 300 dpi.
DPI = 300
PAGE = (2480, 3508)
COLUMNS, ROWS = 3, 4
PER_PAGE = COLUMNS * ROWS
MARGIN = 120
LABEL = 48


def _qr(token: str, size: int) -> Image.Image:
    qr = segno.make(token, error="m", micro=False)
    modules = qr.symbol_size(scale=1, border=4)[0]
    scale = max(1, size // modules)
    buf = io.BytesIO()
    qr.save(buf, kind="png", scale=scale, border=4)
    buf.seek(0)
    return Image.open(buf).convert("L")


def pages(codes: Sequence[tuple[str, str]]) -> list[Image.Image]:
    """The sheet's pages for `(id, code)` pairs, in order, PER_PAGE to a page."""
    font = ImageFont.load_default(size=LABEL)
    cell_w = (PAGE[0] - 2 * MARGIN) // COLUMNS
    cell_h = (PAGE[1] - 2 * MARGIN) // ROWS
    size = min(cell_w, cell_h - 2 * LABEL) - 40
    out = []
    for first in range(0, len(codes), PER_PAGE):
        page = Image.new("L", PAGE, 255)
        draw = ImageDraw.Draw(page)
        for i, (id, token) in enumerate(codes[first : first + PER_PAGE]):
            col, row = i % COLUMNS, i // COLUMNS
            x0, y0 = MARGIN + col * cell_w, MARGIN + row * cell_h
            qr = _qr(token, size)
            page.paste(qr, (x0 + (cell_w - qr.width) // 2, y0))
            draw.text(
                (x0 + cell_w // 2, y0 + qr.height + LABEL // 2),
                id,
                fill=0,
                font=font,
                anchor="mt",
            )
        out.append(page)
    return out


def write_sheet(codes: Sequence[tuple[str, str]], path: Path) -> int:
    """Write the sheet: one PNG page, or a PDF of as many pages as it takes; returns the
    number of pages. ValueError for another suffix, or a PNG that would need more than
    one page; OSError when the file cannot be written."""
    kind = path.suffix.lower()
    if kind not in (".png", ".pdf"):
        raise ValueError(f"--sheet: {path} must end in .png or .pdf")
    if kind == ".png" and len(codes) > PER_PAGE:
        raise ValueError(
            f"--sheet: a PNG holds one page ({PER_PAGE} codes); write a PDF for {len(codes)}"
        )
    images = pages(codes)
    if kind == ".png":
        images[0].save(path, dpi=(DPI, DPI))
    else:
        images[0].save(path, "PDF", resolution=DPI, save_all=True, append_images=images[1:])
    return len(images)
