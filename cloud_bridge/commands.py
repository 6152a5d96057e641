"""Commands to kiosks: the one path by which a command is checked, queued and sent.

A queued command carries the kiosk's next `seq` and is re-sent until the kiosk's status
reports it applied, possibly much later (a kiosk with a fresh store is sent its whole
history again), so a bad one must be refused at the door, and one that is only safe now
(opening a locker) must carry an expiry. See docs/mqtt.md.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from cloud_bridge.db import Repository
from o2o_protocol.limits import DEFAULT_LIMITS, Limits, check_json, check_size, json_bytes
from o2o_protocol.messages import COMMAND_DATA, Command, CommandName, Status, command_data, dumps
from o2o_protocol.mqtt import MqttLink
from o2o_protocol.topics import CMD, kiosk_topic

log = logging.getLogger(__name__)

#: How long a `locker.open` without its own `expires` stays valid: a locker must never
#: open hours after someone asked for it.
LOCKER_OPEN_TTL_S = 300


#: A kiosk's news of up to this many members (or coupons) in one go is sent one command
#: each (`member.upsert`, `coupon.used`); more, as a few grouped ones (`members.upsert`,
#: `coupons.used`): a busy batch then costs each door a command, not one per member.
ONE_BY_ONE = 8
#: The grouped form of each command that has one, and the field that lists the items.
GROUPED = {
    CommandName.MEMBER_UPSERT.value: (CommandName.MEMBERS_UPSERT.value, "members"),
    CommandName.COUPON_USED.value: (CommandName.COUPONS_USED.value, "coupons"),
}
#: Most items in one grouped command (the protocol's bound).
GROUP_MAX = 1000
#: `{"members":[`, `]}` and a comma, with room to spare.
_GROUP_OVERHEAD = 24


def grouped(
    items: Sequence[tuple[str, str, dict[str, Any]]], *, limits: Limits = DEFAULT_LIMITS
) -> list[tuple[str, str, dict[str, Any]]]:
    """`items` with each kiosk's many `member.upsert` (`coupon.used`) in one or a few
    `members.upsert` (`coupons.used`), each within `command_bytes`: one per kiosk where
    it has more than `ONE_BY_ONE` of them, in their order; the rest as they are. Each
    item must already fit its own command's rules (`checked_command`)."""
    counts = Counter((kiosk, name) for kiosk, name, _ in items if name in GROUPED)
    out: list[tuple[str, str, dict[str, Any]]] = []
    groups: dict[tuple[str, str], list[tuple[dict[str, Any], int]]] = {}
    sizes: dict[int, int] = {}  # one news for every door is one dict: measured once
    for kiosk, name, data in items:
        if counts.get((kiosk, name), 0) > ONE_BY_ONE:
            size = sizes.get(id(data))
            if size is None:
                size = sizes[id(data)] = json_bytes(data)
            if size + _GROUP_OVERHEAD <= limits.command_bytes:
                groups.setdefault((kiosk, name), []).append((data, size))
                continue
        out.append((kiosk, name, data))  # one that fits only alone stays alone
    most = min(GROUP_MAX, limits.items)  # a shop's `items` limit holds for the list too
    for (kiosk, name), sized in groups.items():
        many, field = GROUPED[name]
        for chunk in _chunks(sized, limits.command_bytes - _GROUP_OVERHEAD, most):
            out.append((kiosk, many, {field: chunk}))
    return out


def _chunks(
    sized: list[tuple[dict[str, Any], int]], room: int, most: int
) -> Iterator[list[dict[str, Any]]]:
    """The items in runs whose sizes (with a comma each) fit `room` bytes, and at most
    `most` items."""
    chunk: list[dict[str, Any]] = []
    used = 0
    for data, size in sized:
        if chunk and (used + size + 1 > room or len(chunk) == most):
            yield chunk
            chunk, used = [], 0
        chunk.append(data)
        used += size + 1
    if chunk:
        yield chunk


def checked_command(
    name: str,
    data: dict[str, Any],
    *,
    limits: Limits = DEFAULT_LIMITS,
    now: float | None = None,
) -> dict[str, Any]:
    """The data to queue for command `name`; ValueError (a message for the caller) if the
    name is unknown, the data is over the shop's limits or does not fit the command.

    The limits come first: data nested hundreds deep, or megabytes of it, would be stored
    and then fail (or flood the kiosk) when sent, and a stored command is re-sent until
    the kiosk applies it, so one that cannot be sent would hold back every later one.
    """
    if name not in COMMAND_DATA:
        raise ValueError(f"unknown command {name!r}: use one of {', '.join(COMMAND_DATA)}")
    check_json(data, limits, what="data")  # LimitExceeded, a ValueError; bounds the depth
    check_size(data, limits.command_bytes, what="data")
    command_data(name, data)  # ProtocolError, a ValueError, names the bad field
    if name == CommandName.LOCKER_OPEN and data.get("expires") is None:
        data = {**data, "expires": int(time.time() if now is None else now) + LOCKER_OPEN_TTL_S}
    return data


class CommandService:
    """Queues commands for a store's kiosks and publishes them; re-sends what a kiosk
    reports it has not applied. Without a link it only queues (the next status re-sends)."""

    def __init__(
        self,
        repo: Repository,
        store: str,
        link: MqttLink | None = None,
        *,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self.repo = repo
        self.store = store
        self.link = link
        self.limits = limits

    def kiosks(self, configured: Iterable[str]) -> list[str]:
        """Every kiosk of the store: the configured ones first, then any other the bridge
        has heard from (a door added without telling the bridge still hears news)."""
        return list(dict.fromkeys([*configured, *self.repo.kiosk_names(self.store)]))

    def send(self, kiosk: str, name: str, data: dict[str, Any]) -> Command:
        """Queue a command for a kiosk and publish it now.

        Raises ValueError for an unknown command, or data over the limits or not fitting
        the command (nothing is queued).
        """
        return self.send_many([(kiosk, name, data)])[0]

    def send_many(
        self, items: list[tuple[str, str, dict[str, Any]]], *, checked: bool = False
    ) -> list[Command]:
        """`send` for many `(kiosk, name, data)` at once: queued in one transaction (a
        member's news for every door of the store, a batch of events' worth), then
        published. ValueError if any is refused (then none is queued). `checked`: the
        caller has already passed each data through `checked_command` (or one that stands
        for it: see `MemberService`)."""
        if not checked:
            items = [(k, n, checked_command(n, d, limits=self.limits)) for k, n, d in items]
        cmds = self.repo.add_commands(self.store, items)
        for (kiosk, _, _), cmd in zip(items, cmds, strict=True):
            self._publish(kiosk, cmd)
        return cmds

    def kiosk_reported(self, kiosk: str, status: Status) -> None:
        """The status says how far the kiosk got: send again whatever it has not applied."""
        if status.online and status.last_cmd_seq is not None:
            self.resend(kiosk, status.last_cmd_seq)

    def resend(self, kiosk: str, after_seq: int) -> None:
        try:
            pending = self.repo.commands_after(self.store, kiosk, after_seq)
        except Exception:
            log.exception("could not read the commands for %s", kiosk)
            return
        for cmd in pending:
            self._publish(kiosk, cmd)
        if pending:
            log.info("sent %d command(s) to %s from seq %d", len(pending), kiosk, pending[0].seq)

    def _publish(self, kiosk: str, cmd: Command) -> None:
        if self.link is not None:
            self.link.publish(kiosk_topic(self.store, kiosk, CMD), dumps(cmd), qos=1)
