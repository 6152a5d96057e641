"""The result screen: one scan's outcome, in words a customer understands."""

from __future__ import annotations

from kivy.properties import BooleanProperty, StringProperty
from kivy.uix.widget import Widget

from kiosk.screens.base import CustomerScreen, load_kv
from kiosk.screens.outcome import ResultText


class ResultIcon(Widget):
    """A tick (ok) or a cross, drawn in the .kv rather than taken from a font."""

    ok = BooleanProperty(True)


load_kv(__file__)


class ResultScreen(CustomerScreen):
    """Shows a `ResultText`; goes back to the start screen after `timeout_s`."""

    ok = BooleanProperty(True)
    title = StringProperty("")
    detail = StringProperty("")
    extra = StringProperty("")

    def show(self, text: ResultText) -> None:
        self.ok, self.title, self.detail, self.extra = text.ok, text.title, text.detail, text.extra
