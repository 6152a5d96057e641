"""Every door flow through the headless kiosk, with the bridge pushing preorders and
revocations down: staff load a locker, a customer picks up, refusals carry their reasons.

The pure rules are tested in test_decisions.py; this proves the same flows hold when
codes arrive as camera frames, commands arrive over MQTT and lockers are real gpiozero
devices on mock pins.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kiosk.devices.replay import write_session
from tests.support import MosquittoBroker, free_port, wait_for_port

BIN = Path(sys.executable).parent


def bridge_cli(shop: Path, *args: str) -> str:
    proc = subprocess.run(
        [str(BIN / "o2o-bridge"), *args], cwd=shop, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def issue(shop: Path, *args: str) -> str:
    return str(json.loads(bridge_cli(shop, "issue", *args, "--json"))["code"])


class Shop:
    def __init__(self, root: Path, http_port: int) -> None:
        self.root, self.http_port = root, http_port
        self.token = (root / "api.token").read_text().strip()

    def api(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}{path}",
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def command(self, command: str, **data: Any) -> int:
        body = {"name": command, "data": data}
        return int(self.api("POST", "/api/v1/kiosks/k1/commands", body)["seq"])

    def set_lockers(self, **settings: object) -> None:
        cfg = self.root / "kiosk-k1.toml"
        extra = "".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items())
        text = cfg.read_text()
        head, _, _ = text.partition("[lockers]\n")
        tail = text.split("[lockers]\n", 1)[1]
        cfg.write_text(head + "[lockers]\n" + extra + tail)

    def set_rule(self, key: str, value: object) -> None:
        cfg = self.root / "kiosk-k1.toml"
        cfg.write_text(cfg.read_text() + f"\n[rules]\n{key} = {json.dumps(value)}\n")

    def scan(self, name: str, texts: list[str]) -> list[dict[str, Any]]:
        frames = write_session(self.root / name, texts, gap_frames=8)
        assert frames
        proc = subprocess.run(
            [
                str(BIN / "o2o-kiosk"),
                "run",
                "--headless",
                "--config",
                "kiosk-k1.toml",
                "--camera",
                name,
                "--exit-at-end",
                "--drain-timeout",
                "30",
            ],
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        return [json.loads(x) for x in proc.stdout.splitlines()]

    def sync_commands(self, upto: int) -> None:
        """Bring the kiosk online until it has applied every command up to `upto`."""
        empty = self.root / "idle"
        if not empty.exists():
            write_session(empty, ["idle"], gap_frames=1)
        kiosk = subprocess.Popen(
            [
                str(BIN / "o2o-kiosk"),
                "run",
                "--headless",
                "--config",
                "kiosk-k1.toml",
                "--camera",
                str(empty),
            ],
            cwd=self.root,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                kiosks = self.api("GET", "/api/v1/kiosks")["kiosks"]
                status = next((k["status"] for k in kiosks if k["kiosk"] == "k1"), None) or {}
                if status.get("online") and status.get("last_cmd_seq") == upto:
                    return
                time.sleep(0.2)
            raise AssertionError(f"kiosk did not apply commands up to {upto}: {status}")
        finally:
            kiosk.send_signal(signal.SIGTERM)
            kiosk.wait(20)


def outcomes(lines: list[dict[str, Any]]) -> list[tuple[str, str | None]]:
    return [(str(x["type"]), x["reason"]) for x in lines]


@pytest.fixture
def shop(tmp_path: Path, mosquitto_broker: MosquittoBroker) -> Iterator[Shop]:
    bridge_cli(
        tmp_path,
        "init",
        "--dir",
        str(tmp_path),
        "--store",
        "s1",
        "--kiosk",
        "k1",
        "--mqtt",
        mosquitto_broker.url,
    )
    port = free_port()
    bridge = subprocess.Popen(
        [str(BIN / "o2o-bridge"), "run", "--config", "bridge.toml", "--http", f"127.0.0.1:{port}"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "bridge.log").open("w"),
    )
    try:
        wait_for_port("127.0.0.1", port, timeout=20, alive=lambda: bridge.poll() is None)
        s = Shop(tmp_path, port)
        s.set_lockers(sim_close_after_s=0.5)
        yield s
    finally:
        bridge.send_signal(signal.SIGTERM)
        bridge.wait(20)


def test_preorder_loaded_by_staff_and_picked_up_by_customer(shop: Shop) -> None:
    root = shop.root
    shop.command("preorder.upsert", order="A1", size="M", name="李娜")
    shop.command("preorder.upsert", order="C3", size="L", name="Big")
    seq = shop.command("code.revoke", id="cp-withdrawn")
    shop.sync_commands(seq)

    staff = issue(root, "staff", "--id", "st1", "--name", "Bo")
    pick_a1 = issue(root, "pickup", "--id", "pk-a1", "--order", "A1")
    pick_c3 = issue(root, "pickup", "--id", "pk-c3", "--order", "C3")
    pick_b2 = issue(root, "pickup", "--id", "pk-b2", "--order", "B2")
    withdrawn = issue(root, "coupon", "--id", "cp-withdrawn")
    booking = issue(root, "reservation", "--id", "rv1", "--at", "+1m", "--service", "haircut")

    # Customer before the order is in a locker: not ready. Unknown order, withdrawn coupon.
    early = shop.scan("before", [pick_a1, pick_b2, withdrawn, booking])
    assert outcomes(early) == [
        ("scan.rejected", "order_not_ready"),
        ("scan.rejected", "unknown_order"),
        ("scan.rejected", "revoked"),
        ("reservation.arrived", None),
    ]
    assert early[3]["data"]["service"] == "haircut" and early[3]["data"]["timing"] == "on_time"

    # Staff: log in, load A1 (a locker opens; locker.loaded once the door is shut again);
    # C3 needs a large locker and this shop has only medium ones.
    staff_run = shop.scan("staff", [staff, pick_a1, pick_c3])
    # (locker.loaded comes when the door shuts, before or after the next scan.)
    assert outcomes(staff_run)[0] == ("staff.login", None)
    assert sorted(outcomes(staff_run)[1:], key=str) == [
        ("locker.loaded", None),
        ("scan.rejected", "no_locker_free"),
    ]
    locker = next(x for x in staff_run if x["type"] == "locker.loaded")["data"]["locker"]

    # The customer comes: the locker opens, the door shuts, the order is picked up.
    pickup = shop.scan("pickup", [pick_a1, pick_a1])
    assert outcomes(pickup)[:1] == [("pickup.opened", None)]
    assert ("pickup.completed", None) in outcomes(pickup)
    assert pickup[0]["data"]["locker"] == locker
    again = shop.scan("again", [pick_a1])
    assert outcomes(again) == [("scan.rejected", "already_used")]

    stored = [json.loads(x) for x in bridge_cli(root, "export", "events").splitlines()]
    types = [e["type"] for e in stored]
    for t in (
        "staff.login",
        "locker.loaded",
        "pickup.opened",
        "pickup.completed",
        "reservation.arrived",
    ):
        assert types.count(t) == 1, (t, types)


def test_door_that_does_not_open_keeps_the_order_ready(shop: Shop) -> None:
    root = shop.root
    seq = shop.command("preorder.upsert", order="D4", size="S")
    shop.sync_commands(seq)
    staff = issue(root, "staff", "--id", "st1")
    pick = issue(root, "pickup", "--id", "pk-d4", "--order", "D4")
    assert ("locker.loaded", None) in outcomes(shop.scan("load", [staff, pick]))

    # The latch sticks: the door reads open only long after the unlock gave up.
    shop.set_lockers(door_timeout_s=0.3, sim_open_delay_s=1.0)
    failed = shop.scan("stuck", [pick])
    assert outcomes(failed)[0] == ("pickup.failed", None)
    assert failed[0]["data"]["reason"] in ("door_not_opened", "sensor_fault")

    # Fixed: the same code now opens the same locker: the order had stayed ready.
    cfg = root / "kiosk-k1.toml"
    cfg.write_text(
        cfg.read_text()
        .replace("door_timeout_s = 0.3\n", "")
        .replace("sim_open_delay_s = 1.0\n", "")
    )
    ok = shop.scan("fixed", [pick])
    assert outcomes(ok)[0] == ("pickup.opened", None)


def test_code_types_the_shop_turned_off_are_not_allowed(shop: Shop) -> None:
    shop.set_rule("accept", ["m", "c"])
    pick = issue(shop.root, "pickup", "--id", "pk1", "--order", "X")
    member = issue(shop.root, "member", "--id", "u1")
    assert outcomes(shop.scan("off", [pick, member])) == [
        ("scan.rejected", "not_allowed"),
        ("checkin", None),
    ]
