"""What a careless integrator or an attacker sends the REST API is refused, cheaply.

- A body is never read before the token is checked (401), nor past `[limits] body_bytes`
  (413 at once for a Content-Length, mid-stream for a chunked body); measured on a real
  bridge process, whose peak memory must stay small.
- Command data over the limits (nested ~500 deep, a 10 MB string) is refused with a 422
  before anything is stored, so it can neither jam the kiosk's later commands nor flood it.
- NaN and Infinity are not JSON (422, never 500), and a code's times stay within 200 years
  of now, with `expires` in the future, however they are written.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient

from cloud_bridge.api import create_app
from cloud_bridge.commands import CommandService
from cloud_bridge.config import BridgeConfig
from cloud_bridge.db import Repository
from cloud_bridge.issuing import issue
from o2o_protocol.config_file import validate_config
from o2o_protocol.limits import LimitExceeded
from o2o_protocol.messages import parse_command
from tests.api_server import ApiServer

TOKEN = "t0ken-for-limit-tests-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MB = 1024 * 1024


def nested(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = {"a": value}
    return value


# --- over real HTTP: nothing is read before the token, nor past the limit -----------------


def _post_raw(
    url_port: int, headers: dict[str, str], body_bytes: int, *, chunked: bool = False
) -> tuple[int, str, int]:
    """POST `body_bytes` of JSON-ish bytes while reading the answer; (status, body, how
    many body bytes had been sent when the answer came).

    The body is sent from a thread, so an answer that comes before the body is all sent
    (the point of these tests) is read as soon as it comes; the send may then fail. A
    bridge that read the whole body first could only answer after all of it was sent:
    the socket buffers hold a few MB at most, and the sender waits on them.
    """
    sock = socket.create_connection(("127.0.0.1", url_port), timeout=30)
    head = "POST /api/v1/kiosks/k1/commands HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    head += "Content-Type: application/json\r\n"
    if chunked:
        head += "Transfer-Encoding: chunked\r\n"
    else:
        head += f"Content-Length: {body_bytes}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    sock.sendall(head.encode())
    progress = [0]

    def send_body() -> None:
        piece = b'"' + b"x" * (MB - 2) + b'"'
        try:
            sent = 0
            while sent < body_bytes:
                n = min(MB, body_bytes - sent)
                data = piece[:n]
                sock.sendall(f"{n:x}\r\n".encode() + data + b"\r\n" if chunked else data)
                sent += n
                progress[0] = sent
            if chunked:
                sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the bridge answered and closed: it did not want the rest

    sender = threading.Thread(target=send_body, daemon=True)
    sender.start()
    answer = b""
    try:
        while b"\r\n\r\n" not in answer or not _complete(answer):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    finally:
        sent_at_answer = progress[0]
        sock.close()
        sender.join(30)
    status_line, _, rest = answer.partition(b"\r\n")
    status = int(status_line.split()[1])
    return status, rest.partition(b"\r\n\r\n")[2].decode(errors="replace"), sent_at_answer


def _complete(answer: bytes) -> bool:
    head, _, body = answer.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return False


@pytest.fixture(scope="module")
def bridge(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with ApiServer(tmp_path_factory.mktemp("limits")) as server:
        yield server


def test_an_unauthenticated_48_mb_body_is_refused_unread(bridge: ApiServer) -> None:
    before = bridge.status("VmHWM")
    for chunked in (False, True):
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            status, body, sent = _post_raw(bridge.port, headers, 48 * MB, chunked=chunked)
            assert status == 401, body
            assert json.loads(body) == {"detail": "missing or wrong API token"}
            assert sent < 48 * MB, "the body was read before the token was checked"
    grown = bridge.status("VmHWM") - before
    assert grown < 16 * 1024, f"peak memory grew by {grown} KiB"
    assert bridge.proc.poll() is None


def test_an_authorised_body_over_the_limit_is_413(bridge: ApiServer) -> None:
    before = bridge.status("VmHWM")
    auth = {"Authorization": f"Bearer {bridge.token}"}
    # Said up front: refused at once.
    status, body, sent = _post_raw(bridge.port, auth, 48 * MB)
    assert status == 413 and "body_bytes" in json.loads(body)["detail"], body
    assert sent < 48 * MB
    # Chunked (no Content-Length): counted while it arrives and cut off past the limit.
    status, body, sent = _post_raw(bridge.port, auth, 48 * MB, chunked=True)
    assert status == 413 and "body_bytes" in json.loads(body)["detail"], body
    assert sent < 48 * MB
    # The read-only token is a valid token: its body is capped too (then 403 below it).
    read = {"Authorization": f"Bearer {bridge.read_token}"}
    status, body, _ = _post_raw(bridge.port, read, 48 * MB, chunked=True)
    assert status == 413, body
    grown = bridge.status("VmHWM") - before
    assert grown < 16 * 1024, f"peak memory grew by {grown} KiB"
    # And the bridge goes on serving.
    status, body, _ = _post_raw(bridge.port, auth, 0)
    assert status == 422, body


# --- command data: refused before it is stored --------------------------------------------


class FakeLink:
    """Records what the command service publishes (MqttLink's `publish`)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    def publish(self, topic: str, payload: bytes, qos: int = 0) -> None:
        self.sent.append((topic, payload))


def _client(
    tmp_path: Path, repo: Repository, link: FakeLink, **limits: int
) -> tuple[TestClient, CommandService]:
    raw: dict[str, Any] = {"store": "s1", "kiosks": ["k1"]}
    if limits:
        raw["limits"] = limits
    config = validate_config(tmp_path / "bridge.toml", raw, BridgeConfig)
    commands = CommandService(repo, "s1", link, limits=config.limits)  # type: ignore[arg-type]
    app = create_app(
        config, repo, token=TOKEN, signing_key=Ed25519PrivateKey.generate(), commands=commands
    )
    return TestClient(app), commands


def _detail(r: Any) -> str:
    detail = r.json()["detail"]
    assert isinstance(detail, list) and {"loc", "msg", "type"} <= set(detail[0]), detail
    return json.dumps(detail)


def test_deep_or_huge_command_data_is_refused_and_later_commands_still_go(
    tmp_path: Path, repo: Repository
) -> None:
    link = FakeLink()
    client, _ = _client(tmp_path, repo, link, body_bytes=16 * MB)
    url = "/api/v1/kiosks/k1/commands"
    deep = {"name": "preorder.upsert", "data": {"order": "A1", "items": [nested(500)]}}
    r = client.post(url, headers=AUTH, json=deep)
    assert r.status_code == 422, r.text
    assert "nested deeper than 16" in _detail(r)
    huge = {"name": "preorder.upsert", "data": {"order": "A1", "note": "x" * (10 * MB)}}
    r = client.post(url, headers=AUTH, json=huge)
    assert r.status_code == 422, r.text[:500]
    assert "longer than 4096" in _detail(r)
    # Within the JSON limits, but more than a command may carry (16 KiB by default).
    many = {"name": "preorder.upsert", "data": {"order": "A1", "items": ["y" * 4000] * 10}}
    r = client.post(url, headers=AUTH, json=many)
    assert r.status_code == 422 and "more than 16384" in _detail(r), r.text[:500]
    assert repo.commands_after("s1", "k1", 0) == [] and link.sent == []

    for order in ("A1", "A2"):
        good = {"name": "preorder.upsert", "data": {"order": order}}
        assert client.post(url, headers=AUTH, json=good).status_code == 201
    assert [c.seq for c in repo.commands_after("s1", "k1", 0)] == [1, 2]
    sent = [parse_command(payload) for _, payload in link.sent]
    assert [(c.seq, c.data["order"]) for c in sent] == [(1, "A1"), (2, "A2")]


def test_the_command_service_itself_checks_the_limits(tmp_path: Path, repo: Repository) -> None:
    """The one command path (used by the API and by the bridge's own rules)."""
    link = FakeLink()
    _, commands = _client(tmp_path, repo, link)
    for data in (
        {"order": "A1", "items": [nested(500)]},
        {"order": "A1", "note": "x" * (10 * MB)},
        {"order": "A1", "items": ["y" * 4000] * 10},
    ):
        with pytest.raises(LimitExceeded):
            commands.send("k1", "preorder.upsert", data)
    assert repo.commands_after("s1", "k1", 0) == [] and link.sent == []
    assert commands.send("k1", "preorder.upsert", {"order": "A1"}).seq == 1


def test_a_huge_body_with_default_limits_is_413(tmp_path: Path, repo: Repository) -> None:
    client, _ = _client(tmp_path, repo, FakeLink())
    huge = {"name": "preorder.upsert", "data": {"order": "A1", "note": "x" * (10 * MB)}}
    r = client.post("/api/v1/kiosks/k1/commands", headers=AUTH, json=huge)
    assert r.status_code == 413 and "262144" in r.json()["detail"]
    assert repo.commands_after("s1", "k1", 0) == []


# --- NaN, Infinity and time bounds ----------------------------------------------------


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_not_json(tmp_path: Path, repo: Repository, literal: str) -> None:
    client, _ = _client(tmp_path, repo, FakeLink())
    headers = {**AUTH, "Content-Type": "application/json"}
    for url, body in (
        ("/api/v1/codes", f'{{"type": "coupon", "expires": {literal}}}'),
        ("/api/v1/codes", f'{{"type": "pickup", "order": "A1", "x": [{literal}]}}'),
        (
            "/api/v1/kiosks/k1/commands",
            f'{{"name": "locker.open", "data": {{"locker": {literal}}}}}',
        ),
    ):
        r = client.post(url, headers=headers, content=body)
        assert r.status_code == 422, (url, body, r.text)
        assert "not JSON" in _detail(r)
    assert repo.commands_after("s1", "k1", 0) == []


@pytest.mark.parametrize(
    "body",
    [
        {"type": "coupon", "expires": 99999999999999999999},
        {"type": "coupon", "expires": -5},
        {"type": "coupon", "expires": 0},
        {"type": "coupon", "expires": "-1d"},
        {"type": "coupon", "expires": "+999999d"},
        {"type": "coupon", "expires": "9999-12-31"},
        {"type": "member", "expires": "2000-01-01T00:00:00Z"},
        {"type": "coupon", "not_before": -(10**12)},
        {"type": "coupon", "not_before": "+2d", "expires": "+1d"},
        {"type": "reservation", "at": 10**15},
        {"type": "reservation", "at": "-3d"},
        {"type": "reservation", "at": True},
        {"type": "coupon", "expires": "0" * 20},
        {"type": "coupon", "expires": "soon"},
    ],
)
def test_code_times_are_bounded(tmp_path: Path, repo: Repository, body: dict[str, Any]) -> None:
    client, _ = _client(tmp_path, repo, FakeLink())
    r = client.post("/api/v1/codes", headers=AUTH, json=body)
    assert r.status_code == 422, r.text
    _detail(r)


def test_code_times_within_bounds_are_taken(tmp_path: Path, repo: Repository) -> None:
    client, _ = _client(tmp_path, repo, FakeLink())
    now = int(time.time())
    for body, exp in (
        ({"type": "coupon", "expires": now + 3600}, now + 3600),
        ({"type": "coupon", "expires": float(now + 60)}, now + 60),
        ({"type": "member", "expires": "+199w"}, None),
        ({"type": "staff"}, None),
        ({"type": "reservation", "at": "+1h"}, None),
    ):
        r = client.post("/api/v1/codes", headers=AUTH, json=body)
        assert r.status_code == 201, (body, r.text)
        out = r.json()
        assert "exp" in out  # documented as always there (null without expiry)
        if exp is not None:
            assert out["exp"] == exp
    assert client.post("/api/v1/codes", headers=AUTH, json={"type": "staff"}).json()["exp"] is None


def test_issue_shares_the_bounds() -> None:
    """`o2o-bridge issue` goes through the same function."""
    key = Ed25519PrivateKey.generate()
    now = time.time()
    for kwargs in (
        {"expires": 99999999999999999999},
        {"expires": -5},
        {"expires": "-1d"},
        {"not_before": "+3d", "expires": "+2d"},
    ):
        with pytest.raises(ValueError, match=r"expires|not-before"):
            issue(key, "coupon", store="s1", now=now, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="200 years"):
        issue(key, "reservation", store="s1", at=10**15, now=now)
    assert issue(key, "coupon", store="s1", expires="+1d", now=now).exp == int(now) + 86400
