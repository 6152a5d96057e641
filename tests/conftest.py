"""Fixtures for real components: Mosquitto, PostgreSQL and an X server (Xvfb).

Each starts its own instance on a free port or display, so tests never touch a
broker, database or screen the machine already runs for something else. A missing
component skips the test locally and fails it under CI=true (tests.support).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud_bridge.db import Repository
from tests.prod_broker import certs, prod, prod_tls  # noqa: F401  (fixtures for all tests)
from tests.support import (
    MosquittoBroker,
    find_program,
    free_port,
    missing_component,
    port_open,
    tail,
    wait_for_port,
)

# --- Mosquitto -----------------------------------------------------------------


def _start_broker(directory: Path) -> MosquittoBroker:
    try:
        broker = MosquittoBroker.from_config(directory)
    except FileNotFoundError:
        missing_component("mosquitto", "apt-get install mosquitto, or run scripts/setup.sh")
        raise  # unreachable: missing_component fails or skips
    broker.start()
    return broker


@pytest.fixture
def mosquitto_broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A fresh development broker (broker_config/mosquitto-dev.conf) for one test.

    Has ``.host``, ``.port``, ``.url``, ``.log_path``, ``.stop()``, ``.kill()`` and
    ``.start()`` (same port again).
    """
    broker = _start_broker(tmp_path / "mosquitto")
    yield broker
    broker.stop()


