"""Power cuts at the door: the kiosk is SIGKILLed at random moments during a stream of
scans, again and again. The store must always open, and every outcome the kiosk printed
before a kill must reach the bridge, exactly once."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from devtools.replay import write_session
from tests.shop import init_shop, issue, kiosk_args, run_kiosk, running_bridge, stored_events
from tests.support import MosquittoBroker

KILLS = 50


def test_kiosk_killed_50_times_loses_nothing_and_doubles_nothing(
    tmp_path: Path, mosquitto_broker: MosquittoBroker
) -> None:
    shop = tmp_path
    init_shop(shop, mosquitto_broker.url)
    codes = [issue(shop, "coupon", "--id", f"cp{i}") for i in range(6)]
    codes += [issue(shop, "member", "--id", f"m{i}") for i in range(3)]
    rng = random.Random(1234)
    sessions = []
    for n in range(4):
        texts = codes[:]
        rng.shuffle(texts)
        sessions.append(shop / f"session{n}")
        write_session(sessions[-1], texts, hold_frames=1, gap_frames=3)

    printed: list[dict[str, Any]] = []
    with running_bridge(shop):
        for kill in range(KILLS):
            kiosk = subprocess.Popen(
                kiosk_args(sessions[kill % len(sessions)]),
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
            # A line cut off by the kill was never a complete outcome shown to anyone.
            printed += [json.loads(x) for x in (first + rest).splitlines() if x.endswith("}")]
        # Power back on for good: the kiosk drains what it holds.
        status, lines, stderr = run_kiosk(shop, sessions[0], drain_timeout=60, timeout=180)
        assert status == 0, stderr[-2000:]
        printed += lines

    stored = stored_events(shop)
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
