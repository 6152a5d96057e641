"""Random bodies and query strings never make the REST API answer 5xx.

Bounded and derandomized (the same examples every run): random JSON (NaN and Infinity
literals, deep and odd values), near-miss requests built from the real field and command
names, raw bytes, random kiosk ids in the path and random query strings, on every route
that takes them. Whatever comes in, the answer is a 2xx or a 4xx with a JSON `detail`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud_bridge.api import create_app
from cloud_bridge.config import BridgeConfig
from cloud_bridge.db import Repository
from cloud_bridge.issuing import CODE_FIELDS
from o2o_protocol.config_file import validate_config
from o2o_protocol.messages import COMMAND_DATA

TOKEN = "t0ken-for-fuzz-tests-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

DATA_KEYS = ["order", "size", "name", "items", "id", "locker", "expires", "by", "points", "at"]
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
    | st.sampled_from(["+2h", "-1d", "2026-12-01", "9999-12-31T23:59:59Z", "+999999d", ""])
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
code_bodies = st.fixed_dictionaries(
    {"type": st.sampled_from(["member", "coupon", "pickup", "staff", "reservation", "gold"])},
    optional=dict.fromkeys(CODE_FIELDS, json_values),
)
command_bodies = st.fixed_dictionaries(
    {"name": st.sampled_from([*COMMAND_DATA, "self.destruct"])},
    optional={"data": st.dictionaries(st.sampled_from(DATA_KEYS), json_values, max_size=5)},
)
bodies = (
    json_values.map(lambda v: json.dumps(v, allow_nan=True).encode())
    | code_bodies.map(lambda v: json.dumps(v, allow_nan=True).encode())
    | command_bodies.map(lambda v: json.dumps(v, allow_nan=True).encode())
    | st.binary(max_size=64)
    | st.integers(1, 600).map(lambda n: ("[" * n + "]" * n).encode())
)
queries = st.dictionaries(
    st.sampled_from(["since", "limit", "type", "kiosk", "order", "x"]) | st.text(max_size=5),
    st.text(max_size=20) | st.sampled_from(["0", "1001", "-1", "+2h", "9999-12-31", "NaN"]),
    max_size=4,
)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Any:
    directory: Path = tmp_path_factory.mktemp("fuzz")
    config = validate_config(
        directory / "bridge.toml", {"store": "s1", "kiosks": ["k1"]}, BridgeConfig
    )
    repo = Repository.from_url(f"sqlite:///{directory / 'bridge.db'}")
    repo.migrate()
    app = create_app(config, repo, token=TOKEN, signing_key=Ed25519PrivateKey.generate())
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c
    repo.close()


def _no_5xx(r: Any) -> None:
    assert r.status_code < 500, r.text[:2000]
    if r.status_code >= 400:
        assert "detail" in r.json(), r.text[:2000]


@FUZZ
@given(body=bodies, kiosk=st.text(min_size=1, max_size=12) | st.just("k1"))
def test_write_routes_never_answer_5xx(client: TestClient, body: bytes, kiosk: str) -> None:
    _no_5xx(client.post("/api/v1/codes", headers=AUTH, content=body))
    path = f"/api/v1/kiosks/{quote(kiosk, safe='')}/commands"
    _no_5xx(client.post(path, headers=AUTH, content=body))


@FUZZ
@given(params=queries)
def test_query_strings_never_answer_5xx(client: TestClient, params: dict[str, str]) -> None:
    for path in ("/api/v1/events", "/api/v1/rejected-events", "/api/v1/stats", "/api/v1/kiosks"):
        _no_5xx(client.get(path, headers=AUTH, params=params))
    body = b'{"type": "staff"}'
    _no_5xx(client.post("/api/v1/codes", headers=AUTH, params=params, content=body))


def test_the_fuzzing_is_bounded(client: TestClient) -> None:
    """One example of each kind costs milliseconds: the whole file stays well under a minute."""
    started = time.monotonic()
    _no_5xx(client.post("/api/v1/codes", headers=AUTH, content=b"[" * 600 + b"]" * 600))
    _no_5xx(client.get("/api/v1/events", headers=AUTH, params={"since": "NaN"}))
    assert time.monotonic() - started < 30  # a guard on a pathological path, not a speed check
