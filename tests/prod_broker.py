"""The production broker config (broker_config/mosquitto-prod.conf) started for tests.

Users, passwords and the ACL are the real files' rules; only the listener moves to a
free loopback port (and to TLS with certificates from make-certs.sh when asked). Shared
by the broker-config tests and the sync security tests through tests/conftest.py.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import (
    BROKER_CONFIG,
    MosquittoBroker,
    find_program,
    free_port,
    missing_component,
)

PROD_CONF = BROKER_CONFIG / "mosquitto-prod.conf"
_TLS_KEYS = ("cafile", "certfile", "keyfile", "tls_version")


@dataclass
class ProdBroker:
    broker: MosquittoBroker
    passwords: dict[str, str]

    @property
    def port(self) -> int:
        return self.broker.port


def _set_option(text: str, key: str, value: str | None) -> str:
    """Replace (or with None, drop) every ``key ...`` line of a Mosquitto config."""
    pattern = re.compile(rf"^{re.escape(key)}\s.*$\n?", re.MULTILINE)
    assert pattern.search(text), f"{key} not in config"
    return pattern.sub("" if value is None else f"{key} {value}\n", text)


def _prod_users(directory: Path) -> dict[str, str]:
    """Password + ACL files made the way an operator would, with the repo's scripts."""
    mosquitto_passwd = find_program("mosquitto_passwd")
    if mosquitto_passwd is None:
        missing_component("mosquitto_passwd", "apt-get install mosquitto")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "acl").write_text((BROKER_CONFIG / "acl").read_text())
    passwd = directory / "passwd"
    passwords: dict[str, str] = {}
    for store, kiosk in [("s1", "k1"), ("s1", "k2"), ("s2", "k1")]:
        out = subprocess.run(
            ["bash", str(BROKER_CONFIG / "add-kiosk-user.sh"), store, kiosk, str(passwd)],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        passwords[f"{store}/{kiosk}"] = out.stdout.strip()
    for user in ("bridge", "dashboard", "homeassistant", "s1", "s2"):
        passwords[user] = f"pw-{user}-{time.monotonic_ns()}"
        subprocess.run(
            [str(mosquitto_passwd), "-b", str(passwd), user, passwords[user]],
            check=True,
            capture_output=True,
            timeout=30,
        )
    return passwords


def _prod_transform(directory: Path, tls_dir: Path | None) -> Callable[[str], str]:
    def transform(text: str) -> str:
        text = _set_option(text, "password_file", str(directory / "passwd"))
        text = _set_option(text, "acl_file", str(directory / "acl"))
        text = _set_option(text, "persistence_location", f"{directory}/")
        for key in _TLS_KEYS:
            text = _set_option(text, key, None)
        if tls_dir is not None:
            text += "".join(
                f"\n{key} {tls_dir / name}"
                for key, name in [
                    ("cafile", "ca.crt"),
                    ("certfile", "server.crt"),
                    ("keyfile", "server.key"),
                ]
            )
            text += "\ntls_version tlsv1.2\n"
        return text

    return transform


def _start_prod(directory: Path, tls_dir: Path | None = None) -> ProdBroker:
    """The production config on a free loopback port, its files moved into ``directory``.

    Without ``tls_dir`` the 8883 listener becomes plain MQTT; everything else
    (allow_anonymous, password_file, acl_file, limits) is the production file's.
    """
    passwords = _prod_users(directory)
    text = PROD_CONF.read_text()
    assert re.search(r"^listener 8883$", text, re.MULTILINE)
    port = free_port()

    def transform(text: str) -> str:
        text = re.sub(r"^listener \d+$", f"listener {port} 127.0.0.1", text, flags=re.MULTILINE)
        return _prod_transform(directory, tls_dir)(text)

    try:
        broker = MosquittoBroker.from_config(
            directory, PROD_CONF, port=port, transform=transform, name="prod"
        )
    except FileNotFoundError:
        missing_component("mosquitto", "apt-get install mosquitto")
        raise
    broker.start()
    return ProdBroker(broker, passwords)


@pytest.fixture(scope="module")
def prod(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProdBroker]:
    broker = _start_prod(tmp_path_factory.mktemp("prod"))
    yield broker
    broker.broker.stop()


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if find_program("openssl") is None:
        missing_component("openssl", "apt-get install openssl")
    directory = tmp_path_factory.mktemp("certs")
    subprocess.run(
        ["bash", str(BROKER_CONFIG / "make-certs.sh"), str(directory), "localhost"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return directory


@pytest.fixture(scope="module")
def prod_tls(tmp_path_factory: pytest.TempPathFactory, certs: Path) -> Iterator[ProdBroker]:
    broker = _start_prod(tmp_path_factory.mktemp("prod-tls"), tls_dir=certs)
    yield broker
    broker.broker.stop()
