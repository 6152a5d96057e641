"""Helpers shared by the test suite: ports, external programs, a real Mosquitto.

Tests use real components (docs/architecture.md). A component that is missing makes a
test skip on a developer's machine but fail under ``CI=true``, so CI can never go green
by silently testing less.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

import pytest

from devtools.devbroker import (
    BROKER_CONFIG,
    DEV_CONF,
    REPO_ROOT,
    DevBroker,
    find_program,
    free_port,
    port_open,
    set_listener_port,
    tail,
    wait_for_port,
)

#: The tests' name for the development broker.
MosquittoBroker = DevBroker

__all__ = [
    "BROKER_CONFIG",
    "DEV_CONF",
    "REPO_ROOT",
    "MosquittoBroker",
    "all_at_once",
    "find_program",
    "free_port",
    "in_ci",
    "missing_component",
    "port_open",
    "set_listener_port",
    "tail",
    "wait_for_port",
]


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def missing_component(what: str, hint: str) -> None:
    """Fail under CI=true, skip elsewhere: a missing real component is never silent."""
    message = f"{what} is not available ({hint})"
    if in_ci():
        pytest.fail(f"CI=true: {message}", pytrace=False)
    pytest.skip(message)


def all_at_once(n: int, work: Callable[[], Any]) -> list[Any]:
    """Run `work()` on n threads released together (a barrier); each one's result or the
    exception it raised, in thread order. For "exact under concurrent requests" tests."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = work()
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results