@pytest.fixture(scope="module")
def mosquitto_broker_module(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[MosquittoBroker]:
    """Like ``mosquitto_broker``, shared by the tests of one module."""
    broker = _start_broker(tmp_path_factory.mktemp("mosquitto"))
    yield broker
    broker.stop()


# --- PostgreSQL ----------------------------------------------------------------


def _pg_server_url() -> str | None:
    """The PostgreSQL server the machine runs on 127.0.0.1:5432 (trust auth), if any."""
    if os.environ.get("O2O_TEST_PG_FORCE_THROWAWAY") == "1":
        return None
    if not port_open("127.0.0.1", 5432):
        return None
    url = "postgresql://postgres@127.0.0.1:5432/postgres"
    try:
        import psycopg

        with psycopg.connect(url, connect_timeout=3):
            return url
    except Exception:
        return None


def _pg_bin_dir() -> Path | None:
    """The newest /usr/lib/postgresql/N/bin with initdb and pg_ctl (Debian layout)."""
    dirs = sorted(
        (Path(d) for d in glob.glob("/usr/lib/postgresql/*/bin")),
        key=lambda d: int(d.parent.name) if d.parent.name.isdigit() else 0,
        reverse=True,
    )
    for d in dirs:
        if (d / "initdb").exists() and (d / "pg_ctl").exists():
            return d
    initdb = find_program("initdb")
    return Path(initdb).parent if initdb and (Path(initdb).parent / "pg_ctl").exists() else None


class _ThrowawayCluster:
    """initdb + pg_ctl in a temp dir, trust auth, TCP on a free loopback port.

    PostgreSQL refuses to run as root, so as root the cluster belongs to the
    ``postgres`` user and every command runs through ``runuser``.
    """

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.port = free_port()
        # Directly under /tmp, not pytest's tmp dir: that is mode 700 for root, and
        # the postgres user must reach it. The socket path must stay short too.
        self.dir = Path(tempfile.mkdtemp(prefix="o2o-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "postgres.log"
        self.prefix: list[str] = []
        if os.geteuid() == 0:
            runuser = find_program("runuser")
            if runuser is None:
                raise RuntimeError("running as root and runuser is missing")
            shutil.chown(self.dir, user="postgres", group="postgres")
            self.prefix = [runuser, "-u", "postgres", "--"]

    def _run(self, *args: str) -> None:
        result = subprocess.run(
            [*self.prefix, *args],
            cwd=self.dir,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(args[:2])} failed: {result.stdout}{result.stderr}\n{tail(self.log)}"
            )

    def start(self) -> str:
        self._run(
            str(self.bin_dir / "initdb"),
            "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
            "--no-locale", "--no-sync",
        )  # fmt: skip
        options = (
            f"-p {self.port} -h 127.0.0.1 -k {self.dir}"
            " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self._run(
            str(self.bin_dir / "pg_ctl"),
            "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start",
        )  # fmt: skip
        wait_for_port("127.0.0.1", self.port, timeout=10)
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            pg_ctl = str(self.bin_dir / "pg_ctl")
            self._run(pg_ctl, "-D", str(self.data), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """SQLAlchemy URL (``postgresql+psycopg://…``) of a fresh database, dropped at the end.

    Server, in order: ``O2O_TEST_PG_URL`` (any database URL on a server where that
    user may CREATE DATABASE); the machine's server on 127.0.0.1:5432; a throwaway
    cluster from /usr/lib/postgresql/*/bin (``O2O_TEST_PG_FORCE_THROWAWAY=1`` forces it).
    """
    import psycopg
    from sqlalchemy.engine import make_url

    cluster: _ThrowawayCluster | None = None
    server = os.environ.get("O2O_TEST_PG_URL") or _pg_server_url()
    if server is None:
        bin_dir = _pg_bin_dir()
        if bin_dir is None:
            missing_component("PostgreSQL", "apt-get install postgresql, or set O2O_TEST_PG_URL")
            raise AssertionError("unreachable")
        cluster = _ThrowawayCluster(bin_dir)
        try:
            server = cluster.start()
        except Exception:
            cluster.stop()
            raise

    # psycopg wants a plain libpq URL; SQLAlchemy the same with its driver name.
    admin = make_url(server).set(drivername="postgresql")
    admin_dsn = admin.render_as_string(hide_password=False)
    name = f"o2o_test_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(admin_dsn, autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        yield admin.set(drivername="postgresql+psycopg", database=name).render_as_string(
            hide_password=False
        )
    finally:
        if cluster is not None:
            cluster.stop()  # the whole cluster goes, database and all
        else:
            with (
                contextlib.suppress(Exception),
                psycopg.connect(admin_dsn, autocommit=True, connect_timeout=10) as conn,
            ):
                # FORCE: a test that leaked a connection must not leak the database.
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- X server ------------------------------------------------------------------


@pytest.fixture(scope="session")
def xvfb_display() -> Iterator[str]:
    """Start Xvfb on a free display, set DISPLAY for this process, yield ``":N"``.

    Xvfb picks the display itself (``-displayfd``), so parallel runs never collide.
    """
    xvfb = find_program("Xvfb")
    if xvfb is None:
        missing_component("Xvfb", "apt-get install xvfb xauth, or run scripts/setup.sh")
        raise AssertionError("unreachable")
    read_fd, write_fd = os.pipe()
    # A file, not a pipe, for its stderr: nobody reads it during the session.
    err_log = tempfile.TemporaryFile()  # noqa: SIM115 (lives as long as Xvfb)
    proc = subprocess.Popen(
        [xvfb, "-displayfd", str(write_fd), "-screen", "0", "1024x600x24", "-nolisten", "tcp"],
        pass_fds=(write_fd,),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=err_log,
        start_new_session=True,
    )
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        number = pipe.readline().strip()  # written once the server is ready
    if not number.isdigit():
        proc.kill()
        proc.wait(5)
        err_log.seek(0)
        err = err_log.read().decode(errors="replace")[-2000:]
        err_log.close()
        raise RuntimeError(f"Xvfb did not start: {err}")
    display = f":{number}"
    previous = os.environ.get("DISPLAY")
    os.environ["DISPLAY"] = display
    try:
        yield display
    finally:
        if previous is None:
            os.environ.pop("DISPLAY", None)
        else:
            os.environ["DISPLAY"] = previous
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        err_log.close()


# --- the bridge's database ----------------------------------------------------------


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[Repository]:
    """The bridge's repository on a fresh SQLite file (test_bridge_db also runs PostgreSQL)."""
    r = Repository.from_url(f"sqlite:///{tmp_path / 'bridge.db'}")
    r.migrate()
    yield r
    r.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def any_repo(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Repository]:
    """The bridge's repository on SQLite and on PostgreSQL (a database the session shares,
    emptied first)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'any.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    r = Repository.from_url(url)
    r.migrate()
    empty_tables(r)
    yield r
    r.close()


def empty_tables(repo: Repository) -> None:
    """Every row of every table gone (the PostgreSQL database is shared by the session)."""
    from cloud_bridge.db.tables import Base

    with repo.engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(table.delete())
