"""What the result screen's reward and rating panels say: plain data, no Kivy.

Kept apart from the widgets so every answer the kiosk can give to a redemption or a
rating is checked for customer words in both languages without opening a window. Only a
recorded `points.redeemed` or `review.submitted` reads as success: anything else, even an
answer the screen does not know, reads as a refusal.
"""

from __future__ import annotations

from kiosk.i18n import Messages
from kiosk.loyalty import RewardChoice
from kiosk.screens.outcome import Outcome, ResultText
from o2o_protocol.messages import EventType, Reason

#: Rewards shown at once: more would not fit as thumb-sized buttons beside the welcome.
MAX_REWARDS = 3
#: Stars of the rating row.
RATINGS = (1, 2, 3, 4, 5)


def offer_member(outcome: Outcome) -> str | None:
    """The member whose rewards the result screen offers after this outcome, if any."""
    if outcome.event_type != EventType.CHECKIN or not outcome.accepted:
        return None
    member = outcome.data.get("member_id")
    return str(member) if member else None


def reward_name(choice: RewardChoice, m: Messages) -> str:
    """The reward's English name on an English screen when the shop gave one."""
    if not m.language.startswith("zh") and choice.name_en:
        return choice.name_en
    return choice.name


def reward_label(choice: RewardChoice, m: Messages) -> str:
    return m.get("reward.button", name=reward_name(choice, m), points=choice.points)


def confirm_text(choice: RewardChoice, m: Messages) -> str:
    return m.get("reward.confirm", name=reward_name(choice, m), points=choice.points)


def redeemed_text(outcome: Outcome, m: Messages) -> ResultText:
    """The panel's words for the kiosk's answer to a redemption."""
    data = outcome.data
    balance = data.get("balance")
    if outcome.event_type == EventType.POINTS_REDEEMED and outcome.accepted:
        extra = "" if balance is None else m.get("reward.balance_left", balance=balance)
        return ResultText(True, m.get("reward.done.title"), m.get("reward.done.detail"), extra)
    if outcome.reason == Reason.INSUFFICIENT_POINTS:
        detail = (
            m.get("reason.insufficient_points.detail")
            if balance is None
            else m.get("reward.balance_have", balance=balance)
        )
        return ResultText(False, m.get("reason.insufficient_points.title"), detail)
    if outcome.reason == Reason.NOT_ALLOWED:
        return ResultText(False, m.get("reward.not_allowed.title"), m.get("reward.ask_staff"))
    return ResultText(False, m.get("reward.failed.title"), m.get("reward.ask_staff"))


def rated_text(outcome: Outcome | None, m: Messages) -> ResultText:
    """The rating row's words once the kiosk answered a rating."""
    if outcome is None:
        return ResultText(False, m.get("rating.failed"))
    if outcome.event_type == EventType.REVIEW_SUBMITTED and outcome.accepted:
        return ResultText(True, m.get("rating.thanks"))
    if outcome.reason == Reason.ALREADY_USED:
        return ResultText(True, m.get("rating.already"))
    return ResultText(False, m.get("rating.failed"))
