"""The start screen: what a customer sees walking up to the door.

While it is shown it asks the backend for a snapshot every few seconds, only to learn
whether the broker is there: when it has been away a while, a banner says the kiosk
works offline (scans still count; points catch up later), and goes once it is back.
"""

from __future__ import annotations

import time
from typing import Any

from kivy.app import App
from kivy.clock import Clock
from kivy.properties import BooleanProperty, NumericProperty
from kivy.uix.screenmanager import Screen

from kiosk.screens.backend import StaffSnapshot
from kiosk.screens.base import load_kv, release_free_memory

#: How often the start screen asks whether the kiosk is online.
ONLINE_POLL_S = 3.0
#: Offline for less than this shows nothing: a reconnect, or the first seconds after start.
OFFLINE_GRACE_S = 10.0

load_kv(__file__)


class StartScreen(Screen):
    """Idle screen; its texts follow `app.language` through the .kv bindings."""

    #: Taller than wide: the .kv stacks the scan icon above the words.
    portrait = BooleanProperty(False)
    #: The offline banner is up.
    offline = BooleanProperty(False)
    offline_grace_s = NumericProperty(OFFLINE_GRACE_S)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._poll: Any = None
        self._asking = False
        self._offline_since: float | None = None

    def on_enter(self, *args: Any) -> None:
        release_free_memory()
        self.check_online()
        if self._poll is None:
            self._poll = Clock.schedule_interval(lambda _dt: self.check_online(), ONLINE_POLL_S)

    def on_leave(self, *args: Any) -> None:
        if self._poll is not None:
            self._poll.cancel()
            self._poll = None

    def check_online(self) -> None:
        """Ask once, unless an answer is still on its way."""
        app = App.get_running_app()
        backend = getattr(app, "backend", None)
        if backend is None or self._asking:
            return
        self._asking = True
        backend.staff_snapshot(self.online_is)

    def online_is(self, snap: StaffSnapshot) -> None:
        self._asking = False
        if snap.online:
            self._offline_since = None
        elif self._offline_since is None:
            self._offline_since = time.monotonic()
        since = self._offline_since
        self.offline = since is not None and time.monotonic() - since >= self.offline_grace_s
