"""The bridge's input limits: deep, long, huge or non-finite values are refused quickly."""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from cloud_bridge.payloads import surely_within
from o2o_protocol.limits import (
    DEFAULT_LIMITS,
    LimitExceeded,
    Limits,
    check_json,
    check_size,
    json_bytes,
)

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=80),
    lambda c: st.lists(c, max_size=12) | st.dictionaries(st.text(max_size=80), c, max_size=12),
    max_leaves=40,
)


def nested(depth: int) -> object:
    value: object = "x"
    for _ in range(depth):
        value = {"a": [value]}
    return value


def test_ordinary_event_data_passes() -> None:
    data = {
        "member_id": "u1",
        "name": "王小明",
        "visits": 3,
        "points": 40.5,
        "items": [{"sku": "a"}],
    }
    check_json(data)
    check_size(data, DEFAULT_LIMITS.event_bytes)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (nested(9), "nested deeper than 16"),
        ("x" * 4097, "longer than 4096"),
        ({"k" * 5000: 1}, "key longer"),
        (list(range(1001)), "more than 1000 items"),
        ({"n": float("nan")}, "not a finite number"),
        ({"n": [float("inf")]}, "not a finite number"),
    ],
)
def test_each_limit_names_where_and_what(value: object, message: str) -> None:
    with pytest.raises(LimitExceeded, match=message) as err:
        check_json(value, what="data")
    assert str(err.value).startswith("data")
    assert "xxxx" not in str(err.value)  # the value itself is never quoted


def test_a_value_nested_a_hundred_thousand_deep_is_refused_at_once() -> None:
    deep: list[object] = []
    for _ in range(100_000):
        deep = [deep]
    started = time.perf_counter()
    with pytest.raises(LimitExceeded):
        check_json(deep)
    assert time.perf_counter() - started < 1.0  # bounded by the limit, not the depth


def test_size_is_counted_as_compact_utf8_json() -> None:
    check_size({"s": "é" * 100}, 300)
    with pytest.raises(LimitExceeded, match="more than 100"):
        check_size({"s": "é" * 100}, 100)


def test_size_is_checked_in_the_same_walk_when_asked() -> None:
    check_json({"s": "é" * 100}, max_bytes=300)
    with pytest.raises(LimitExceeded, match="more than 100"):
        check_json({"s": "é" * 100}, max_bytes=100)
    with pytest.raises(LimitExceeded, match="more than 1000"):
        check_json({"n": 10**4000}, max_bytes=1000)  # a long integer, not a long string
    with pytest.raises(LimitExceeded, match="more than 1000"):
        check_json({"s": "\U0001f600" * 300}, max_bytes=1000)


@given(JSON_VALUES)
def test_the_size_bound_never_lets_an_oversized_value_through(value: object) -> None:
    size = json_bytes(value)
    for limit in (size - 1, size):
        try:
            check_json(value, Limits(), max_bytes=limit)
        except LimitExceeded:
            assert limit < size
        else:
            assert limit >= size


def test_a_shop_may_change_the_limits_within_reason() -> None:
    assert Limits(json_depth=32).json_depth == 32
    with pytest.raises(ValidationError):
        Limits(json_depth=1)
    with pytest.raises(ValidationError):
        Limits(body_bytes=10**12)
    with pytest.raises(ValidationError):
        Limits.model_validate({"depth": 3})


def over(value: object, limits: Limits, depth: int = 1) -> bool:
    """A plain recursive statement of the limits, to check the iterative walk against."""
    if isinstance(value, dict | list):
        if depth > limits.json_depth or len(value) > limits.items:
            return True
        if isinstance(value, dict):
            if any(len(k) > limits.string_chars for k in value):
                return True
            return any(over(v, limits, depth + 1) for v in value.values())
        return any(over(v, limits, depth + 1) for v in value)
    return isinstance(value, str) and len(value) > limits.string_chars


SMALL = Limits(json_depth=4, string_chars=64, items=10)
JSON = JSON_VALUES


@given(JSON)
def test_refused_exactly_when_a_limit_is_exceeded(value: object) -> None:
    try:
        check_json(value, SMALL)
    except LimitExceeded:
        assert over(value, SMALL)
    else:
        assert not over(value, SMALL)


ANY_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()  # NaN, infinities and exponents too: json.dumps writes them all
    | st.text(max_size=80),
    lambda c: st.lists(c, max_size=14) | st.dictionaries(st.text(max_size=70), c, max_size=14),
    max_leaves=60,
)
SMALL = Limits(json_depth=4, string_chars=64, items=10, event_bytes=1024)


@given(ANY_JSON, st.booleans(), st.booleans(), st.sampled_from([None, 1]))
def test_a_message_taken_as_surely_within_the_limits_is(
    value: object, as_batch: bool, ascii_only: bool, indent: int | None
) -> None:
    """The ingest's shortcut (no walk of each value) is taken only when the walk could
    not have refused anything: written compact or not, escaped or not."""
    elements = [value, value] if as_batch else [value]
    payload = json.dumps(elements if as_batch else value, ensure_ascii=ascii_only, indent=indent)
    raw = payload.encode("utf-8", "surrogatepass")
    if surely_within(raw, SMALL):
        for element in elements:
            check_json(element, SMALL, what="event")
            if len(raw) <= SMALL.event_bytes // 2:  # longer: the ingest counts each size
                check_size(element, SMALL.event_bytes, what="event")


def test_an_ordinary_kiosk_message_takes_the_shortcut() -> None:
    event = {
        "id": "0190a3e4-5b6c-7d8e-9f00-1a2b3c4d5e6f",
        "seq": 1234,
        "type": "checkin",
        "ts": "2026-12-01T09:30:00.123456Z",
        "store": "east",
        "kiosk": "east1",
        "data": {"member_id": "u123", "name": "王小明", "points_earned": 10, "points": 120.5},
    }
    payload = json.dumps([event] * 4, ensure_ascii=False).encode()
    assert surely_within(payload, DEFAULT_LIMITS)
    for risky in (b"1e999", b"NaN", b"-Infinity"):
        assert not surely_within(payload.replace(b"120.5", risky), DEFAULT_LIMITS)
    assert surely_within(json.dumps([event] * 40).encode(), DEFAULT_LIMITS)  # a busy batch
    many = json.dumps([event] * 200).encode()  # more commas than `items`: walked
    assert not surely_within(many, DEFAULT_LIMITS)
    long_name = json.dumps([{**event, "data": {"name": "x" * 5000}}]).encode()
    assert not surely_within(long_name, DEFAULT_LIMITS)
