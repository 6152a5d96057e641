"""`o2o-kiosk check` as an owner runs it, on the simulated hardware `init` configures.

The only change to init's kiosk config is the camera: init names device 0 (the kiosk's
webcam), which a test machine lacks, so the camera here is a directory of images.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from cloud_bridge.cli import main as bridge_main
from tests.support import MosquittoBroker


def kiosk_config(tmp_path: Path, mqtt_url: str, extra_lockers: str = "") -> Path:
    shop = tmp_path / "shop"
    assert bridge_main(["init", "--dir", str(shop), "--kiosk", "door1", "--mqtt", mqtt_url]) == 0
    frames = tmp_path / "frames"
    frames.mkdir()
    cv2.imwrite(str(frames / "frame000.png"), np.full((240, 320, 3), 255, np.uint8))
    path = shop / "kiosk-door1.toml"
    text = path.read_text(encoding="utf-8")
    assert 'type = "simulated"' in text.split("[lockers]")[1].split("[printer]")[0]
    text = re.sub(r'(?m)^type = "v4l2".*$', 'type = "images"', text)
    text = re.sub(r'(?m)^source = "0".*$', f'source = "{frames}"', text)
    if extra_lockers:
        text = text.replace("[lockers]\n", f"[lockers]\n{extra_lockers}\n")
    path.write_text(text, encoding="utf-8")
    return path


def run_check(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kiosk.cli", "check", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def rows(stdout: str) -> dict[str, tuple[str, str]]:
    table: dict[str, tuple[str, str]] = {}
    for line in stdout.splitlines():
        m = re.match(r"^(\S+(?: \d+)?)\s+(PASS|FAIL)\s+(.*)$", line)
        if m:
            table[m.group(1)] = (m.group(2), m.group(3))
    return table


def test_init_simulated_hardware_passes_check(
    tmp_path: Path, mosquitto_broker: MosquittoBroker
) -> None:
    proc = run_check(kiosk_config(tmp_path, mosquitto_broker.url))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table = rows(proc.stdout)
    assert proc.stdout.splitlines()[0].split() == ["CHECK", "RESULT", "DETAIL"]
    expected = {"store", "camera", "locker 1", "locker 2", "locker 3", "locker 4"}
    assert expected | {"printer", "broker"} == set(table)
    assert all(result == "PASS" for result, _ in table.values()), proc.stdout
    assert "door opened in" in table["locker 1"][1] and "closed again" in table["locker 1"][1]
    assert "test slip printed" in table["printer"][1]
    assert f"{mosquitto_broker.port}" in table["broker"][1]
    # Columns line up: RESULT starts at the same offset on every row.
    offsets = {line.index(" PASS") for line in proc.stdout.splitlines() if " PASS" in line}
    assert len(offsets) == 1
    assert "Traceback" not in proc.stderr


def test_broker_down_fails_that_row_and_the_exit_status(
    tmp_path: Path, mosquitto_broker: MosquittoBroker
) -> None:
    config = kiosk_config(tmp_path, mosquitto_broker.url, extra_lockers="pulse_s = 0.05")
    mosquitto_broker.stop()
    proc = run_check(config)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    table = rows(proc.stdout)
    assert table["broker"][0] == "FAIL"
    assert all(r == "PASS" for name, (r, _) in table.items() if name != "broker"), proc.stdout


def with_device_camera(config: Path, source: str) -> Path:
    """The config's camera as init writes it: a device (here `source`), not image files."""
    text = config.read_text(encoding="utf-8")
    text = re.sub(r'(?m)^type = "images"$', 'type = "v4l2"', text)
    text = re.sub(r'(?m)^source = ".*frames"$', f'source = "{source}"', text)
    config.write_text(text, encoding="utf-8")
    return config


def test_camera_device_that_is_missing_fails_honestly(tmp_path: Path) -> None:
    from kiosk.config import load_config
    from kiosk.selftest import check_camera

    config = with_device_camera(kiosk_config(tmp_path, "mqtt://127.0.0.1:1"), "/dev/video-none")
    result = check_camera(load_config(config))
    assert not result.ok and "/dev/video-none" in result.detail


@pytest.mark.parametrize("state", ["paper_out", "offline"])
def test_printer_fault_fails_the_printer_row(
    state: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kiosk import selftest
    from kiosk.config import load_config
    from kiosk.devices.printer import SimulatedPrinter

    cfg = load_config(kiosk_config(tmp_path, "mqtt://127.0.0.1:1"))
    monkeypatch.setattr(SimulatedPrinter, "status", lambda self: state)
    result = selftest.check_printer(cfg)
    assert not result.ok and state in result.detail


def test_check_without_a_camera_prints_no_opencv_warnings(tmp_path: Path) -> None:
    """The table says "no camera" in one line; OpenCV's own warnings stay out of it."""
    if Path("/dev/video0").exists():
        pytest.skip("this machine has a camera at device 0")
    config = with_device_camera(kiosk_config(tmp_path, "mqtt://127.0.0.1:1"), "0")
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_LOG_LEVEL"}
    proc = subprocess.run(
        [sys.executable, "-m", "kiosk.cli", "check", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert rows(proc.stdout)["camera"][0] == "FAIL", proc.stdout
    assert "[ WARN" not in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
