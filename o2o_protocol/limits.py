"""How much the bridge takes from anyone, in one place (docs/limits.md).

A shop's bridge keeps storing, acking and serving through any input: a kiosk with a bug,
a careless integrator, an attacker. Whatever exceeds these limits is refused with a
clear answer (413 or 422 on HTTP; quarantined with its reason on MQTT) and never
retried. The defaults leave a hundred times the room that real kiosks and a shop's
online side use; a shop may change them under `[limits]` in `bridge.toml`.

`check_json` walks a parsed value without recursion, so a value nested ten thousand
deep is refused in microseconds instead of overflowing a parser or a database driver.
"""

from __future__ import annotations

import json
import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Limits(BaseModel):
    """The limits; every field is a shop's choice, checked when the config loads."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: Bytes of one REST request body (a bigger one is refused before it is read: 413).
    body_bytes: int = Field(default=256 * 1024, ge=1024, le=64 * 1024 * 1024)
    #: Nesting of objects and arrays in any JSON value taken in (an envelope counts as 1).
    json_depth: int = Field(default=16, ge=4, le=256)
    #: Characters of one string, or of one object key.
    string_chars: int = Field(default=4096, ge=64, le=1024 * 1024)
    #: Items of one array, or keys of one object.
    items: int = Field(default=1000, ge=10, le=1_000_000)
    #: Bytes of one event envelope, as compact JSON.
    event_bytes: int = Field(default=16 * 1024, ge=1024, le=16 * 1024 * 1024)
    #: Bytes of one MQTT message from a kiosk (a batch of events, or a status).
    message_bytes: int = Field(default=8 * 1024 * 1024, ge=64 * 1024, le=256 * 1024 * 1024)
    #: Bytes of one command's data, as compact JSON.
    command_bytes: int = Field(default=16 * 1024, ge=256, le=16 * 1024 * 1024)


DEFAULT_LIMITS = Limits()


#: Integers below this take at most 32 bytes in JSON; larger ones are counted exactly.
_BIG = 10**30


class LimitExceeded(ValueError):
    """A value over a limit; the message names where and which limit, never the value."""


def check_json(
    value: Any,
    limits: Limits = DEFAULT_LIMITS,
    *,
    what: str = "value",
    max_bytes: int | None = None,
) -> None:
    """Raise `LimitExceeded` if `value` (parsed JSON) is too deep, too long, not finite,
    or (with `max_bytes`) larger than that as compact JSON.

    Iterative, and it stops at the first problem: the cost is bounded by the value's
    size, never by its depth. The size is bounded from above on the way (no character
    takes more than 12 bytes in JSON, no float more than 32), so only a value that may
    be over `max_bytes` is serialised to count it exactly. Where a problem is, is worked
    out only when there is one.
    """
    # (item, depth, parent index or -1, key or index under the parent)
    nodes: list[tuple[Any, int, int, str | int]] = [(value, 1, -1, "")]
    bound = 0
    i = 0
    while i < len(nodes):
        item, depth, _, _ = nodes[i]
        if isinstance(item, dict | list):
            if depth > limits.json_depth:
                raise LimitExceeded(
                    f"{_path(nodes, i, what)}: nested deeper than {limits.json_depth} levels"
                )
            if len(item) > limits.items:
                raise LimitExceeded(f"{_path(nodes, i, what)}: more than {limits.items} items")
            bound += 2 + len(item)
            if isinstance(item, dict):
                for key, child in item.items():
                    if not isinstance(key, str) or len(key) > limits.string_chars:
                        raise LimitExceeded(
                            f"{_path(nodes, i, what)}: a key longer than {limits.string_chars}"
                        )
                    bound += 12 * len(key) + 3
                    nodes.append((child, depth + 1, i, key))
            else:
                nodes.extend((child, depth + 1, i, n) for n, child in enumerate(item))
        elif isinstance(item, str):
            if len(item) > limits.string_chars:
                raise LimitExceeded(
                    f"{_path(nodes, i, what)}: longer than {limits.string_chars} characters"
                )
            bound += 12 * len(item) + 2
        else:
            if isinstance(item, float) and not math.isfinite(item):
                raise LimitExceeded(f"{_path(nodes, i, what)}: not a finite number")
            if isinstance(item, int) and not -_BIG < item < _BIG:
                bound += len(str(item)) + 1  # a JSON integer may have thousands of digits
            else:
                bound += 32
        i += 1
    if max_bytes is not None and bound > max_bytes:
        check_size(value, max_bytes, what=what)


def _path(nodes: list[tuple[Any, int, int, str | int]], i: int, what: str) -> str:
    """Where node `i` is, as `what.key[3].other` (keys shortened; never the value)."""
    parts: list[str] = []
    while nodes[i][2] >= 0:
        _, _, parent, key = nodes[i]
        parts.append(f"[{key}]" if isinstance(key, int) else f".{_short(key)}")
        i = parent
    return what + "".join(reversed(parts))


def json_bytes(value: Any) -> int:
    """Size of `value` as compact JSON: what it costs to store and to send."""
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


def check_size(value: Any, limit: int, *, what: str = "value") -> None:
    """Raise `LimitExceeded` if `value` is over `limit` bytes as compact JSON.

    Call `check_json` first: it bounds the depth, so serialising cannot recurse deeply.
    """
    size = json_bytes(value)
    if size > limit:
        raise LimitExceeded(f"{what}: {size} bytes, more than {limit}")


def _short(key: str) -> str:
    return key if len(key) <= 32 else key[:29] + "..."
