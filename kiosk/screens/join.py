"""The join screen: the shop's online sign-up as a QR code, and a keypad for a phone.

Typing a phone number joins on the spot (`KioskRuntime.join`, through the app's backend).
A number the kiosk refuses stays on screen, framed in amber under a big message, so the
person can fix one digit instead of typing it all again; it leaves the screen with the
screen (a join, the back button, or the timeout): the next person at the door must not
read it.
"""

from __future__ import annotations

import io
import logging
from typing import Any

from kivy.app import App
from kivy.core.image import Image as CoreImage
from kivy.properties import BooleanProperty, ObjectProperty, StringProperty

from kiosk.screens.base import CustomerScreen, load_kv

log = logging.getLogger(__name__)

#: E.164 allows 15 digits; more cannot be a phone number.
MAX_DIGITS = 15

load_kv(__file__)


def qr_png(url: str, *, scale: int = 8) -> bytes:
    """The sign-up QR as a PNG: black on white, with the quiet zone phones need."""
    import segno  # only when a join screen is built: it is seldom shown

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


def safe_qr_texture(url: str) -> Any:
    """`qr_texture`, or None for an empty or unencodable URL: a bad URL must not take
    the kiosk down."""
    url = url.strip()
    if not url:
        return None
    try:
        return qr_texture(url)
    except Exception:
        log.exception("cannot make a QR code of %r", url)
        return None


def group_digits(digits: str) -> str:
    """138 0013 8000: groups people can check against their phone at a glance."""
    if len(digits) <= 3:
        return digits
    head, rest = digits[:3], digits[3:]
    return " ".join([head, *(rest[i : i + 4] for i in range(0, len(rest), 4))])


class JoinScreen(CustomerScreen):
    """The sign-up QR (when the shop has a sign-up page) and a phone keypad."""

    stray_touch_goes_home = False

    qr_texture = ObjectProperty(None, allownone=True)
    has_qr = BooleanProperty(False)
    #: What has been typed so far, digits only.
    digits = StringProperty("")
    #: `digits` as shown: grouped for reading.
    shown = StringProperty("")
    #: A locale key for the line above the keypad ("" for none): a bad number, an error.
    message = StringProperty("")
    #: True from OK until the answer comes back: the keypad ignores presses meanwhile.
    busy = BooleanProperty(False)
    #: The message is a refusal or an error (drawn big, amber, the number framed).
    error = BooleanProperty(False)

    def on_message(self, _screen: Any, message: str) -> None:
        self.error = message not in ("", "join.busy")

    def set_url(self, url: str) -> None:
        self.qr_texture = safe_qr_texture(url)
        self.has_qr = self.qr_texture is not None

    def on_digits(self, _screen: Any, digits: str) -> None:
        self.shown = group_digits(digits)

    def press(self, digit: str) -> None:
        if self.busy or len(self.digits) >= MAX_DIGITS:
            return
        self.digits += digit
        self.message = ""

    def backspace(self) -> None:
        if not self.busy:
            self.digits = self.digits[:-1]
            self.message = ""

    def submit(self) -> None:
        """OK: hand the number to the app; it stays shown until the answer."""
        if self.busy:
            return
        if not self.digits:
            self.message = "join.phone_empty"
            return
        self.busy = True
        self.message = "join.busy"
        App.get_running_app().submit_phone(self.digits)

    def answer(self, message: str) -> None:
        """The join did not happen (a bad number, an error): say so beside the number
        as typed, and stay."""
        self.busy = False
        self.message = message
        self.restart_timer()

    def on_leave(self, *args: Any) -> None:
        super().on_leave(*args)
        self.reset()

    def reset(self) -> None:
        """Nothing typed, nothing said: the next person must not read this one's number."""
        self.digits, self.message, self.busy = "", "", False
