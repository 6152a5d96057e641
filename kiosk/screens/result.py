"""The result screen: one scan's outcome, in words a customer understands.

After a member's check-in it also offers the rewards the member can afford (a tap, then
an explicit yes, spends the points and prints a voucher), and after a check-in, a pickup
or an arrival a one-tap rating. Both are optional: the screen still goes back to the
start screen by itself, and every tap on them gives the customer the full time again.
What the panels say comes from `kiosk.screens.rewards`; the kiosk is asked through the
app's backend, and a late answer for an outcome no longer on screen is dropped.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from kivy.app import App
from kivy.factory import Factory
from kivy.properties import BooleanProperty, ColorProperty, NumericProperty, StringProperty
from kivy.uix.behaviors import ButtonBehavior
from kivy.uix.boxlayout import BoxLayout
from kivy.uix.widget import Widget

from kiosk.loyalty import MemberOffer, RatingSubject, RewardChoice, rating_subject
from kiosk.screens.base import BigButton, CustomerScreen, load_kv
from kiosk.screens.outcome import Outcome, ResultText
from kiosk.screens.palette import INK, OK_GREEN, result_colours
from kiosk.screens.rewards import (
    MAX_REWARDS,
    RATINGS,
    confirm_text,
    offer_member,
    rated_text,
    redeemed_text,
    reward_label,
)

#: Seconds a refusal stays when the app's settings do not say: a refusal and what to do
#: next take longer to read than a success.
REFUSAL_S = 10.0

#: States of the reward panel ("" when there is none) and of the rating row.
OFFER, CONFIRM, BUSY, DONE = "offer", "confirm", "busy", "done"
ASK = "ask"


class ResultIcon(Widget):
    """A tick (ok), a cross, or a clock (wait), drawn in the .kv, not taken from a font."""

    ok = BooleanProperty(True)
    wait = BooleanProperty(False)
    ink = ColorProperty(INK)


class RewardButton(BigButton):
    """One affordable reward: its name and price; a tap asks for a yes first."""

    reward_id = StringProperty("")


class ConfirmButton(BigButton):
    """Yes or no to spending points: yes in the shop's amber, no quieter."""

    yes = BooleanProperty(True)


class StarButton(ButtonBehavior, Widget):
    """One star of the rating row, drawn rather than taken from a font."""

    value = NumericProperty(0)
    lit = BooleanProperty(False)

    @staticmethod
    def star_points(cx: float, cy: float, size: float) -> list[float]:
        """The outline: ten corners, alternately outer and inner, the first one on top."""
        points = []
        for i in range(10):
            r = size * (0.46 if i % 2 == 0 else 0.19)
            points += [cx + r * math.sin(math.pi * i / 5), cy + r * math.cos(math.pi * i / 5)]
        return points

    @classmethod
    def star_vertices(cls, cx: float, cy: float, size: float) -> list[float]:
        """The filled shape as a triangle fan: the centre, the ten corners, the first again."""
        outline = cls.star_points(cx, cy, size)
        corners = [*outline, outline[0], outline[1]]
        vertices = [cx, cy, 0.0, 0.0]
        for i in range(0, len(corners), 2):
            vertices += [corners[i], corners[i + 1], 0.0, 0.0]
        return vertices


load_kv(__file__)


