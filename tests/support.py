"""Helpers shared by the test suite: ports, external programs, a real Mosquitto.

Tests use real components (docs/architecture.md). A component that is missing makes a
test skip on a developer's machine but fail under ``CI=true``, so CI can never go green
by silently testing less.
"""

from __future__ import annotations

import os

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
