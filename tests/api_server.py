"""A bridge's REST API in a process of its own, for tests that talk to it over real HTTP.

    python -m tests.api_server DIR PORT [BODY_BYTES]

Serves `create_app` with uvicorn on 127.0.0.1:PORT, on a real SQLite file in DIR, with
the token in DIR/api.token (and a read-only one in DIR/dashboard.token). No MQTT: commands
are queued, not published. Tests measure its memory from /proc and stop it with SIGTERM.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
from pathlib import Path

from tests.support import free_port, tail, wait_for_port


def main(argv: list[str]) -> int:
    import uvicorn
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from cloud_bridge.api import create_app
    from cloud_bridge.config import BridgeConfig
    from cloud_bridge.db import Repository
    from o2o_protocol.config_file import validate_config

    directory, port = Path(argv[0]), int(argv[1])
    raw: dict[str, object] = {"store": "s1", "kiosks": ["k1", "k2"]}
    if len(argv) > 2:
        raw["limits"] = {"body_bytes": int(argv[2])}
    config = validate_config(directory / "bridge.toml", raw, BridgeConfig)
    repo = Repository.from_url(f"sqlite:///{directory / 'bridge.db'}")
    repo.migrate()
    app = create_app(
        config,
        repo,
        token=(directory / "api.token").read_text().strip(),
        read_token=(directory / "dashboard.token").read_text().strip(),
        signing_key=Ed25519PrivateKey.generate(),
    )
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    return 0


class ApiServer:
    """Starts `python -m tests.api_server` and stops it; `url`, `token`, `read_token`, `pid`."""

    def __init__(self, directory: Path, *, body_bytes: int | None = None) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.token = secrets.token_urlsafe(24)
        self.read_token = secrets.token_urlsafe(24)
        (directory / "api.token").write_text(self.token)
        (directory / "dashboard.token").write_text(self.read_token)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = directory / "server.log"
        args = [sys.executable, "-m", "tests.api_server", str(directory), str(self.port)]
        if body_bytes is not None:
            args.append(str(body_bytes))
        root = Path(__file__).resolve().parent.parent
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(args, cwd=root, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_for_port("127.0.0.1", self.port, 30)
        except Exception:
            self.stop()
            raise RuntimeError(f"the API server did not start:\n{tail(self.log)}") from None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def status(self, field: str) -> int:
        """A memory figure of the server process in KiB, e.g. VmHWM (peak) or VmRSS."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise KeyError(field)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def __enter__(self) -> ApiServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
