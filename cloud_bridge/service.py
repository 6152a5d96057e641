"""`o2o-bridge run`: the MQTT runtime, REST API and dashboard in one process, stopped in order.

A service of several stores (docs/chain.md) runs one runtime per store (its own MQTT
link, client id, figures and Home Assistant device) on one shared repository, and one
HTTP server whose `ChainApp` picks the store by token. Several processes of one service
(`run --worker NAME`, docs/chain.md) each run all of this; every runtime knows whether
this worker holds its store's lease (`leases.py`).

Start-up binds the HTTP socket first (a port in use is a one-line error, before anything
else has started), then starts the runtime (`runtime.py`: ingest, commands, figures),
then serves. SIGTERM or SIGINT stops uvicorn, then the runtime (which stores and acks
what it has taken before disconnecting).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import FrameType

import uvicorn
from sqlalchemy.engine import make_url
from starlette.types import ASGIApp

from cloud_bridge.api import create_app
from cloud_bridge.chain import ChainApp, chain_figures, service_health
from cloud_bridge.config import (
    BridgeConfig,
    load_chain_token,
    load_signing_key,
    load_store_tokens,
)
from cloud_bridge.db import Repository
from cloud_bridge.runtime import BridgeRuntime
from o2o_protocol.config_file import ConfigError

log = logging.getLogger(__name__)


class Server(uvicorn.Server):
    """uvicorn, but SIGINT/SIGTERM end `run` normally (exit 0) instead of being re-raised."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        signals = (signal.SIGINT, signal.SIGTERM)
        previous = {s: signal.signal(s, self._on_signal) for s in signals}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _on_signal(self, sig: int, _frame: FrameType | None) -> None:
        log.info("received %s, stopping", signal.Signals(sig).name)
        if self.should_exit:
            self.force_exit = True
        self.should_exit = True


def run_service(
    config: BridgeConfig, host: str, port: int, *, config_path: Path | str = "bridge.toml"
) -> int:
    """Run until SIGTERM/SIGINT; returns the exit status. Raises ConfigError on bad set-up."""
    repo = Repository.from_url(config.db.url)
    try:
        repo.migrate()
    except Exception as exc:
        repo.close()
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        password = make_url(config.db.url).password
        if password:  # a driver may quote the URL it was given
            first = first.replace(str(password), "***")
        raise ConfigError(config_path, "db.url", f"cannot open the database: {first}") from None
    runtimes: list[BridgeRuntime] = []
    try:
        app, runtimes = _build(config, repo)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            sock = socket.create_server((host, port), family=family)
        except OSError as exc:
            raise ValueError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    except BaseException:
        repo.close()
        raise

    started: list[BridgeRuntime] = []
    for runtime in runtimes:
        runtime.start()
        started.append(runtime)
    server = Server(
        uvicorn.Config(
            app, log_config=None, access_log=False, lifespan="off", timeout_graceful_shutdown=5
        )
    )
    log.info(
        "o2o-bridge%s for store%s %s listening on http://%s:%d (broker %s, database %s)",
        f" worker {config.worker}" if config.worker else "",
        "s" if len(runtimes) > 1 else "",
        ", ".join(config.store_ids()),
        host,
        port,
        config.mqtt.url,
        make_url(config.db.url).render_as_string(hide_password=True),
    )
    try:
        server.run(sockets=[sock])
    finally:
        _stop_all(started)
        repo.close()
        sock.close()
        log.info("stopped")
    return 0


def _stop_all(runtimes: list[BridgeRuntime]) -> None:
    """Stop every store's runtime at once: each stores and acks what it has taken and
    lets its after-commit work finish, which under a backlog takes a while; one after
    another, a service of many stores would outlast systemd's stop timeout."""
    if len(runtimes) == 1:
        runtimes[0].stop()
        return

    def stop(runtime: BridgeRuntime) -> None:
        try:
            runtime.stop()
        except Exception:
            log.exception("could not stop store %s cleanly", runtime.config.store)

    with ThreadPoolExecutor(max_workers=len(runtimes) or 1, thread_name_prefix="stop") as pool:
        list(pool.map(stop, runtimes))


def _build(config: BridgeConfig, repo: Repository) -> tuple[ASGIApp, list[BridgeRuntime]]:
    """The web app and one runtime per store. A single shop: its app as it always was.
    Several stores (or a chain token): each store's app and runtime on its own config
    view, behind `ChainApp`, which picks the store by token (docs/chain.md)."""
    if not config.is_chain():
        key = load_signing_key(config)
        runtime = BridgeRuntime(config, repo, signing_key=key)
        app = create_app(
            config,
            repo,
            signing_key=key,
            commands=runtime.commands,
            members=runtime.members,
            rewards=runtime.rewards,
            activities=runtime.activities,
            mqtt_connected=lambda: runtime.ready,
            ingest_health=runtime.health,
        )
        return app, [runtime]
    tokens = load_store_tokens(config)
    chain_token = load_chain_token(config)
    views = config.stores()
    runtimes: dict[str, BridgeRuntime] = {}
    apps: dict[str, ASGIApp] = {}
    for view in views:
        key = load_signing_key(view)
        runtime = BridgeRuntime(view, repo, signing_key=key)
        full, read = tokens[view.store]
        apps[view.store] = create_app(
            view,
            repo,
            token=full,
            read_token=read,
            chain_token=chain_token,
            chain=lambda: chain_figures(repo, views),
            signing_key=key,
            commands=runtime.commands,
            members=runtime.members,
            rewards=runtime.rewards,
            activities=runtime.activities,
            ingest_health=runtime.health,
        )
        runtimes[view.store] = runtime
    health = {store: rt.health for store, rt in runtimes.items()}
    chain = ChainApp(apps, tokens, chain_token, lambda: service_health(health))
    return chain, list(runtimes.values())
