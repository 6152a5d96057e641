"""A bad kiosk config stops the kiosk with one clear line, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kiosk.config import load_config
from o2o_protocol.config_file import ConfigError
from tests.keys import Issuer

ISSUER = Issuer()


def write(tmp_path: Path, body: str) -> Path:
    keys = "\n".join(f'{k} = "{v}"' for k, v in ISSUER.config_keys.items())
    path = tmp_path / "kiosk-k1.toml"
    path.write_text(f'store = "s1"\nkiosk = "k1"\n{body}\n[keys]\n{keys}\n', encoding="utf-8")
    return path


def test_minimal_config_loads_with_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, 'data_dir = "data"'))
    assert cfg.data_dir == tmp_path / "data"  # relative to the file, not the cwd
    assert cfg.mqtt.url == "mqtt://127.0.0.1:1883"
    assert cfg.ui.language == "zh_CN"
    assert list(cfg.public_keys()) == [ISSUER.kid]


@pytest.mark.parametrize(
    ("body", "key", "words"),
    [
        ('[mqtt]\nurl = "http://x"', "mqtt.url", "mqtt://host:port"),
        ("[rules]\npoints_per_vist = 3", "rules.points_per_vist", "unknown key"),
        ("[rules]\npoints_per_visit = -1", "rules.points_per_visit", "greater than or equal"),
        ('[camera]\ntype = "webcam"', "camera.type", "v4l2"),
    ],
)
def test_bad_values_name_file_key_and_problem(
    tmp_path: Path, body: str, key: str, words: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, body))
    message = str(info.value)
    assert message.startswith(str(tmp_path / "kiosk-k1.toml"))
    assert f": {key}: " in message and words in message


def test_key_that_does_not_match_its_id_is_refused(tmp_path: Path) -> None:
    other = Issuer()
    value = next(iter(other.config_keys.values()))
    path = tmp_path / "kiosk.toml"
    path.write_text(f'store = "s1"\nkiosk = "k1"\n[keys]\n{ISSUER.kid} = "{value}"\n')
    with pytest.raises(ConfigError, match="does not match"):
        load_config(path)


def test_cli_exits_2_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "kiosk-k1.toml"
    bad.write_text("store = \n")
    for args in (
        ["run", "--headless", "--config", str(bad)],
        ["run", "--headless", "--config", str(tmp_path / "missing.toml")],
        ["check", "--config", str(bad)],
        ["run", "--bogus-flag"],
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "kiosk.cli", *args], capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 2, (args, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "error" in lines[0], proc.stderr
        assert "Traceback" not in proc.stderr


def test_timezone_is_an_iana_name_and_a_bad_one_is_one_line(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, 'timezone = "Asia/Shanghai"'))
    assert cfg.timezone == "Asia/Shanghai"
    assert load_config(write(tmp_path, "")).timezone is None  # the machine's zone
    bad = write(tmp_path, 'timezone = "Asia/Shanghia"')
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    assert f"{bad}: timezone: " in str(info.value) and "Asia/Shanghia" in str(info.value)
    proc = subprocess.run(
        [sys.executable, "-m", "kiosk.cli", "check", "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "unknown time zone" in lines[0]
