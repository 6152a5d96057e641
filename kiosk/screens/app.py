"""The Kivy app: screens, navigation and language. It knows nothing of scanning.

Outcomes come in through `show_outcome` and `show_background` (on the UI thread); the
screens' blocking calls go out through `backend` (see `kiosk.screens.backend`).
`kiosk.ui` wires the scan pipeline and the kiosk runtime to it. Tests build it without any
of those.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from kivy.app import App
from kivy.clock import Clock
from kivy.core.window import Window
from kivy.properties import BooleanProperty, NumericProperty, StringProperty
from kivy.uix.screenmanager import Screen, ScreenManager, TransitionBase

from kiosk.config import UiSection
from kiosk.i18n import Messages, next_language
from kiosk.screens.backend import Backend, staff_message
from kiosk.screens.base import START, CustomerScreen
from kiosk.screens.join import JoinScreen
from kiosk.screens.joined import JoinedScreen
from kiosk.screens.outcome import Outcome, describe
from kiosk.screens.result import ResultScreen
from kiosk.screens.staff import StaffScreen
from kiosk.screens.start import StartScreen
from o2o_protocol.messages import EventType

log = logging.getLogger(__name__)

RESULT = "result"
JOIN = "join"
JOINED = "joined"
STAFF = "staff"
#: The join screen waits longer than a result: people need time to get their phone out.
JOIN_S = 30.0
#: Staff mode ends after this long without a touch or a scan, or when the session ends.
STAFF_IDLE_S = 90.0
#: A language chosen by one customer goes back to the shop's default after this idle time.
LANGUAGE_RESET_S = 60.0
#: How long the next screen takes to fade in.
FADE_S = 0.15
#: The layout is drawn for 1024x600; other screens scale it (800x480 -> 0.8).
DESIGN_SIZE = (1024, 600)


class OpacityFade(TransitionBase):
    """The next screen fades in over the last one, by its opacity alone.

    Kivy's FadeTransition renders both screens into two new window-sized framebuffers on
    every change and the process keeps growing (kivy/kivy#7478): 250 -> 381 MB over 60
    scans. This one allocates nothing per change, so a kiosk can run for months.
    """

    def on_progress(self, progression: float) -> None:
        self.screen_in.opacity = progression

    def on_complete(self) -> None:
        self.screen_in.opacity = 1.0
        super().on_complete()


class Screens(ScreenManager):
    """A screen manager that builds some screens on first use and lets them go once left.

    The join, joined and staff screens are seldom shown: built up front they would hold
    their widgets, textures (the sign-up QR, a keypad) and glyphs for the whole day, a few
    MB of a Raspberry Pi's memory. `get_screen` (and so `current = name`) builds one from
    its factory when needed; when it has been left, it is removed and freed. Build them
    on the UI thread only, as any widget.
    """

    def __init__(self, factories: dict[str, Callable[[], Screen]], **kwargs: Any) -> None:
        self._factories = factories
        super().__init__(**kwargs)

    def get_screen(self, name: str) -> Screen:
        if name in self._factories and not self.has_screen(name):
            screen = self._factories[name]()
            screen.bind(on_leave=self._let_go)
            self.add_widget(screen)
        return super().get_screen(name)

    def _let_go(self, screen: Screen) -> None:
        # After the fade (on_leave), on the next frame: not from inside the transition.
        Clock.schedule_once(lambda _dt: self._remove_if_left(screen))

    def _remove_if_left(self, screen: Screen) -> None:
        if screen.manager is self and self.current != screen.name:
            self.remove_widget(screen)


class KioskApp(App):
    """The touch UI. Call its methods on the UI thread only."""

    #: Current UI language; .kv texts are bound to it through `t(key, app.language)`.
    language = StringProperty("zh_CN")
    #: Layout scale for the window size, so the same .kv fits 1024x600 and 800x480.
    scale = NumericProperty(1.0)
    #: True while the camera is failing: the start screen asks people to see the staff.
    camera_problem = BooleanProperty(False)
    #: Small print in a corner of the start screen (store and kiosk id) for the staff.
    store_label = StringProperty("")

    def __init__(self, ui: UiSection, *, store_label: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ui = ui
        self.default_language = ui.language
        self.language = ui.language
        self.store_label = store_label
        self._messages = Messages(ui.language)
        self._language_reset: Any = None
        self.title = self._messages.get("app.title")
        #: The blocking calls behind the screens; set by `kiosk.ui.Session`.
        self.backend: Backend | None = None

    # -- strings ----------------------------------------------------------------------

    @property
    def messages(self) -> Messages:
        return self._messages

    def t(self, key: str, _language: str = "", **fields: Any) -> str:
        """A UI string. .kv rules pass `app.language` as `_language` only so that Kivy
        re-evaluates them when the language changes."""
        return self._messages.get(key, **fields)

    def on_language(self, _app: Any, language: str) -> None:
        self._messages = Messages(language)
        self.title = self._messages.get("app.title")

    def toggle_language(self) -> None:
        self.set_language(next_language(self.language))

    def set_language(self, language: str) -> None:
        self.language = language
        if self._language_reset is not None:
            self._language_reset.cancel()
            self._language_reset = None
        if language != self.default_language:
            self._language_reset = Clock.schedule_once(
                lambda _dt: self._reset_language(), LANGUAGE_RESET_S
            )

    def _reset_language(self) -> None:
        self._language_reset = None
        if self.root is not None and self.root.current == START:
            self.language = self.default_language
        else:  # not in the middle of someone's result: try again later
            self.set_language(self.language)

    # -- building ---------------------------------------------------------------------

    def build(self) -> ScreenManager:
        """The start and result screens, shown all day; the others on first use."""
        sm = Screens(
            {JOIN: self._join_screen, JOINED: self._joined_screen, STAFF: self._staff_screen},
            transition=OpacityFade(duration=FADE_S),
        )
        sm.add_widget(StartScreen(name=START))
        sm.add_widget(ResultScreen(name=RESULT, timeout_s=self.ui.result_s))
        sm.current = START
        Window.bind(size=self._rescale)
        self._rescale(Window, Window.size)
        return sm

    def _join_screen(self) -> JoinScreen:
        join = JoinScreen(name=JOIN, timeout_s=max(JOIN_S, self.ui.result_s))
        join.set_url(self.ui.join_url)
        return join

    def _joined_screen(self) -> JoinedScreen:
        return JoinedScreen(name=JOINED, timeout_s=max(JOIN_S, self.ui.result_s))

    def _staff_screen(self) -> StaffScreen:
        return StaffScreen(name=STAFF, timeout_s=STAFF_IDLE_S)

    def _rescale(self, _window: Any, size: tuple[int, int]) -> None:
        width, height = size
        self.scale = max(0.5, min(width / DESIGN_SIZE[0], height / DESIGN_SIZE[1]))

    # -- navigation -------------------------------------------------------------------

    @property
    def screen_name(self) -> str:
        return str(self.root.current) if self.root is not None else ""

    def show_outcome(self, outcome: Outcome) -> None:
        """Show one scan's outcome; a new outcome replaces the one on screen. A staff
        code opens the staff screen; while it is up, outcomes are news on its banner."""
        if self.root is None:
            return
        if outcome.event_type == EventType.STAFF_LOGIN and outcome.accepted:
            staff: StaffScreen = self.root.get_screen(STAFF)
            data = outcome.data
            staff.login(str(data.get("name") or data.get("staff_id") or ""))
            self.root.current = STAFF
            return
        if self.root.current == STAFF:
            self.root.get_screen(STAFF).show_message(staff_message(outcome, self._messages))
            return
        screen: ResultScreen = self.root.get_screen(RESULT)
        screen.show(describe(outcome, self._messages), outcome)
        if self.root.current == RESULT:
            screen.restart_timer()
        else:
            self.root.current = RESULT
        if self._language_reset is not None:
            self.set_language(self.language)  # someone is using it: keep their language

    def show_background(self, outcome: Outcome) -> None:
        """An outcome nobody scanned just now (a door shut on a loaded order, a printer
        fault): news for the staff screen; a customer's screen is left alone."""
        if self.root is not None and self.root.current == STAFF:
            self.root.get_screen(STAFF).show_message(staff_message(outcome, self._messages))

    def submit_phone(self, phone: str) -> None:
        """The join screen's OK: join on the backend's thread, answer in `_joined`."""
        if self.backend is None:
            self.root.get_screen(JOIN).answer("join.error")
            return
        self.backend.join(phone, self._joined)

    def _joined(self, outcome: Outcome | None) -> None:
        if self.root is None or self.root.current != JOIN:
            return  # they left meanwhile; the slip still prints
        if outcome is None:
            self.root.get_screen(JOIN).answer("join.bad_phone")
        elif outcome.event_type != EventType.MEMBER_JOINED:  # ERROR: the disk, most likely
            self.root.get_screen(JOIN).answer("join.error")
        else:
            self.root.get_screen(JOINED).show(outcome.data)
            self.root.get_screen(JOIN).reset()  # gone at once, not at the end of the fade
            self.root.current = JOINED

    def show_join(self) -> None:
        if self.root is not None:
            self.root.current = JOIN

    def go_home(self) -> None:
        if self.root is not None:
            screen = self.root.current_screen
            if isinstance(screen, CustomerScreen):
                screen.go_home()
