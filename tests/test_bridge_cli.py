"""`o2o-bridge` as a shop owner uses it: init, issue, export, and its error messages."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from cloud_bridge.cli import main
from cloud_bridge.config import load_config
from cloud_bridge.db import Repository
from kiosk.config import load_config as load_kiosk_config
from o2o_protocol.codes import Code, CodeType, Rejected, verify_code
from o2o_protocol.messages import Event, Reason, new_event_id
from o2o_protocol.timeutil import rfc3339
from tests.support import MosquittoBroker, free_port, wait_for_port

BIN = Path(sys.executable).parent


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(BIN / "o2o-bridge"), *args], cwd=cwd, capture_output=True, text=True, timeout=60
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


@pytest.fixture
def shop(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    argv = ["init", "--dir", str(tmp_path / "shop"), "--store", "s1"]
    assert main([*argv, "--kiosk", "k1", "--kiosk", "k2", "--mqtt", "mqtt://10.0.0.2:1884"]) == 0
    capsys.readouterr()
    return tmp_path / "shop"


def issue(shop: Path, capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, object]:
    assert main(["issue", *args, "--config", str(shop / "bridge.toml"), "--json"]) == 0
    out: dict[str, object] = json.loads(capsys.readouterr().out)
    return out


def test_init_writes_files_that_load(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "new"
    assert main(["init", "--dir", str(target)]) == 0
    out = capsys.readouterr().out
    assert "bridge.toml" in out and "o2o-bridge run" in out and "o2o-kiosk run" in out
    config = load_config(target / "bridge.toml")
    assert (config.store, config.kiosks, config.mqtt.url) == (
        "demo",
        ["door1"],
        "mqtt://127.0.0.1:1883",
    )
    assert config.db.url == f"sqlite:///{(target / 'bridge.db').resolve()}"
    for secret in ("signing.key", "api.token"):
        assert stat.S_IMODE(os.stat(target / secret).st_mode) == 0o600
    kiosk = load_kiosk_config(target / "kiosk-door1.toml")
    assert (kiosk.store, kiosk.kiosk, kiosk.mqtt.url) == ("demo", "door1", "mqtt://127.0.0.1:1883")
    assert kiosk.data_dir == target / "kiosk-door1-data"
    assert (kiosk.lockers.type, kiosk.printer.type) == ("simulated", "simulated")
    assert (kiosk.camera.type, kiosk.camera.source) == ("v4l2", "0")
    assert "PRIVATE" not in (target / "kiosk-door1.toml").read_text()
    # [members] page_url, commented out: member page links need the address phones use.
    text = (target / "bridge.toml").read_text()
    assert '\n# page_url = "https://shop.example"\n' in text
    (target / "bridge.toml").write_text(text.replace("# page_url", "page_url"))
    assert load_config(target / "bridge.toml").members.page_url == "https://shop.example"


def test_init_options_and_refusal_to_overwrite(
    shop: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for k in ("k1", "k2"):
        kiosk = load_kiosk_config(shop / f"kiosk-{k}.toml")
        assert (kiosk.store, kiosk.kiosk, kiosk.mqtt.url) == ("s1", k, "mqtt://10.0.0.2:1884")
    before = (shop / "signing.key").read_bytes()
    assert main(["init", "--dir", str(shop), "--store", "s1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already exists" in err and "--force" in err
    assert (shop / "signing.key").read_bytes() == before
    assert main(["init", "--dir", str(shop), "--store", "s1", "--force"]) == 0
    assert (shop / "signing.key").read_bytes() != before


def test_init_with_postgres_url(tmp_path: Path) -> None:
    url = "postgresql+psycopg://shop:pw@db.example/o2o"
    assert main(["init", "--dir", str(tmp_path), "--db", url]) == 0
    assert load_config(tmp_path / "bridge.toml").db.url == url


def test_every_code_type_verifies_with_the_kiosks_keys(
    shop: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = load_kiosk_config(shop / "kiosk-k1.toml").public_keys()
    now = time.time()
    cases = {
        "member": (["--name", "小明", "--id", "u1"], CodeType.MEMBER),
        "coupon": (["--campaign", "spring", "--value", "¥10 off"], CodeType.COUPON),
        "pickup": (["--order", "A12"], CodeType.PICKUP),
        "staff": (["--id", "alice"], CodeType.STAFF),
        "reservation": (["--at", "+2h", "--service", "cut"], CodeType.RESERVATION),
    }
    codes: dict[str, Code] = {}
    for name, (args, type_) in cases.items():
        out = issue(shop, capsys, name, *args)
        code = verify_code(str(out["code"]), keys, store="s1", now=now)
        assert isinstance(code, Code), (name, code)
        assert code.type is type_ and code.id == out["id"]
        if type_ in (CodeType.COUPON, CodeType.PICKUP, CodeType.RESERVATION):
            assert code.payload.exp is not None and code.payload.exp > now + 86400
        codes[name] = code
    assert codes["member"].payload.n == "小明"
    assert (codes["coupon"].payload.cp, codes["coupon"].payload.v) == ("spring", "¥10 off")
    assert codes["pickup"].payload.o == "A12"
    assert codes["reservation"].payload.sv == "cut"


def test_expired_and_not_yet_valid(shop: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keys = load_kiosk_config(shop / "kiosk-k1.toml").public_keys()
    # An expiry in the past is refused when issuing (below); a code's expiry passes later.
    expiring = issue(shop, capsys, "coupon", "--expires=+1h")
    result = verify_code(str(expiring["code"]), keys, store="s1", now=time.time() + 7200)
    assert isinstance(result, Rejected) and result.reason is Reason.EXPIRED
    later = issue(shop, capsys, "coupon", "--not-before=+2d", "--expires", "2099-01-01")
    result = verify_code(str(later["code"]), keys, store="s1", now=time.time())
    assert isinstance(result, Rejected) and result.reason is Reason.NOT_YET_VALID


def test_png_and_svg_decode_back_to_the_token(
    shop: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from PIL import Image
    from pyzbar.pyzbar import decode

    png, svg = shop / "code.png", shop / "code.svg"
    assert main(["issue", "pickup", "--order", "A12", "--config", str(shop / "bridge.toml"),
                 "--png", str(png), "--svg", str(svg)]) == 0  # fmt: skip
    token = capsys.readouterr().out.strip()
    with Image.open(png) as image:
        assert image.width >= 400
        assert [d.data.decode() for d in decode(image)] == [token]
    assert svg.read_text().lstrip().startswith("<?xml")


def test_issue_from_the_shop_directory_by_default(shop: Path) -> None:
    proc = run("issue", "member", "--id", "u9", "--json", cwd=shop)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["id"] == "u9"


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["issue", "gold"], "invalid choice"),
        (["issue", "pickup"], "--order"),
        (["issue", "coupon", "--expires", "-1d"], "--expires=-1d"),
        (["issue", "coupon", "--expires=soon"], "not a time"),
        (["issue", "coupon", "--expires=-1d"], "not in the future"),
        (["issue", "coupon", "--expires=9999-12-31"], "200 years"),
        (["issue", "reservation", "--at=-3d"], "not in the future"),
        (["issue", "coupon", "--not-before=+2d", "--expires=+1d"], "never be valid"),
        (["issue", "member", "--config", "missing.toml"], "missing.toml"),
        (["export", "events", "--format", "xml"], "invalid choice"),
        (["run", "--http", "nonsense"], "--http"),
        (["init", "--dir", "x", "--store", "a/b"], "--store"),
        (["init", "--dir", "x", "--mqtt", "http://x"], "--mqtt"),
        (["init", "--dir", "x", "--db", "mysql://x/y"], "--db"),
        (["issue", "member", "--name", "字" * 700], "at most 2048"),
        (["export", "events", "--since=+99999999999999999999d"], "--since"),
        (["export", "events", "--since=9999-12-31T23:00:00-05:00"], "--since"),
        ([], "required"),
    ],
)
def test_bad_command_lines_exit_2_with_one_line(
    shop: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    expect: str,
) -> None:
    monkeypatch.chdir(shop)
    try:
        status = main(args)
    except SystemExit as exc:
        status = int(exc.code or 0)
    err = capsys.readouterr().err
    assert status == 2
    assert err.count("\n") == 1 and expect in err and err.startswith("o2o-bridge"), err


@pytest.mark.parametrize(
    ("edit", "expect"),
    [
        (lambda t: t.replace("[http]", "[http]\nprot = 1"), "bridge.toml: http.prot: unknown key"),
        (lambda t: t.replace("port = 8080", "port = 99999"), "bridge.toml: http.port"),
        (lambda t: t.replace('store = "s1"', 'store = "a b"'), "bridge.toml: store"),
        (lambda t: t + "\n[[[", "not valid TOML"),
        (lambda t: t.replace("[db]", '[db]\nurl = "oracle://x"'), "bridge.toml: db.url"),
    ],
)
def test_a_broken_bridge_toml_is_one_clear_line(shop: Path, edit: object, expect: str) -> None:
    path = shop / "bridge.toml"
    path.write_text(edit(path.read_text()))  # type: ignore[operator]
    proc = run("issue", "member", cwd=shop)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and expect in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    ("edit", "expect"),
    [
        (
            lambda t: t.replace("[db]", '[db]\nurl = "postgres://shop:S3cretPw@db.example/o2o"'),
            "db.url",
        ),
        (lambda t: t.replace("[db]", '[db]\nurl = "postgres://shop:S3c/retPw@db/o2o"'), "db.url"),
        (lambda t: t.replace("[db]", '[db]\nurl = "oracle://shop:S3c@retPw@db/o2o"'), "db.url"),
        (
            lambda t: t.replace("[db]", '[db]\nurl = "postgresql+asyncpg://u:S3cretPw@db/o"'),
            "db.url",
        ),
        (lambda t: t.replace("mqtt://10.0.0.2:1884", "mqtt://u:S3c/retPw@h:1883"), "mqtt.url"),
        (lambda t: t.replace("mqtt://10.0.0.2:1884", "mqtt://u:S3cretPw@h:1883"), "mqtt.url"),
        (lambda t: t.replace("# password = ", "password = 12 #"), "mqtt.password"),
        (lambda t: t.replace("# password = ", 'password = ["S3cretPw"] #'), "mqtt.password"),
    ],
)
def test_a_config_error_never_shows_a_password(shop: Path, edit: object, expect: str) -> None:
    path = shop / "bridge.toml"
    path.write_text(edit(path.read_text()))  # type: ignore[operator]
    for args in (["issue", "member"], ["export", "events"], ["run"]):
        proc = run(*args, cwd=shop)
        assert proc.returncode == 2
        assert proc.stderr.count("\n") == 1 and expect in proc.stderr, proc.stderr
        assert "S3c" not in proc.stderr and "retPw" not in proc.stderr, proc.stderr


def test_a_missing_signing_key_is_one_clear_line(shop: Path) -> None:
    (shop / "signing.key").unlink()
    proc = run("issue", "member", cwd=shop)
    assert proc.returncode == 2 and "signing.key" in proc.stderr
    assert proc.stderr.count("\n") == 1


def test_export_events_jsonl_and_csv(shop: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = Repository.from_url(load_config(shop / "bridge.toml").db.url)
    repo.migrate()
    now = time.time()
    events = [
        Event(id=new_event_id(), seq=1, type="checkin", ts=rfc3339(now - 3 * 86400),
              store="s1", kiosk="k1", data={"member_id": "u1", "name": "小明"}),
        Event(id=new_event_id(), seq=2, type="scan.rejected", ts=rfc3339(now),
              store="s1", kiosk="k1", data={"reason": "expired"}),
    ]  # fmt: skip
    repo.add_events(events)
    repo.close()
    config = str(shop / "bridge.toml")

    assert main(["export", "events", "--config", config]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines == [e.model_dump() for e in events]  # the contract's envelopes, oldest first

    assert main(["export", "events", "--config", config, "--since=-1d"]) == 0
    assert [json.loads(x)["id"] for x in capsys.readouterr().out.splitlines()] == [events[1].id]

    assert main(["export", "events", "--config", config, "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert list(rows[0]) == ["id", "seq", "type", "ts", "store", "kiosk", "data"]
    assert [r["id"] for r in rows] == [e.id for e in events]
    assert json.loads(rows[0]["data"]) == {"member_id": "u1", "name": "小明"}


def test_run_serves_and_stops_cleanly_on_sigterm(
    shop: Path, mosquitto_broker: MosquittoBroker
) -> None:
    path = shop / "bridge.toml"
    path.write_text(path.read_text().replace("mqtt://10.0.0.2:1884", mosquitto_broker.url))
    port = free_port()
    proc = subprocess.Popen(
        [str(BIN / "o2o-bridge"), "run", "--http", f"127.0.0.1:{port}"],
        cwd=shop,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_port("127.0.0.1", port, timeout=20, alive=lambda: proc.poll() is None)
        deadline = time.monotonic() + 10
        while True:
            try:  # 503 (degraded) until the broker session is up
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if json.loads(r.read())["mqtt_connected"]:
                        break
            except urllib.error.HTTPError as exc:
                assert exc.code == 503, exc
            assert time.monotonic() < deadline, "bridge never connected to the broker"
            time.sleep(0.1)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
            assert b"<html" in r.read()
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    assert f"listening on http://127.0.0.1:{port}" in err and mosquitto_broker.url in err
    assert "Traceback" not in err and out == ""
    token = (shop / "api.token").read_text().strip()
    assert token not in err
