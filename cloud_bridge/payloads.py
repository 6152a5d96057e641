"""Reading a kiosk's payload without letting it choose what the parse costs.

Python's JSON parser recurses once per nesting level, and at its recursion limit on
paho's network thread it can abort the whole process; so nesting past what the limits
allow is cut at C speed before it is parsed (docs/limits.md). A cheap scan of the raw
bytes also tells whether any string could hold text no database keeps.
"""

from __future__ import annotations

import json
import re
from typing import Any

from o2o_protocol.limits import Limits
from o2o_protocol.messages import ProtocolError

#: A JSON string, or one bracket: the structure of a payload, strings set aside.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')
#: A NUL or a surrogate, escaped (`\u0000`, `\ud800`) or raw: the only ways a JSON payload
#: can carry text that no database keeps (paired surrogates match too; they are checked).
MAY_HOLD_BAD_TEXT = re.compile(rb"\x00|\\u0000|\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
_SQUARE = bytes.maketrans(b"{}", b"[]")
#: Brackets of a payload that needs cutting (nested past the limit) beyond which it is
#: refused whole rather than walked token by token.
_MAX_CUT_TOKENS = 200_000


def _nested_deeper(payload: bytes, depth: int, *, strings_out: bool = False) -> bool:
    """Whether brackets nest deeper than `depth` (strings set aside, `{}` counted as `[]`).
    Each pass takes away exactly the innermost pairs (`replace` does not rescan what it
    made), so this costs at most `depth` passes at C speed, and a payload of ordinary
    depth is done in a few. `strings_out`: the payload's strings are already taken out."""
    brackets = (payload if strings_out else _STRING.sub(b"", payload)).translate(
        _SQUARE, _NOT_BRACKET
    )
    for _ in range(depth):
        if not brackets:
            return False
        brackets = brackets.replace(b"[]", b"")
    return bool(brackets)


def _cut_deeper(payload: bytes, depth: int) -> bytes:
    """The payload with every object or array that starts deeper than `depth` replaced
    by `0`: what is left parses without deep recursion, and still nests past any limit
    below `depth`, so the check that follows names it."""
    out: list[bytes] = []
    level, start, done, tokens = 0, -1, 0, 0
    for m in _TOKEN.finditer(payload):
        tokens += 1
        if tokens > _MAX_CUT_TOKENS:
            raise ProtocolError(f"nested deeper than {depth} levels, {tokens}+ brackets")
        c = m.group()[:1]
        if c == b'"':
            continue
        if c in b"[{":
            level += 1
            if level == depth + 1:
                start = m.start()
        else:
            if level == depth + 1 and start >= 0:
                out += [payload[done:start], b"0"]
                done, start = m.end(), -1
            level -= 1
    if start >= 0:  # never closed: not JSON anyway
        raise ProtocolError(f"not JSON: nested deeper than {depth} levels, unclosed")
    out.append(payload[done:])
    return b"".join(out)


def loads_bounded(payload: bytes | bytearray, depth: int = 64) -> Any:
    """Parse JSON without deep recursion: Python's parser recurses once per level, and at
    its recursion limit a thread can crash the whole process (a garbage-collection
    callback that runs then has no room left). Anything nested deeper than `depth` is
    cut (`_cut_deeper`) before parsing; the limits check refuses what was cut."""
    data = bytes(payload)
    if _nested_deeper(data, depth):
        data = _cut_deeper(data, depth)
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"not JSON: {type(exc).__name__}") from None


#: Outside strings: a number with an exponent (it may parse to infinity, or print longer
#: than it was written), or the non-standard NaN and Infinity Python's parser takes.
_NUMBER_RISK = re.compile(rb"\d[eE]|NaN|Infinity")


def surely_within(payload: bytes | bytearray, limits: Limits) -> bool:
    """Whether no value in this payload can break `limits`, but for an envelope's size,
    read off its bytes at C speed, so a message of ordinary shape skips the walk of every
    value (`check_json`). True only when it cannot be otherwise:

    - no string or key is longer than `string_chars`: the payload is no longer, or with
      no escaped quote in it every string lies whole between two quotes;
    - no array or object has more than `items`: it would need as many commas;
    - nothing nests deeper than `json_depth`;
    - no number can be infinite or print much longer than it was written (no exponent,
      NaN or Infinity outside strings).

    The size of each envelope (`event_bytes`) is left to the caller: compact JSON writes
    no value of such a payload longer than about the payload held it, so one no longer
    than half of `event_bytes` needs no count."""
    data = bytes(payload)
    if len(data) > limits.string_chars and (
        b'\\"' in data or max(map(len, data.split(b'"'))) > limits.string_chars
    ):
        return False
    structure = _STRING.sub(b"", data)
    if structure.count(b",") >= limits.items or _NUMBER_RISK.search(structure):
        return False
    return not _nested_deeper(structure, limits.json_depth, strings_out=True)
