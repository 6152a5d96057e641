"""What the screens may ask of the kiosk, and the plain data they get back. No Kivy.

Screens never hold the kiosk runtime: every call below blocks (disk, locker relays, printer
queue), so `kiosk.ui.Session` runs it on its worker thread and hands the answer back on
the UI thread. Tests can give the app any object with these methods.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from kiosk.i18n import Messages
from kiosk.loyalty import MemberOffer, RatingSubject
from kiosk.screens.outcome import LOADING, Outcome, describe, short_name
from o2o_protocol.messages import EventType

#: Locker states as the staff screen shows them, worst first.
FAULT, OPEN, HOLDS, FREE = "fault", "open", "holds", "free"


@dataclass(frozen=True)
class LockerView:
    number: int
    state: str
    order: str | None = None


@dataclass(frozen=True)
class PreorderView:
    order: str
    name: str | None = None


@dataclass(frozen=True)
class StaffSnapshot:
    """One look at the kiosk for the staff screen, taken off the UI thread."""

    active: bool
    preorders: Sequence[PreorderView] = ()
    lockers: Sequence[LockerView] = ()
    printer: str = "unknown"
    camera: str = "none"
    outbox: int = 0
    online: bool = False


@dataclass(frozen=True)
class StaffMessage:
    """The staff screen's banner: what just happened, good news or not."""

    ok: bool
    text: str


class Backend(Protocol):
    """The blocking calls behind the screens; `done` is always called on the UI thread."""

    def join(self, phone: str, done: Callable[[Outcome | None], None]) -> None: ...

    def staff_snapshot(self, done: Callable[[StaffSnapshot], None]) -> None: ...

    def staff_open(self, number: int, done: Callable[[Outcome], None]) -> None: ...

    def reprint(self, done: Callable[[str | None], None]) -> None: ...

    def end_staff(self) -> None: ...

    def offer(self, member_id: str, done: Callable[[MemberOffer | None], None]) -> None:
        """The rewards a member can afford now; None when the kiosk cannot tell."""

    def redeem(self, member_id: str, reward_id: str, done: Callable[[Outcome], None]) -> None:
        """Spend points on a reward; `done` gets the recorded outcome (or ERROR)."""

    def rate(
        self, subject: RatingSubject, rating: int, done: Callable[[Outcome | None], None]
    ) -> None:
        """Record a rating 1-5; `done` gets the recorded outcome, None if none was."""


def locker_views(orders: Mapping[int, str | None], status: Mapping[str, Any]) -> list[LockerView]:
    """Merge what the local database knows (which order is inside) with what the doors say."""
    doors = {int(s["number"]): s for s in status.get("lockers", ())}
    views = []
    for number in sorted(set(orders) | set(doors)):
        door, order = doors.get(number, {}), orders.get(number)
        if door.get("fault"):
            state = FAULT
        elif door.get("door") == "open":
            state = OPEN
        elif order:
            state = HOLDS
        else:
            state = FREE
        views.append(LockerView(number, state, order or None))
    return views


def locker_text(view: LockerView, m: Messages) -> str:
    """Two short lines for a locker button: its number, then its state."""
    state = m.get(f"staff.locker.{view.state}", order=view.order or "")
    if view.order and view.state in (OPEN, FAULT):
        state = f"{state} · {view.order}"
    return f"{m.get('staff.locker', number=view.number)}\n{state}"


def _known(m: Messages, key: str, value: str) -> str:
    return m.get(key) if key in m else value


def status_text(snap: StaffSnapshot, m: Messages) -> str:
    return m.get(
        "staff.status",
        printer=_known(m, f"staff.printer.{snap.printer}", snap.printer),
        camera=_known(m, f"staff.camera.{snap.camera}", snap.camera),
        outbox=snap.outbox,
        online=m.get("staff.online" if snap.online else "staff.offline"),
    )


def preorders_text(snap: StaffSnapshot, m: Messages, *, rows: int = 6) -> str:
    if not snap.preorders:
        return m.get("staff.preorders_none")
    # Names shortened: one order, one line, or the list runs off its panel.
    lines = [
        f"{p.order}　{short_name(p.name, 10)}" if p.name else p.order for p in snap.preorders[:rows]
    ]
    if len(snap.preorders) > rows:
        lines.append(m.get("staff.preorders_more", count=len(snap.preorders) - rows))
    return "\n".join(lines)


def staff_message(outcome: Outcome, m: Messages) -> StaffMessage:
    """What the banner says about an outcome while the staff screen is up."""
    data = outcome.data
    locker, order = data.get("locker", ""), data.get("order") or ""
    match outcome.event_type:
        case EventType.LOCKER_LOADED:
            return StaffMessage(True, m.get("staff.loaded", locker=locker, order=order))
        case EventType.STAFF_ACTION:
            if data.get("opened"):
                return StaffMessage(True, m.get("staff.opened", locker=locker))
            reason = str(data.get("reason") or "")
            return StaffMessage(False, m.get("staff.open_failed", locker=locker, reason=reason))
        case EventType.STAFF_LOGIN:
            return StaffMessage(True, m.get("result.staff.title"))
        case _ if outcome.event_type == LOADING:
            return StaffMessage(True, m.get("staff.loading", locker=locker, order=order))
    text = describe(outcome, m)
    return StaffMessage(text.ok, f"{text.title}  {text.detail}".strip())
