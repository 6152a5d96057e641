"""Power cuts at the door: the kiosk is SIGKILLed at random moments during a stream of
scans, again and again. The store must always open, and every outcome the kiosk printed
before a kill must reach the bridge, exactly once."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from kiosk.devices.replay import write_session
from tests.support import MosquittoBroker, free_port, wait_for_port

BIN = Path(sys.executable).parent
KILLS = 50


def _cli(shop: Path, *args: str) -> str:
    proc = subprocess.run(
        [str(BIN / "o2o-bridge"), *args], cwd=shop, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_kiosk_killed_50_times_loses_nothing_and_doubles_nothing(
    tmp_path: Path, mosquitto_broker: MosquittoBroker
) -> None:
    shop = tmp_path
    _cli(
        shop,
        "init",
        "--dir",
        str(shop),
        "--store",
        "s1",
        "--kiosk",
        "k1",
        "--mqtt",
        mosquitto_broker.url,
    )
    codes = [
        json.loads(_cli(shop, "issue", "coupon", "--id", f"cp{i}", "--json"))["code"]
        for i in range(6)
    ]
    codes += [
        json.loads(_cli(shop, "issue", "member", "--id", f"m{i}", "--json"))["code"]
        for i in range(3)
    ]
    sessions = []
    rng = random.Random(1234)
    for n in range(4):
        texts = codes[:]
        rng.shuffle(texts)
        sessions.append(shop / f"session{n}")
        write_session(sessions[-1], texts, hold_frames=1, gap_frames=3)

    port = free_port()
    bridge = subprocess.Popen(
        [str(BIN / "o2o-bridge"), "run", "--config", "bridge.toml", "--http", f"127.0.0.1:{port}"],
        cwd=shop,
        stdout=subprocess.DEVNULL,
        stderr=(shop / "bridge.log").open("w"),
    )
    printed: list[dict[str, object]] = []
    try:
        wait_for_port("127.0.0.1", port, timeout=20, alive=lambda: bridge.poll() is None)
        for kill in range(KILLS):
            kiosk = subprocess.Popen(
                [
                    str(BIN / "o2o-kiosk"),
                    "run",
                    "--headless",
                    "--config",
                    "kiosk-k1.toml",
                    "--camera",
                    str(sessions[kill % len(sessions)]),
                ],
                cwd=shop,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            assert kiosk.stdout is not None
            first = kiosk.stdout.readline()  # scanning has begun: now pull the plug
            time.sleep(rng.uniform(0.0, 0.3))
            kiosk.send_signal(signal.SIGKILL)
            rest, _ = kiosk.communicate(timeout=30)
            out = first + rest
            # A line cut off by the kill was never a complete outcome shown to anyone.
            printed += [json.loads(x) for x in out.splitlines() if x.endswith("}")]
        # Power back on for good: the kiosk drains what it holds.
        final = subprocess.run(
            [
                str(BIN / "o2o-kiosk"),
                "run",
                "--headless",
                "--config",
                "kiosk-k1.toml",
                "--camera",
                str(sessions[0]),
                "--exit-at-end",
                "--drain-timeout",
                "60",
            ],
            cwd=shop,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert final.returncode == 0, final.stderr[-2000:]
        printed += [json.loads(x) for x in final.stdout.splitlines()]
    finally:
        bridge.send_signal(signal.SIGTERM)
        bridge.wait(20)

    stored = [json.loads(x) for x in _cli(shop, "export", "events").splitlines()]
    stored_ids = [e["id"] for e in stored]
    assert len(stored_ids) == len(set(stored_ids))
    missing = {str(p["event"]) for p in printed} - set(stored_ids)
    assert not missing, f"{len(missing)} printed outcomes never reached the bridge"
    assert len(printed) > KILLS  # the kills landed during a real stream of scans
    # Sequence numbers stayed gapless through every kill.
    assert sorted(e["seq"] for e in stored) == list(range(1, len(stored) + 1))
    # Each coupon was redeemed at most once, however often the power went.
    redeemed = [e["data"]["coupon_id"] for e in stored if e["type"] == "coupon.redeemed"]
    assert len(redeemed) == len(set(redeemed)) == 6
