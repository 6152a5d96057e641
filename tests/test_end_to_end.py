"""One shop, end to end: a real broker, the bridge, and a headless kiosk on camera frames.

The customer-visible promise: every outcome the kiosk shows is stored at the bridge
exactly once, and bad codes are refused with the contract's reasons.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiosk.devices.corpus import write_video
from kiosk.devices.replay import write_session
from o2o_protocol.codes import b64url_decode, b64url_encode
from tests.support import MosquittoBroker, free_port, wait_for_port

BIN = Path(sys.executable).parent


def cli(tool: str, *args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(BIN / tool), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def issue(shop: Path, *args: str) -> str:
    proc = cli("o2o-bridge", "issue", *args, "--config", "bridge.toml", "--json", cwd=shop)
    assert proc.returncode == 0, proc.stderr
    return str(json.loads(proc.stdout)["code"])


def forge(token: str) -> str:
    """The same signature over a payload whose value a customer doubled."""
    prefix, payload, sig = token.split(".")
    body = json.loads(b64url_decode(payload))
    body["v"] = "¥999 off"
    return f"{prefix}.{b64url_encode(json.dumps(body).encode())}.{sig}"


@pytest.fixture
def shop(tmp_path: Path, mosquitto_broker: MosquittoBroker) -> Iterator[Path]:
    """A shop directory made by `o2o-bridge init`, with the bridge running."""
    proc = cli(
        "o2o-bridge",
        "init",
        "--dir",
        str(tmp_path),
        "--store",
        "s1",
        "--kiosk",
        "k1",
        "--mqtt",
        mosquitto_broker.url,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    port = free_port()
    log = (tmp_path / "bridge.log").open("w")
    bridge = subprocess.Popen(
        [str(BIN / "o2o-bridge"), "run", "--config", "bridge.toml", "--http", f"127.0.0.1:{port}"],
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port("127.0.0.1", port, timeout=20, alive=lambda: bridge.poll() is None)
        _wait_health(port)
        yield tmp_path
    finally:
        bridge.send_signal(signal.SIGTERM)
        try:
            assert bridge.wait(15) == 0, (tmp_path / "bridge.log").read_text()
        finally:
            if bridge.poll() is None:
                bridge.kill()
            log.close()


def _wait_health(port: int) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                body = json.loads(r.read())
            if body.get("mqtt_connected", True):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError("bridge did not report healthy")
        time.sleep(0.1)


def run_kiosk(shop: Path, camera: Path) -> tuple[int, list[dict[str, object]], str]:
    proc = cli(
        "o2o-kiosk",
        "run",
        "--headless",
        "--config",
        "kiosk-k1.toml",
        "--camera",
        str(camera),
        "--exit-at-end",
        "--drain-timeout",
        "30",
        cwd=shop,
        timeout=120,
    )
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    return proc.returncode, lines, proc.stderr


def stored_events(shop: Path) -> list[dict[str, object]]:
    proc = cli(
        "o2o-bridge", "export", "events", "--config", "bridge.toml", "--format", "jsonl", cwd=shop
    )
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def test_scans_reach_the_bridge_once_with_reasons(shop: Path) -> None:
    member = issue(shop, "member", "--id", "u1", "--name", "小明")
    coupon = issue(shop, "coupon", "--id", "cp1", "--campaign", "spring", "--value", "¥10 off")
    expired = issue(shop, "coupon", "--id", "cp2", "--expires=-1d")
    elsewhere = issue(shop, "coupon", "--id", "cp3", "--store", "other-shop")
    texts = [member, coupon, coupon, expired, elsewhere, forge(coupon), "hello, not a code"]
    write_session(shop / "frames", texts)

    status, lines, stderr = run_kiosk(shop, shop / "frames")
    assert status == 0, stderr
    got = [(line["type"], line["reason"]) for line in lines]
    assert got == [
        ("checkin", None),
        ("coupon.redeemed", None),
        ("scan.rejected", "already_used"),
        ("scan.rejected", "expired"),
        ("scan.rejected", "wrong_store"),
        ("scan.rejected", "bad_signature"),
        ("scan.rejected", "malformed"),
    ], stderr
    assert lines[0]["data"]["name"] == "小明"  # type: ignore[index]

    stored = stored_events(shop)
    assert sorted(e["id"] for e in stored) == sorted(line["event"] for line in lines)
    by_id = {e["id"]: e for e in stored}
    for line in lines:
        event = by_id[line["event"]]
        assert event["type"] == line["type"] and event["store"] == "s1"
        assert event["kiosk"] == "k1"
    assert [e["seq"] for e in sorted(stored, key=lambda e: e["seq"])] == list(range(1, 8))

    # The kiosk remembers across restarts: the coupon stays used, the member visits again.
    write_session(shop / "frames2", [member, coupon])
    status, lines2, stderr = run_kiosk(shop, shop / "frames2")
    assert status == 0, stderr
    assert [(x["type"], x["reason"]) for x in lines2] == [
        ("checkin", None),
        ("scan.rejected", "already_used"),
    ]
    assert lines2[0]["data"]["visits"] == 2  # type: ignore[index]
    assert len(stored_events(shop)) == 9


def test_video_file_camera(shop: Path) -> None:
    import cv2

    member = issue(shop, "member", "--id", "u7")
    paths = write_session(shop / "frames", [member], gap_frames=5)
    video = write_video(shop / "door.avi", [cv2.imread(str(p)) for p in paths])
    status, lines, stderr = run_kiosk(shop, video)
    assert status == 0, stderr
    assert [(x["type"], x["data"]["member_id"]) for x in lines] == [("checkin", "u7")]  # type: ignore[index]


def test_outcomes_wait_in_the_outbox_while_the_broker_is_down(
    shop: Path, mosquitto_broker: MosquittoBroker
) -> None:
    coupon = issue(shop, "coupon", "--id", "cp9")
    write_session(shop / "frames", [coupon])
    mosquitto_broker.stop()
    env_kiosk = subprocess.run(
        [
            str(BIN / "o2o-kiosk"),
            "run",
            "--headless",
            "--config",
            "kiosk-k1.toml",
            "--camera",
            str(shop / "frames"),
            "--exit-at-end",
            "--drain-timeout",
            "2",
        ],
        cwd=shop,
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ.copy(),
    )
    # The customer got their redemption; it is queued, not lost, and the run says so.
    assert [json.loads(x)["type"] for x in env_kiosk.stdout.splitlines()] == ["coupon.redeemed"]
    assert env_kiosk.returncode == 1
    assert "not yet acked" in env_kiosk.stderr
    mosquitto_broker.start()
    time.sleep(1.0)  # the bridge reconnects by itself
    empty = shop / "empty"
    empty.mkdir()
    last = sorted((shop / "frames").iterdir())[-1]  # a frame with no code in it
    (empty / last.name).write_bytes(last.read_bytes())
    status, lines, stderr = run_kiosk(shop, empty)
    assert status == 0 and lines == [], stderr
    assert [e["data"]["coupon_id"] for e in stored_events(shop)] == ["cp9"]  # type: ignore[index]
