"""`make demo` as a new user meets it: the door story, then something to look at.

The demo must end with the dashboard serving the shop with weeks of history until
Ctrl-C, and on a machine with a display the kiosk's window playing new codes through a
simulated camera, whose scans reach the cloud service like a real door's. Ctrl-C stops
all of it.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.support import missing_component

ROOT = Path(__file__).resolve().parent.parent
ADDRESS = re.compile(r"Dashboard with history: (http://127\.0\.0\.1:(\d+)/)")


class Demo:
    """scripts/demo.py in its own process group, its output read line by line."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "scripts" / "demo.py"),
                "--weeks",
                "2",
                "--dir",
                str(directory),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def wait_for(self, pattern: re.Pattern[str], timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                if self.proc.poll() is not None and self.lines.empty():
                    break
                continue
            self.seen.append(line)
            if found := pattern.search(line):
                return found
        raise AssertionError(f"no {pattern.pattern!r} in the demo's output:\n{''.join(self.seen)}")

    def ctrl_c(self) -> int:
        """What a terminal does on Ctrl-C: SIGINT to the whole foreground group."""
        os.killpg(self.proc.pid, signal.SIGINT)
        return self.proc.wait(60)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def _get(url: str, token: str) -> Any:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def _until(what: str, probe: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if found := probe():
                return found
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"waited {timeout} s for {what}")


@pytest.fixture
def demo(tmp_path: Path, xvfb_display: str) -> Iterator[Demo]:
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        missing_component("mosquitto", "apt-get install mosquitto, or run scripts/setup.sh")
    run = Demo(tmp_path / "demo-run")
    try:
        yield run
    finally:
        run.kill()


def test_the_demo_leaves_the_dashboard_with_history_and_the_kiosk_window_running(
    demo: Demo,
) -> None:
    found = demo.wait_for(ADDRESS, timeout=420)
    url, port = found.group(1), int(found.group(2))
    token = (demo.dir / "api.token").read_text().strip()
    read_token = (demo.dir / "dashboard.token").read_text().strip()

    # The dashboard answers, and its figures hold the simulated weeks, not just today.
    with urllib.request.urlopen(url, timeout=10) as page:
        assert page.status == 200
    today = date.today()
    span = f"from={today - timedelta(days=15)}&to={today}"
    daily = _get(f"{url}api/v1/insights?{span}", read_token)["daily"]
    busy_days = [d for d in daily if d["checkins"] > 0]
    assert len(busy_days) >= 7, daily

    # The kiosk window's played camera checks in a new member, as a door would.
    member = _until(
        "the kiosk window's first scan to reach the cloud service",
        lambda: _get(f"{url}api/v1/members/hua", token),
        timeout=120,
    )
    assert member["visits"] >= 1

    assert demo.ctrl_c() == 0
    demo.wait_for(re.compile("Demo stopped"), timeout=10)
    with socket.socket() as s:  # the dashboard went with it
        assert s.connect_ex(("127.0.0.1", port)) != 0
