"""`o2o-bridge simulate` against a real Mosquitto and a running bridge.

What a demo or a trial relies on: the history the bridge stores is exactly what was
sent, through the kiosks' own protocol (every event acked, seq gapless per kiosk), dated
in the shop's time within its opening hours, with a visible weekly rhythm, and the same
for the same seed.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from cloud_bridge.cli import main
from cloud_bridge.config import BridgeConfig, load_config
from cloud_bridge.db import Repository
from cloud_bridge.runtime import BridgeRuntime
from cloud_bridge.simulate import HOURS, plan, simulate
from o2o_protocol.timeutil import parse_rfc3339
from tests.prod_broker import ProdBroker
from tests.support import MosquittoBroker

STORE = "s1"
ZONE = "Asia/Shanghai"
NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


@pytest.fixture
def config_path(tmp_path: Path, mosquitto_broker: MosquittoBroker) -> Path:
    path = tmp_path / "bridge.toml"  # its database: bridge.db beside it, the `repo` fixture's
    path.write_text(
        f'store = "{STORE}"\nkiosks = ["door1", "door2"]\ntimezone = "{ZONE}"\n'
        f'[mqtt]\nurl = "{mosquitto_broker.url}"\nclient_id = "bridge-{uuid.uuid4().hex[:8]}"\n'
    )
    return path


@pytest.fixture
def bridge(config_path: Path, repo: Repository) -> Iterator[BridgeConfig]:
    config = load_config(config_path)
    ingest = BridgeRuntime(config, repo, stats_interval_s=0.2)
    ingest.start()
    assert ingest.wait_ready(10), "bridge did not subscribe"
    yield config
    ingest.stop()


def test_two_weeks_are_stored_exactly_in_shop_time(
    bridge: BridgeConfig,
    config_path: Path,
    repo: Repository,
    capsys: pytest.CaptureFixture[str],
) -> None:
    before = datetime.now(UTC)
    assert main(["simulate", "--config", str(config_path), "--weeks", "2", "--seed", "7"]) == 0
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert summary.startswith("simulated 2 week(s) at door1, door2: ")

    # What it sent is what `plan` gives for the seed (deterministic), up to when it ran.
    sent = plan(
        STORE, ["door1", "door2"], weeks=2, seed=7, zone=ZoneInfo(ZONE), now=datetime.now(UTC)
    )
    stored = repo.events(store=STORE, limit=None, oldest_first=True)
    assert f"{len(stored)} events acked" in summary
    planned = {e.id: e.model_dump() for e in sent}
    assert all(planned[e.id] == e.envelope() for e in stored)
    assert {e.id for e in sent if parse_rfc3339(e.ts) < before} <= {e.id for e in stored}
    for kiosk in ("door1", "door2"):  # gapless, as a kiosk numbers its events
        seqs = sorted(e.seq for e in stored if e.kiosk == kiosk)
        assert seqs == list(range(1, len(seqs) + 1)) and seqs
    assert all(e.data["simulated"] is True for e in stored)

    # In shop time: open days and hours only, and busier at the weekend than midweek.
    zone = ZoneInfo(ZONE)
    checkins = [e.ts.astimezone(zone) for e in stored if e.type == "checkin"]
    for local in checkins:
        assert local.weekday() in HOURS, local
        opens, closes = HOURS[local.weekday()]
        assert opens <= local.hour < closes, local
    by_weekday = Counter(t.weekday() for t in checkins)
    assert by_weekday[0] == 0  # closed on Mondays
    assert by_weekday[5] > 1.5 * by_weekday[1]  # Saturday against Tuesday
    assert by_weekday[4] > by_weekday[2]  # Friday against Wednesday
    # Regulars come back; first-timers join first.
    visits = Counter(e.data["member_id"] for e in stored if e.type == "checkin")
    assert max(visits.values()) >= 4
    joined = {e.data["member_id"] for e in stored if e.type == "member.joined"}
    assert joined and joined <= set(visits)


def test_same_seed_same_traffic_and_a_second_run_continues_the_seq(
    bridge: BridgeConfig, config_path: Path, repo: Repository
) -> None:
    zone = ZoneInfo(ZONE)
    a = plan(STORE, ["door1"], weeks=1, seed=3, zone=zone, now=NOW)
    assert a == plan(STORE, ["door1"], weeks=1, seed=3, zone=zone, now=NOW)
    assert a != plan(STORE, ["door1"], weeks=1, seed=4, zone=zone, now=NOW)
    assert all(parse_rfc3339(e.ts) < NOW for e in a)
    assert [e.id for e in a] == sorted(e.id for e in a)  # ids sort in time order (UUIDv7)

    argv = ["simulate", "--config", str(config_path), "--weeks", "1", "--kiosks", "door1"]
    assert main([*argv, "--seed", "1"]) == 0
    first = repo.count_events()
    assert main([*argv, "--seed", "2"]) == 0
    seqs = sorted(e.seq for e in repo.events(store=STORE, kiosk="door1", limit=None))
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) > first


def test_each_door_logs_in_with_its_own_kiosk_file_on_the_production_broker(
    tmp_path: Path, prod: ProdBroker, repo: Repository, capsys: pytest.CaptureFixture[str]
) -> None:
    """With the production ACL a kiosk may write only its own `events`: the simulated
    doors get through because each uses its kiosk file's login, as the real kiosk does."""
    url = f"mqtt://127.0.0.1:{prod.port}"
    config_path = tmp_path / "bridge.toml"
    config_path.write_text(
        f'store = "{STORE}"\nkiosks = ["k1", "k2"]\ntimezone = "{ZONE}"\n[mqtt]\nurl = "{url}"\n'
        f'username = "bridge"\npassword = "{prod.passwords["bridge"]}"\n'
        f'client_id = "bridge-{uuid.uuid4().hex[:8]}"\n'
    )
    for kiosk in ("k1", "k2"):
        (tmp_path / f"kiosk-{kiosk}.toml").write_text(
            f'store = "{STORE}"\nkiosk = "{kiosk}"\n[mqtt]\nurl = "{url}"\n'
            f'username = "{STORE}/{kiosk}"\npassword = "{prod.passwords[f"{STORE}/{kiosk}"]}"\n'
        )
    ingest = BridgeRuntime(load_config(config_path), repo, stats_interval_s=0.2)
    ingest.start()
    try:
        assert ingest.wait_ready(10), "bridge did not subscribe"
        assert main(["simulate", "--config", str(config_path), "--weeks", "1"]) == 0
    finally:
        ingest.stop()
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    stored = repo.events(store=STORE, limit=None)
    assert f"{len(stored)} events acked" in summary
    assert {e.kiosk for e in stored} == {"k1", "k2"}


