"""A shop on this machine for black-box tests: the command lines of docs/cli.md only.

`o2o-bridge init` makes the shop, `o2o-bridge run` serves it, `o2o-kiosk run --headless`
scans camera frames; tests read what the kiosk printed and what the bridge stored.
"""

from __future__ import annotations

import contextlib
import io
import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cloud_bridge.cli import main as bridge_main
from tests.support import free_port, wait_for_port

BIN = Path(sys.executable).parent


def tool(name: str, *args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `o2o-bridge` or `o2o-kiosk`; a traceback at the user is always a failure."""
    proc = subprocess.run(
        [str(BIN / name), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def bridge_cli(shop: Path, *args: str) -> str:
    proc = tool("o2o-bridge", *args, cwd=shop)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def init_shop(shop: Path, mqtt_url: str, *, store: str = "s1", kiosk: str = "k1") -> None:
    bridge_cli(
        shop, "init", "--dir", str(shop), "--store", store, "--kiosk", kiosk, "--mqtt", mqtt_url
    )


def _in_process(shop: Path, *args: str) -> str:
    """`o2o-bridge ARGS --config bridge.toml`, run in this process; its stdout.

    For the commands tests run dozens of times (issue, export): a new interpreter for
    each cost a third of a second or more. test_bridge_cli runs the command's own process.
    """
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = bridge_main([*args, "--config", str(shop / "bridge.toml")])
    assert status == 0, err.getvalue()
    return out.getvalue()


def issue(shop: Path, kind: str, *args: str) -> str:
    """A signed code from the shop's key (`o2o-bridge issue KIND ... --json`)."""
    return str(json.loads(_in_process(shop, "issue", kind, *args, "--json"))["code"])


def stored_events(shop: Path) -> list[dict[str, Any]]:
    """What the bridge stored (`o2o-bridge export events`)."""
    return [json.loads(x) for x in _in_process(shop, "export", "events").splitlines() if x]


@contextlib.contextmanager
def running_bridge(shop: Path) -> Iterator[int]:
    """`o2o-bridge run` in the shop, connected to its broker; yields its HTTP port, stops
    it with SIGTERM (exit 0)."""
    port = free_port()
    log = (shop / "bridge.log").open("w")
    bridge = subprocess.Popen(
        [str(BIN / "o2o-bridge"), "run", "--config", "bridge.toml", "--http", f"127.0.0.1:{port}"],
        cwd=shop,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port("127.0.0.1", port, timeout=20, alive=lambda: bridge.poll() is None)
        _wait_connected(port)
        yield port
    finally:
        bridge.send_signal(signal.SIGTERM)
        try:
            status = bridge.wait(20)
        finally:
            if bridge.poll() is None:
                bridge.kill()
            log.close()
        assert status == 0, (shop / "bridge.log").read_text()[-3000:]


def _wait_connected(port: int, timeout: float = 20) -> None:
    """The bridge's /health says its broker connection is up (it is subscribed)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if json.loads(r.read()).get("mqtt_connected"):
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError("the bridge did not connect to its broker")
        time.sleep(0.1)


def kiosk_args(camera: Path | str, *, config: str = "kiosk-k1.toml") -> list[str]:
    return [
        str(BIN / "o2o-kiosk"),
        "run",
        "--headless",
        "--config",
        config,
        "--camera",
        str(camera),
    ]


def run_kiosk(
    shop: Path, camera: Path | str, *, drain_timeout: float = 30, timeout: float = 120
) -> tuple[int, list[dict[str, Any]], str]:
    """A headless kiosk over a file camera until it ends and drains: (status, lines, stderr)."""
    proc = subprocess.run(
        [*kiosk_args(camera), "--exit-at-end", "--drain-timeout", str(drain_timeout)],
        cwd=shop,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    return proc.returncode, lines, proc.stderr


def outcomes(lines: list[dict[str, Any]]) -> list[tuple[str, str | None]]:
    return [(str(x["type"]), x["reason"]) for x in lines]