class ResultScreen(CustomerScreen):
    """Shows a `ResultText`, and the reward and rating panels an `Outcome` allows."""

    ok = BooleanProperty(True)
    #: A refusal that time will mend: amber, a clock, navy ink.
    wait = BooleanProperty(False)
    title = StringProperty("")
    detail = StringProperty("")
    extra = StringProperty("")
    #: Shown bigger than anything else (a pickup's locker number); "" for none.
    big = StringProperty("")
    fill = ColorProperty(OK_GREEN)
    ink = ColorProperty(INK)
    #: Seconds before a success goes back to the start screen, and a refusal.
    ok_s = NumericProperty(0.0)
    refusal_s = NumericProperty(REFUSAL_S)
    #: "" (no reward panel), OFFER, CONFIRM (waiting for a yes), BUSY (spending), DONE.
    reward_state = StringProperty("")
    #: "" (nothing to rate), ASK, BUSY (saving), DONE.
    rating_state = StringProperty("")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ok_s = self.timeout_s
        app = App.get_running_app()
        ui = getattr(app, "ui", None)
        if ui is not None:  # the kiosk's [ui] settings
            self.ok_s, self.refusal_s = ui.result_s, ui.refusal_s
        self._generation = 0
        self.offer: MemberOffer | None = None
        self.choice: RewardChoice | None = None
        self.redeemed: ResultText | None = None
        self.subject: RatingSubject | None = None
        self.rating = 0
        self.rated: ResultText | None = None
        #: The widgets the panels show now, for the .kv-free parts of the tests.
        self.reward_buttons: list[RewardButton] = []
        self.star_buttons: list[StarButton] = []
        self.confirm_buttons: dict[str, ConfirmButton] = {}
        self.panel_texts: list[str] = []
        self.rating_texts: list[str] = []
        self._rating_row: tuple[Any, Any, list[StarButton]] | None = None
        if app is not None:
            app.bind(language=lambda *_: self._render())

    # --- what is shown -----------------------------------------------------------------

    def show(self, text: ResultText, outcome: Outcome | None = None) -> None:
        """Show one outcome; a new one replaces the panels of the last."""
        self.ok, self.title, self.detail, self.extra = text.ok, text.title, text.detail, text.extra
        self.wait, self.big = text.wait, text.big
        self.fill, self.ink = result_colours(text.ok, text.wait)
        # Set before the app (re)starts the countdown for this outcome.
        self.timeout_s = self.ok_s if text.ok else max(self.refusal_s, self.ok_s)
        self._generation += 1
        self.offer = self.choice = self.redeemed = self.rated = self.subject = None
        self.rating = 0
        self.reward_state = self.rating_state = ""
        if outcome is not None and outcome.accepted and outcome.event_id:
            self.subject = rating_subject(outcome.event_type, outcome.event_id, outcome.data)
            self.rating_state = ASK if self.subject is not None else ""
            member = offer_member(outcome)
            backend = App.get_running_app().backend
            if member is not None and backend is not None:
                backend.offer(member, self._answer(self._offered))
        self._render()

    def _answer(self, fn: Callable[[Any], None]) -> Callable[[Any], None]:
        """A backend callback that is dropped once its outcome has left the screen: a late
        answer must not restart a timer that would pull the next customer off their screen.
        (The kiosk still did what was asked: a voucher still prints.)"""
        generation = self._generation

        def done(value: Any) -> None:
            showing = self.manager is not None and self.manager.current == self.name
            if showing and generation == self._generation:
                fn(value)

        return done

    def _offered(self, offer: MemberOffer | None) -> None:
        if offer is None or not offer.rewards:
            return  # nothing affordable, or the kiosk could not tell: no panel
        self.offer, self.reward_state = offer, OFFER
        self._render()

    # --- rewards -------------------------------------------------------------------------

    def pick(self, button: RewardButton) -> None:
        """A reward tapped: ask for a yes before any points are spent."""
        if self.offer is None or self.reward_state != OFFER:
            return
        self.choice = next((r for r in self.offer.rewards if r.id == button.reward_id), None)
        if self.choice is not None:
            self.reward_state = CONFIRM
            self.restart_timer()
            self._render()

    def confirm(self, yes: bool) -> None:
        if self.reward_state != CONFIRM or self.offer is None or self.choice is None:
            return
        self.restart_timer()
        if not yes:
            self.choice, self.reward_state = None, OFFER
            self._render()
            return
        backend = App.get_running_app().backend
        if backend is None:
            self._redeemed(Outcome("error"))
            return
        self.reward_state = BUSY
        self._render()
        backend.redeem(self.offer.member_id, self.choice.id, self._answer(self._redeemed))

    def _redeemed(self, outcome: Outcome) -> None:
        self.redeemed = redeemed_text(outcome, App.get_running_app().messages)
        self.reward_state = DONE
        self.restart_timer()  # time to read the answer
        self._render()

    # --- rating --------------------------------------------------------------------------

    def rate(self, star: StarButton) -> None:
        if self.subject is None or self.rating_state != ASK:
            return
        self.rating = int(star.value)
        self.rating_state = BUSY
        self.restart_timer()
        self._render()
        backend = App.get_running_app().backend
        if backend is None:
            self._rated(None)
            return
        backend.rate(self.subject, self.rating, self._answer(self._rated))

    def _rated(self, outcome: Outcome | None) -> None:
        self.rated = rated_text(outcome, App.get_running_app().messages)
        self.rating_state = DONE
        self._render()

    # --- drawing -------------------------------------------------------------------------

    def _render(self) -> None:
        """Rebuild both panels from the state, in the current language."""
        app = App.get_running_app()
        if app is None or not self.ids:
            return
        m = app.messages
        # While the customer is deciding or waiting, a thumb that misses a button must not
        # throw the decision away: it only restarts the countdown.
        self.stray_touch_goes_home = self.reward_state not in (CONFIRM, BUSY)
        self._render_rewards(m)
        self._render_rating(m)

    def _render_rewards(self, m: Any) -> None:
        panel = self.ids.rewards
        panel.clear_widgets()
        self.reward_buttons, self.confirm_buttons, self.panel_texts = [], {}, []

        def label(kind: str, text: str) -> None:
            self.panel_texts.append(text)
            panel.add_widget(getattr(Factory, kind)(text=text))

        if not self.reward_state or self.offer is None:
            return
        panel.add_widget(Widget())
        if self.reward_state == OFFER:
            label("PanelTitle", m.get("reward.title"))
            label("PanelNote", m.get("reward.balance", balance=self.offer.balance))
            for choice in self.offer.rewards[:MAX_REWARDS]:
                button = RewardButton(reward_id=choice.id, text=reward_label(choice, m))
                button.bind(on_release=self.pick)
                self.reward_buttons.append(button)
                panel.add_widget(button)
        elif self.reward_state == CONFIRM and self.choice is not None:
            label("PanelTitle", confirm_text(self.choice, m))
            row = BoxLayout(size_hint_y=None, spacing=panel.spacing)
            for key, yes in (("yes", True), ("no", False)):
                button = ConfirmButton(text=m.get(f"reward.{key}"), yes=yes)
                button.bind(on_release=lambda b: self.confirm(bool(b.yes)))
                self.confirm_buttons[key] = button
                row.add_widget(button)
            row.height = max(b.height for b in row.children)
            panel.add_widget(row)
        elif self.reward_state == BUSY:
            label("PanelTitle", m.get("reward.busy"))
        elif self.redeemed is not None:
            panel.add_widget(Factory.PanelIcon(ok=self.redeemed.ok))
            label("PanelTitle", self.redeemed.title)
            label("PanelNote", self.redeemed.detail)
            if self.redeemed.extra:
                label("PanelNote", self.redeemed.extra)
        panel.add_widget(Widget())

    def _rating_widgets(self) -> tuple[Any, Any, list[StarButton]]:
        """The question, the row and its stars: made once and shown again for every
        outcome that asks, rather than made anew per scan (a day's worth of widgets
        made and dropped leaves the process larger)."""
        if self._rating_row is None:
            label = Factory.RatingLabel(pos_hint={"center_y": 0.5})
            stars = Factory.StarRow(pos_hint={"center_x": 0.5, "center_y": 0.5})
            buttons = [StarButton(value=value) for value in RATINGS]
            for star in buttons:
                star.bind(on_release=self.rate)
                stars.add_widget(star)
            self._rating_row = (label, stars, buttons)
        return self._rating_row

    def _render_rating(self, m: Any) -> None:
        row = self.ids.rating
        row.clear_widgets()
        self.star_buttons, self.rating_texts = [], []
        if self.rating_state in (ASK, BUSY):
            label, stars, buttons = self._rating_widgets()
            label.text = m.get("rating.title")
            self.rating_texts.append(label.text)
            for star in buttons:
                star.lit = star.value <= self.rating
                star.disabled = self.rating_state == BUSY
            self.star_buttons = list(buttons)
            row.add_widget(label)
            row.add_widget(stars)
        elif self.rating_state == DONE and self.rated is not None:
            self.rating_texts.append(self.rated.title)
            row.add_widget(Factory.RatingThanks(text=self.rated.title))
