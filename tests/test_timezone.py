"""The shop's time zone: `o2o-bridge init --timezone` writes it for the bridge and every
kiosk, a name no zone database knows is one line and exit 2, and today's figures are the
shop's day (midnight to midnight in Shanghai), not the server's or UTC's."""

from __future__ import annotations

import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient

from cloud_bridge.api import create_app
from cloud_bridge.cli import main
from cloud_bridge.config import BridgeConfig, load_config
from cloud_bridge.db import Repository
from o2o_protocol.config_file import validate_config
from o2o_protocol.messages import Event, new_event_id
from o2o_protocol.timeutil import rfc3339

SHANGHAI = ZoneInfo("Asia/Shanghai")
TOKEN = "t0ken-for-tests-0123456789"


def test_init_writes_the_time_zone_for_bridge_and_kiosks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shop = tmp_path / "shop"
    argv = ["init", "--dir", str(shop), "--kiosk", "k1", "--kiosk", "k2"]
    assert main([*argv, "--timezone", "Asia/Shanghai"]) == 0
    capsys.readouterr()
    config = load_config(shop / "bridge.toml")
    assert config.timezone == "Asia/Shanghai" and config.zone() == SHANGHAI
    for k in ("k1", "k2"):
        kiosk = tomllib.loads((shop / f"kiosk-{k}.toml").read_text())
        assert kiosk["timezone"] == "Asia/Shanghai"
    # Without it: the machine's zone, and the bridge file says how to set one.
    plain = tmp_path / "plain"
    assert main(["init", "--dir", str(plain)]) == 0
    assert load_config(plain / "bridge.toml").timezone is None
    assert '# timezone = "Asia/Shanghai"' in (plain / "bridge.toml").read_text()
    assert "timezone" not in tomllib.loads((plain / "kiosk-door1.toml").read_text())


def test_an_unknown_time_zone_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shop = tmp_path / "shop"
    assert main(["init", "--dir", str(shop), "--timezone", "Asia/Shangai"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "--timezone" in err and "unknown time zone 'Asia/Shangai'" in err
    assert not shop.exists()  # nothing written
    # A bridge.toml edited by hand: the usual one-line config error, naming the key.
    assert main(["init", "--dir", str(shop)]) == 0
    path = shop / "bridge.toml"
    path.write_text('timezone = "Mars/Olympus"\n' + path.read_text())
    capsys.readouterr()
    assert main(["issue", "member", "--config", str(path), "--name", "Ada"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "timezone" in err and "Mars/Olympus" in err


def _checkin(at: datetime) -> Event:
    ts = rfc3339(at.timestamp())
    data = {"member_id": "m-1"}
    return Event(id=new_event_id(), seq=1, type="checkin", ts=ts, store="s1", kiosk="k1", data=data)


def test_todays_figures_are_the_shops_day(any_repo: Repository) -> None:
    late = datetime(2026, 3, 10, 23, 30, tzinfo=SHANGHAI)  # 15:30 UTC
    any_repo.add_events([_checkin(late)], now=late)
    # Later that evening in Shanghai: the check-in is today's.
    evening = datetime(2026, 3, 10, 23, 50, tzinfo=SHANGHAI)
    stats = any_repo.today_stats("s1", now=evening, zone=SHANGHAI)
    assert (stats["day"], stats["checkins"]) == ("2026-03-10", 1)
    # Past midnight in Shanghai (still the 10th in UTC): a new day with nothing in it yet,
    # where UTC's day would still count the check-in.
    after_midnight = datetime(2026, 3, 11, 0, 10, tzinfo=SHANGHAI)
    stats = any_repo.today_stats("s1", now=after_midnight, zone=SHANGHAI)
    assert (stats["day"], stats["checkins"], stats["events"]) == ("2026-03-11", 0, 0)
    assert any_repo.today_stats("s1", now=after_midnight, zone=UTC)["checkins"] == 1


def test_the_stats_route_counts_the_shops_day(tmp_path: Path, repo: Repository) -> None:
    raw = {"store": "s1", "timezone": "Asia/Shanghai"}
    config = validate_config(tmp_path / "bridge.toml", raw, BridgeConfig)
    now = datetime.now(SHANGHAI)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    before, after = midnight - timedelta(minutes=5), midnight + timedelta(seconds=1)
    repo.add_events([_checkin(before), _checkin(after)], now=now)
    app = create_app(config, repo, token=TOKEN, signing_key=Ed25519PrivateKey.generate())
    stats = TestClient(app).get("/api/v1/stats", headers={"Authorization": f"Bearer {TOKEN}"})
    # 23:55 yesterday in Shanghai is not today's, 00:00:01 is: whatever the server's zone.
    assert stats.json()["day"] == now.strftime("%Y-%m-%d")
    assert stats.json()["checkins"] == 1
