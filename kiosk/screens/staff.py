"""The staff screen: pending preorders, the lockers (touch one to open it), a reprint.

Shown while a staff code's session lasts. It reads the kiosk through the app's backend
(a `StaffSnapshot`, refreshed every second) and never touches a store or a relay itself.
Leaving it, by the exit button, by inactivity or because the session ran out, ends staff
mode, so the next customer's pickup code opens their locker rather than starting a load.
"""

from __future__ import annotations

from typing import Any

from kivy.app import App
from kivy.clock import Clock
from kivy.properties import BooleanProperty, NumericProperty, StringProperty

from kiosk.screens.backend import (
    FAULT,
    FREE,
    HOLDS,
    OPEN,
    StaffMessage,
    StaffSnapshot,
    locker_text,
    preorders_text,
    status_text,
)
from kiosk.screens.base import BigButton, CustomerScreen, load_kv
from kiosk.screens.outcome import short_name

#: How often the lists, the doors and the status line are read again.
REFRESH_S = 1.0

#: Button colours per locker state: free green, holding an order amber, open blue, fault red.
LOCKER_FILLS = {
    FREE: (0.09, 0.47, 0.22, 1.0),
    HOLDS: (1.0, 0.76, 0.03, 1.0),
    OPEN: (0.16, 0.45, 0.85, 1.0),
    FAULT: (0.70, 0.15, 0.12, 1.0),
}
LOCKER_INKS = {HOLDS: (0.06, 0.13, 0.23, 1.0)}
WHITE = (0.96, 0.97, 0.99, 1.0)


class LockerButton(BigButton):
    """One locker; a touch opens it."""

    number = NumericProperty(0)


load_kv(__file__)


class StaffScreen(CustomerScreen):
    """Staff mode. `login(name)` when a staff code is scanned, `show_message` for news."""

    stray_touch_goes_home = False

    staff_name = StringProperty("")
    preorders = StringProperty("")
    status = StringProperty("")
    message = StringProperty("")
    message_ok = BooleanProperty(True)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._poll: Any = None
        self._asking = False
        self._snapshot: StaffSnapshot | None = None
        self._lines: dict[tuple[float, float], tuple[float, float]] = {}
        # How many orders fit depends on the list's height: list again when it changes.
        self.ids.preorders.bind(height=lambda *_: self._render())

    def login(self, name: str) -> None:
        self.staff_name = short_name(name)
        self.message = ""
        self.restart_timer()
        self.refresh()

    # --- reading the kiosk -----------------------------------------------------------

    def on_pre_enter(self, *args: Any) -> None:
        super().on_pre_enter(*args)
        if self._poll is None:
            self._poll = Clock.schedule_interval(lambda _dt: self.refresh(), REFRESH_S)

    def refresh(self) -> None:
        """Ask for a new snapshot, unless one is still on its way (a slow relay)."""
        backend = App.get_running_app().backend
        if backend is None or self._asking:
            return
        self._asking = True
        backend.staff_snapshot(self.apply)

    def apply(self, snap: StaffSnapshot) -> None:
        self._asking = False
        if self.manager is None or self.manager.current != self.name:
            return  # answered after staff left
        if not snap.active:
            self.go_home()  # the staff session ran out
            return
        self._snapshot = snap
        self._render()

    def _render(self) -> None:
        snap = self._snapshot
        if snap is None:
            return
        m = App.get_running_app().messages
        self.preorders = preorders_text(snap, m, rows=self._preorder_rows())
        self.status = status_text(snap, m)
        grid = self.ids.lockers
        if [b.number for b in grid.children[::-1]] != [v.number for v in snap.lockers]:
            grid.clear_widgets()
            for view in snap.lockers:
                grid.add_widget(LockerButton(number=view.number, on_release=self._open))
            grid.cols = 2 if len(snap.lockers) <= 4 else (3 if len(snap.lockers) <= 9 else 4)
        for button, view in zip(grid.children[::-1], snap.lockers, strict=True):
            button.text = locker_text(view, m)
            button.fill = LOCKER_FILLS.get(view.state, LOCKER_FILLS[FAULT])
            button.ink = LOCKER_INKS.get(view.state, WHITE)

    def _preorder_rows(self) -> int:
        """Orders that fit the list's panel, one a line, keeping a line for "N more"."""
        label = self.ids.preorders
        first, line = self._line_heights(label.font_size, label.line_height)
        fit = 1 + int(max(0.0, label.height - first) // line) if line > 0 else 1
        return max(1, fit - 1)

    def _line_heights(self, font_size: float, line_height: float) -> tuple[float, float]:
        """The height of one line of the list, and of each further line, as drawn."""
        key = (font_size, line_height)
        if key not in self._lines:
            from kivy.core.text import Label as CoreLabel

            heights = []
            for text in ("D-1", "D-1\nD-2"):
                core = CoreLabel(text=text, font_size=font_size, line_height=line_height)
                core.refresh()
                heights.append(float(core.texture.height) if core.texture else 0.0)
            self._lines[key] = (heights[0], heights[1] - heights[0])
        return self._lines[key]

    # --- staff actions ---------------------------------------------------------------

    def _open(self, button: LockerButton) -> None:
        app = App.get_running_app()
        if app.backend is None:
            return
        m = app.messages
        self.show_message(StaffMessage(True, m.get("staff.opening", locker=button.number)))
        app.backend.staff_open(int(button.number), app.show_outcome)

    def reprint(self) -> None:
        app = App.get_running_app()
        if app.backend is not None:
            app.backend.reprint(self._reprinted)

    def _reprinted(self, title: str | None) -> None:
        m = App.get_running_app().messages
        if title is None:
            self.show_message(StaffMessage(False, m.get("staff.nothing_to_reprint")))
        else:
            self.show_message(StaffMessage(True, m.get("staff.reprinted", title=title)))

    def show_message(self, message: StaffMessage) -> None:
        if self.manager is None or self.manager.current != self.name:
            return  # a late answer after staff left must not start a timer on a hidden screen
        self.message, self.message_ok = message.text, message.ok
        self.restart_timer()
        self.refresh()

    def on_leave(self, *args: Any) -> None:
        super().on_leave(*args)
        if self._poll is not None:
            self._poll.cancel()
            self._poll = None
        self._snapshot = None
        self.message = ""
        backend = App.get_running_app().backend
        if backend is not None:
            backend.end_staff()
