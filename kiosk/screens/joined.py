"""After a join at the keypad: welcome, and the QR that takes the new member online.

A kiosk holds public keys only and cannot sign a member code itself. When the bridge has
given it a pre-signed member code (docs/members.md, code pools) the QR is the member's own
page, which is also their member card; otherwise it is the shop's sign-up link with the
new member id, and the phone gets the real code there.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kivy.properties import BooleanProperty, ObjectProperty

from kiosk.screens.base import CustomerScreen, load_kv
from kiosk.screens.join import safe_qr_texture
from kiosk.screens.result import ResultIcon

__all__ = ["JoinedScreen", "ResultIcon"]  # ResultIcon: drawn by joined.kv

load_kv(__file__)


class JoinedScreen(CustomerScreen):
    """Shows one `member.joined` outcome; `known` when the phone was already a member."""

    known = BooleanProperty(False)
    qr_texture = ObjectProperty(None, allownone=True)
    has_qr = BooleanProperty(False)
    #: The QR opens the member's own page (a pre-signed code), not the sign-up link.
    is_page = BooleanProperty(False)

    def show(self, data: Mapping[str, Any]) -> None:
        self.known = bool(data.get("known"))
        page = str(data.get("page_url") or "")
        self.is_page = "://" in page
        url = page if self.is_page else str(data.get("join_url") or "")
        # Without a sign-up page configured the "link" is the bare member id: no QR then.
        self.qr_texture = safe_qr_texture(url) if "://" in url else None
        self.has_qr = self.qr_texture is not None