def test_without_a_bridge_it_says_so_instead_of_waiting(config_path: Path) -> None:
    with pytest.raises(TimeoutError, match="is `o2o-bridge run` up"):
        simulate(load_config(config_path), config_path, weeks=1, first_ack_s=1.0)


# -- live: load through the real protocol ----------------------------------------------


@pytest.fixture
def chain_path(tmp_path: Path, mosquitto_broker: MosquittoBroker) -> Path:
    """A service of two stores, three kiosks each, on SQLite (bridge.db: the `repo`)."""
    path = tmp_path / "bridge.toml"
    path.write_text(
        f'store = "s1"\nkiosks = ["a1", "a2", "a3"]\ntimezone = "{ZONE}"\n'
        f'[mqtt]\nurl = "{mosquitto_broker.url}"\nclient_id = "bridge-{uuid.uuid4().hex[:8]}"\n'
        f'[stores.s2]\nkiosks = ["b1", "b2", "b3"]\ntimezone = "Europe/Paris"\n'
    )
    return path


def test_live_two_stores_every_event_acked_and_stored_once(
    chain_path: Path, repo: Repository, capsys: pytest.CaptureFixture[str]
) -> None:
    config = load_config(chain_path)
    runtimes = [BridgeRuntime(view, repo, stats_interval_s=60) for view in config.stores()]
    for rt in runtimes:
        rt.start()
    try:
        assert all(rt.wait_ready(10) for rt in runtimes), "bridge did not subscribe"
        before = datetime.now(UTC)
        argv = ["simulate", "--config", str(chain_path), "--live", "--rate", "300"]
        assert main([*argv, "--seconds", "3", "--seed", "5", "--json"]) == 0
        after = datetime.now(UTC)
    finally:
        for rt in runtimes:
            rt.stop()
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    # Every event sent was acked, and the database holds each exactly once, per store.
    assert report["stores"] == ["s1", "s2"] and report["kiosks"] == 6
    assert report["sent"] == report["acked"] == report["stored"] >= 800
    assert report["stored_twice"] == 0
    kiosks = {"s1": {"a1", "a2", "a3"}, "s2": {"b1", "b2", "b3"}}
    kinds: Counter[str] = Counter()
    for store in ("s1", "s2"):
        stored = repo.events(store=store, limit=None)
        assert report["acked_by_store"][store] == report["stored_by_store"][store] == len(stored)
        assert len({e.id for e in stored}) == len(stored)
        assert {e.kiosk for e in stored} == kiosks[store]
        for kiosk in kiosks[store]:  # gapless, as a kiosk numbers its events
            seqs = sorted(e.seq for e in stored if e.kiosk == kiosk)
            assert seqs == list(range(1, len(seqs) + 1))
        # Dated now (not history), within the run.
        assert all(before - timedelta(seconds=1) <= e.ts <= after for e in stored)
        kinds.update(e.type for e in stored)
    assert dict(kinds) == report["counts"]
    # A shop's mix: mostly check-ins, some joins, redemptions and ratings.
    assert kinds["checkin"] > 0.5 * sum(kinds.values())
    assert kinds["member.joined"] and kinds["coupon.redeemed"] and kinds["review.submitted"]
    # At the rate asked, and every event's ack timed.
    assert report["sent_per_s"] >= 0.8 * 300
    lat = report["latency_ms"]
    assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] < 10_000


def test_live_refuses_a_store_the_service_does_not_have(
    chain_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["simulate", "--config", str(chain_path), "--live", "--rate", "10"]
    assert main([*argv, "--stores", "s1", "s9"]) == 2
    assert "s9 not a store of this service" in capsys.readouterr().err
