"""A development Mosquitto started from `broker_config/mosquitto-dev.conf` on any port.

The demo, the benchmarks and the tests all need a real broker that is theirs alone (a
machine may already run one on 1883): this starts one on a free loopback port, can stop,
kill and restart it on the same port, and never touches the system's broker.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
BROKER_CONFIG = REPO_ROOT / "broker_config"
DEV_CONF = BROKER_CONFIG / "mosquitto-dev.conf"

_LISTENER_RE = re.compile(r"^listener\s+\d+(?P<rest>.*)$", re.MULTILINE)


def find_program(name: str, extra_dirs: Iterable[str] = ("/usr/sbin", "/sbin")) -> str | None:
    """Like shutil.which, plus sbin dirs, which a non-root PATH often lacks."""
    found = shutil.which(name)
    if found:
        return found
    for directory in extra_dirs:
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (picked by the kernel)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_for_port(
    host: str, port: int, timeout: float = 5.0, alive: Callable[[], bool] | None = None
) -> None:
    """Block until host:port accepts a TCP connection.

    `alive` lets the caller stop waiting for a server process that already died.
    Raises TimeoutError (or RuntimeError when `alive` turns false).
    """
    deadline = time.monotonic() + timeout
    while True:
        if port_open(host, port):
            return
        if alive is not None and not alive():
            raise RuntimeError(f"server for {host}:{port} exited before listening")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{host}:{port} did not accept connections within {timeout}s")
        time.sleep(0.02)


def set_listener_port(config: str, port: int) -> str:
    """Rewrite the port of the first `listener PORT [ADDRESS]` line of a config."""
    new, count = _LISTENER_RE.subn(lambda m: f"listener {port}{m['rest']}", config, count=1)
    if count != 1:
        raise ValueError("config has no `listener PORT` line to rewrite")
    return new


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class DevBroker:
    """A real `mosquitto` process on a fixed port that may be stopped, killed and started
    again on the same port (chaos tests)."""

    free_port = staticmethod(free_port)

    def __init__(self, binary: str, config_path: Path, port: int, host: str = "127.0.0.1"):
        self.binary = binary
        self.config_path = config_path
        self.host = host
        self.port = port
        self.log_path = config_path.with_suffix(".log")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 5.0) -> None:
        """Start (again) on the same port; returns once the port accepts connections."""
        if self.running:
            return
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [self.binary, "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C meant for the caller does not hit it first
            )
        try:
            wait_for_port(self.host, self.port, timeout, alive=lambda: self.running)
        except (TimeoutError, RuntimeError) as exc:
            self.kill()
            raise RuntimeError(f"mosquitto did not start: {exc}\n{tail(self.log_path)}") from exc

    def _signal(self, sig: signal.Signals, timeout: float) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stop(self, timeout: float = 5.0) -> None:
        """Graceful stop (SIGTERM): the broker disconnects clients and exits."""
        self._signal(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """Abrupt stop (SIGKILL), like a power cut: no DISCONNECT, wills fire later."""
        self._signal(signal.SIGKILL, 5.0)

    @classmethod
    def from_config(
        cls,
        directory: Path,
        source: Path = DEV_CONF,
        *,
        port: int | None = None,
        transform: Callable[[str], str] | None = None,
        name: str = "mosquitto",
    ) -> DevBroker:
        """Write `source` with its listener moved to a free port into `directory`.

        `transform` may edit the text further (paths, listeners). Raises
        FileNotFoundError when the `mosquitto` binary is missing.
        """
        binary = find_program("mosquitto")
        if binary is None:
            raise FileNotFoundError("mosquitto")
        port = port or free_port()
        text = set_listener_port(source.read_text(), port)
        if transform is not None:
            text = transform(text)
        if os.geteuid() == 0:
            # As root, mosquitto drops to user `mosquitto`, which cannot read a private
            # temporary directory; a throwaway broker has no reason to switch users.
            text += "\nuser root\n"
        directory.mkdir(parents=True, exist_ok=True)
        config_path = directory / f"{name}.conf"
        config_path.write_text(text)
        return cls(binary, config_path, port)

    @classmethod
    def start_on_free_port(cls, directory: Path) -> DevBroker:
        broker = cls.from_config(directory)
        broker.start()
        return broker
