"""The systemd units in deploy/ are what a shop owner copies to /etc/systemd/system.

`systemd-analyze verify` checks them as systemd would load them: section and key names,
value syntax, and that the command each one starts exists. The units name the install
path of the README (/opt/o2o/.venv); here that prefix is mapped to this checkout's
virtualenv, so the check also proves the entry points they start are ones we install.
Any warning fails the test: systemd ignores an unknown or misspelt key and starts the
unit without it, which is how a typo would reach a shop unnoticed.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import missing_component

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
INSTALL_PREFIX = "/opt/o2o/.venv"
UNITS = sorted(DEPLOY.glob("*.service"))


def _verify(unit: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _installed_copy(unit: Path, into: Path) -> Path:
    """The unit as installed, with the install prefix pointing at this virtualenv.

    A template (`name@.service`) is verified as one instance of it, as systemd starts it.
    """
    name = unit.name.replace("@.service", "@1.service")
    copy = into / name
    copy.write_text(unit.read_text().replace(INSTALL_PREFIX, sys.prefix))
    return copy


@pytest.fixture(scope="module")
def analyze() -> None:
    if shutil.which("systemd-analyze") is None:
        missing_component("systemd-analyze", "install the systemd package")


def test_the_deploy_folder_has_the_units_the_readme_names() -> None:
    names = {u.name for u in UNITS}
    assert {"o2o-bridge.service", "o2o-kiosk.service", "o2o-kiosk-headless.service"} <= names


@pytest.mark.parametrize("unit", UNITS, ids=[u.name for u in UNITS])
def test_unit_verifies_without_a_warning(analyze: None, unit: Path, tmp_path: Path) -> None:
    result = _verify(_installed_copy(unit, tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


def test_a_misspelt_key_is_caught(analyze: None, tmp_path: Path) -> None:
    """The check itself can fail: a unit with a typo in a key does not pass."""
    unit = tmp_path / "o2o-typo.service"
    good = (DEPLOY / "o2o-bridge.service").read_text().replace(INSTALL_PREFIX, sys.prefix)
    unit.write_text(good.replace("RestartSec=", "RestartSecs="))
    result = _verify(unit)
    assert "Unknown key" in result.stderr and "RestartSecs" in result.stderr
