"""The join screen: the shop's online sign-up as a QR code for the customer's phone."""

from __future__ import annotations

import io
import logging
from typing import Any

import segno
from kivy.core.image import Image as CoreImage
from kivy.properties import BooleanProperty, ObjectProperty

from kiosk.screens.base import CustomerScreen, load_kv

log = logging.getLogger(__name__)

load_kv(__file__)


def qr_png(url: str, *, scale: int = 8) -> bytes:
    """The sign-up QR as a PNG: black on white, with the quiet zone phones need."""
    buf = io.BytesIO()
    segno.make(url, error="m", micro=False).save(
        buf, kind="png", scale=scale, border=4, dark="#000000", light="#ffffff"
    )
    return buf.getvalue()


def qr_texture(url: str) -> Any:
    """A Kivy texture of the sign-up QR, kept sharp when scaled up (no blurred modules)."""
    texture = CoreImage(io.BytesIO(qr_png(url)), ext="png").texture
    texture.mag_filter = "nearest"
    texture.min_filter = "nearest"
    return texture


class JoinScreen(CustomerScreen):
    """Shows the QR of `join_url`, or a short "ask our staff" when there is none."""

    qr_texture = ObjectProperty(None, allownone=True)
    has_qr = BooleanProperty(False)

    def set_url(self, url: str) -> None:
        url = url.strip()
        self.qr_texture = None
        if url:
            try:
                self.qr_texture = qr_texture(url)
            except Exception:  # a bad URL must not take the kiosk down
                log.exception("cannot make a QR code of ui.join_url %r", url)
        self.has_qr = self.qr_texture is not None
