"""`o2o-bridge`: init, issue, export, run (DESIGN §5).

A bad command line or config exits with status 2 and one line on stderr naming the
problem; nothing shows a traceback to a shop owner.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import logging
import os
import secrets
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, NoReturn

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
)

from cloud_bridge.config import (
    CONFIG_NAME,
    BridgeConfig,
    load_config,
    load_signing_key,
    normalise_db_url,
)
from cloud_bridge.issuing import TYPE_NAMES, code_fields, issue
from o2o_protocol.codes import b64url_encode, key_id, public_key_bytes
from o2o_protocol.config_file import ConfigError, parse_mqtt_url, validate_config
from o2o_protocol.messages import check_id
from o2o_protocol.timeutil import parse_when

log = logging.getLogger("cloud_bridge")

PROG = "o2o-bridge"
EXIT_USAGE = 2
_WHEN_OPTIONS = ("--expires", "--not-before", "--at", "--since")


class UsageError(Exception):
    """A problem with what the user asked for: one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a mistake is one line (not usage + message) and exit status 2."""

    def error(self, message: str) -> NoReturn:
        if "expected one argument" in message:
            option = next((o for o in _WHEN_OPTIONS if o in message), None)
            if option is not None:
                message += f" (for a past offset write it as {option}=-1d)"
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


# -- templates -------------------------------------------------------------------------


def _toml_str(value: str) -> str:
    """A TOML basic string."""
    out = value.replace("\\", "\\\\").replace('"', '\\"')
    out = "".join(c if c >= " " and c != "\x7f" else f"\\u{ord(c):04x}" for c in out)
    return f'"{out}"'


BRIDGE_TEMPLATE = """\
# o2o-bridge configuration, written by `o2o-bridge init`.
# Relative paths are relative to this file. Run: o2o-bridge run --config {config}

# The store these kiosks belong to (also the MQTT topic level o2o/v1/<store>/...).
store = {store}

# The kiosks this store expects; the dashboard shows one that never came up as offline.
kiosks = [{kiosks}]

[mqtt]
# mqtt://host:port, or mqtts://host:port for TLS
url = {mqtt}
# username = "bridge"
# password = "..."
# ca_file = "ca.crt"          # for mqtts:// with a private CA
# protocol = "auto"           # MQTT v5, or 3.1.1 when the broker says so; "3.1.1" to force
# client_id = "o2o-bridge-{store_raw}"   # stable id: the broker keeps our session across restarts
# shared_group = "bridges"    # several workers split the ingest ($share/bridges/...)

[db]
{db_line}
# PostgreSQL: url = "postgresql+psycopg://user:password@host/dbname"

[http]
host = "127.0.0.1"            # 0.0.0.0 to reach the dashboard from other machines
port = 8080

[api]
token_file = "api.token"      # REST API: Authorization: Bearer <token>; can do everything
read_token_file = "dashboard.token"   # read-only: the dashboard, dashboards, reports
# code_url = "https://shop.example/c/"   # issued codes also come back as a link

[signing]
key_file = "signing.key"      # Ed25519 private key that signs codes; keep it secret (0600)
"""

KIOSK_TEMPLATE = """\
# o2o-kiosk configuration for kiosk {kiosk_raw}, written by `o2o-bridge init`.
# Run: o2o-kiosk run --config {config}
# Copy it to the store's kiosks. [keys] are public keys, safe to share; join_secret
# is not: it keys the hashes of customers' phone numbers (file mode 0600).
# Every key is checked at start-up; a misspelt one stops the kiosk with one clear line.

store = {store}
kiosk = {kiosk}
# Outbox, redeemed coupons, members: keep it on the kiosk (relative to this file).
data_dir = {data_dir}
join_secret = {join_secret}

# Trusted code-signing keys: key id = base64url Ed25519 public key.
[keys]
{keys}

[mqtt]
url = {mqtt}                  # mqtts://host:8883 for TLS
# username = "{store_raw}/{kiosk_raw}"   # per-kiosk login: broker_config/add-kiosk-user.sh
# password = "..."
# ca_file = "ca.crt"          # for mqtts:// with a private CA (broker_config/make-certs.sh)
# protocol = "auto"           # MQTT v5, or 3.1.1 when the broker says so; "3.1.1" to force

[rules]
points_per_visit = 10
once_per_day = false          # true: one counted visit (and its points) per member per day
checkin_cooldown_min = 60     # a member code shown again within this earns nothing new
quiet_window_s = 3.0          # a code held up for seconds is one scan
reservation_early_min = 15    # arriving more than this early (or late) is early (or late)
reservation_late_min = 15
accept = ["m", "c", "p", "s", "r"]   # member, coupon, pickup, staff, reservation
staff_session_s = 120         # staff mode after a staff code
history_days = 90             # event history kept on the kiosk (un-synced events always)

[ui]
language = "zh_CN"            # zh_CN | en
result_s = 6.0                # seconds before a result screen returns to the start screen
join_url = ""                 # the shop's online sign-up page (shown as a QR, printed)

[camera]
type = "v4l2"                 # v4l2 | picamera2 | file | images
source = "0"                  # device index or path, a video file, or an image directory

[lockers]
type = "simulated"            # gpio, with relay_pin and door_pin per [[lockers.bank]]
# sensor_fault_policy = "trust_relay"   # or "refuse": see kiosk/devices/lockers.py
# [[lockers.bank]]
# size = "M"                  # S | M | L
# relay_pin = 17              # BCM numbering
# door_pin = 27

[printer]
type = "simulated"            # serial, with port = "/dev/serial0" (Pi UART) or a USB port
# codepage = "gb18030"
# next_visit_url = ""         # printed as a QR on check-in receipts
"""


# -- init ------------------------------------------------------------------------------


def _write_private(path: Path, data: bytes) -> None:
    """Write a secret so it is never readable by others, not even for a moment."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)


def cmd_init(args: argparse.Namespace) -> int:
    from kiosk.config import KioskConfig

    directory: Path = args.dir
    store = _checked(check_id, args.store, "--store")
    kiosks = args.kiosk or ["door1"]
    for k in kiosks:
        _checked(check_id, k, "--kiosk")
    if len(set(kiosks)) != len(kiosks):
        raise UsageError("--kiosk: the same kiosk id is given twice")
    _checked(parse_mqtt_url, args.mqtt, "--mqtt")
    if args.db:
        _checked(lambda v: normalise_db_url(v, None), args.db, "--db")

    config_path = directory / CONFIG_NAME
    key_path = directory / "signing.key"
    token_path = directory / "api.token"
    read_token_path = directory / "dashboard.token"
    kiosk_paths = {k: directory / f"kiosk-{k}.toml" for k in kiosks}
    targets = [config_path, key_path, token_path, read_token_path, *kiosk_paths.values()]
    if not args.force:
        for p in targets:
            if p.exists():
                raise UsageError(f"{p} already exists (use --force to overwrite)")
    if directory.exists() and not directory.is_dir():
        raise UsageError(f"--dir: {directory} is not a directory")

    key = Ed25519PrivateKey.generate()
    public = key.public_key()
    kid = key_id(public)
    pub_text = b64url_encode(public_key_bytes(public))

    bridge_text = BRIDGE_TEMPLATE.format(
        config=config_path,
        store=_toml_str(store),
        store_raw=store,
        kiosks=", ".join(_toml_str(k) for k in kiosks),
        mqtt=_toml_str(args.mqtt),
        db_line=(
            f"url = {_toml_str(args.db)}"
            if args.db
            else '# url = "sqlite:///bridge.db"      # the default: SQLite beside this file'
        ),
    )
    join_secret = secrets.token_urlsafe(24)  # one per store: the same phone, the same hash
    kiosk_texts = {
        k: KIOSK_TEMPLATE.format(
            config=kiosk_paths[k],
            store=_toml_str(store),
            kiosk=_toml_str(k),
            kiosk_raw=k,
            store_raw=store,
            data_dir=_toml_str(f"kiosk-{k}-data"),
            keys=f"{_toml_str(kid)} = {_toml_str(pub_text)}",
            mqtt=_toml_str(args.mqtt),
            join_secret=_toml_str(join_secret),
        )
        for k in kiosks
    }
    # Validate everything before writing anything: init never leaves half a set-up.
    import tomllib

    validate_config(config_path, tomllib.loads(bridge_text), BridgeConfig)
    for k, text in kiosk_texts.items():
        validate_config(kiosk_paths[k], tomllib.loads(text), KioskConfig)

    try:
        directory.mkdir(parents=True, exist_ok=True)
        _write_private(
            key_path, key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        )
        _write_private(token_path, (secrets.token_urlsafe(32) + "\n").encode())
        _write_private(read_token_path, (secrets.token_urlsafe(32) + "\n").encode())
        # bridge.toml may later hold broker and database passwords.
        _write_private(config_path, bridge_text.encode())
        for k, text in kiosk_texts.items():
            _write_private(kiosk_paths[k], text.encode())
    except OSError as exc:
        raise UsageError(f"--dir: cannot write in {directory}: {exc.strerror}") from None
    load_config(config_path)  # the files as written must load

    print(f"wrote {config_path}")
    print(f"wrote {key_path}  (private signing key, key id {kid}; keep it secret)")
    print(f"wrote {token_path}  (REST API token: issues codes, commands kiosks)")
    print(f"wrote {read_token_path}  (read-only token for the dashboard)")
    for p in kiosk_paths.values():
        print(f"wrote {p}")
    print("next:")
    print(f"  o2o-bridge run --config {config_path}")
    for p in kiosk_paths.values():
        print(f"  o2o-kiosk run --config {p}")
    print(f"  o2o-bridge issue member --config {config_path} --name Ada --png member.png")
    return 0


def _checked(validate: Any, value: str, option: str) -> str:
    """Run a validator; its ValueError becomes a usage error naming the option."""
    try:
        validate(value)
    except ValueError as exc:
        raise UsageError(f"{option}: {exc}") from None
    return value


# -- issue -----------------------------------------------------------------------------


def cmd_issue(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    key = load_signing_key(config)
    try:
        issued = issue(
            key,
            args.type,
            store=args.store or config.store,
            **code_fields(args),
        )
    except ValueError as exc:
        raise UsageError(str(exc).splitlines()[0]) from None
    for path, kind in ((args.png, "png"), (args.svg, "svg")):
        if path is not None:
            _write_qr(issued.token, path, kind)
    if args.json:
        print(json.dumps(issued.as_dict(config.api.code_url), ensure_ascii=False))
    else:
        print(issued.token)
    return 0


def _write_qr(token: str, path: Path, kind: str) -> None:
    import segno

    qr = segno.make(token, error="m", micro=False)
    try:
        # 8 px per module: a printed or on-screen code still has several camera pixels
        # per module in a 640x480 frame.
        qr.save(str(path), kind=kind, scale=8, border=4)
    except OSError as exc:
        raise UsageError(f"--{kind}: cannot write {path}: {exc.strerror}") from None


# -- export ----------------------------------------------------------------------------

CSV_FIELDS = ["id", "seq", "type", "ts", "store", "kiosk", "data"]


def cmd_export(args: argparse.Namespace) -> int:
    from cloud_bridge.db import Repository

    config = load_config(args.config)
    since = None
    if args.since:
        try:
            since = datetime.fromtimestamp(parse_when(args.since, time.time()), UTC)
        except (ValueError, OverflowError, OSError) as exc:
            raise UsageError(f"--since: {exc}") from None
    repo = Repository.from_url(config.db.url)
    try:
        repo.create_tables()
        write_events(repo.iter_events(store=config.store, since=since), args.format, sys.stdout)
    finally:
        repo.close()
    return 0


def write_events(events: Iterator[Any], fmt: str, out: IO[str]) -> None:
    """Write stored events as JSON lines (contract envelopes) or CSV with a header."""
    if fmt == "jsonl":
        for e in events:
            out.write(json.dumps(e.envelope(), ensure_ascii=False, separators=(",", ":")) + "\n")
        return
    writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for e in events:
        row = e.envelope()
        row["data"] = json.dumps(row["data"], ensure_ascii=False, separators=(",", ":"))
        writer.writerow(row)


# -- run -------------------------------------------------------------------------------


def _parse_hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--http: {text!r} must be HOST:PORT, e.g. 127.0.0.1:8080")
    return host.strip("[]") or "0.0.0.0", int(port)


def cmd_run(args: argparse.Namespace) -> int:
    from cloud_bridge.service import run_service

    listen = _parse_hostport(args.http) if args.http else None
    config = load_config(args.config)
    host, port = listen or (config.http.host, config.http.port)
    return run_service(config, host, port, config_path=args.config)


# -- main ------------------------------------------------------------------------------


def _default_config() -> Path:
    return Path(CONFIG_NAME)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="The o2o cloud bridge: ingest, API, dashboard, codes.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    s = sub.add_parser("init", help="write bridge.toml, signing key, API token, kiosk configs")
    s.add_argument("--dir", type=Path, required=True, help="directory to write into")
    s.add_argument("--store", default="demo", help="store id (default demo)")
    s.add_argument("--kiosk", action="append", help="kiosk id; repeat for several (default door1)")
    s.add_argument(
        "--mqtt", default="mqtt://127.0.0.1:1883", help="broker URL for bridge and kiosks"
    )
    s.add_argument("--db", help="database URL (default: SQLite bridge.db beside bridge.toml)")
    s.add_argument("--force", action="store_true", help="overwrite existing files")
    s.set_defaults(func=cmd_init)

    s = sub.add_parser("issue", help="sign a code (prints the token)")
    s.add_argument("type", choices=list(TYPE_NAMES))
    s.add_argument("--config", type=Path, default=_default_config())
    s.add_argument("--id", help="code id (default: random)")
    s.add_argument("--store", help="store id (default: the config's)")
    s.add_argument("--name", help="member or staff display name")
    s.add_argument("--campaign", help="coupon campaign")
    s.add_argument("--value", help="coupon value text, e.g. '10%% off'")
    s.add_argument("--order", help="pickup order id")
    s.add_argument("--at", metavar="WHEN", help="reservation slot time")
    s.add_argument("--service", help="reservation service")
    s.add_argument("--not-before", metavar="WHEN", help="coupon valid from")
    s.add_argument(
        "--expires",
        metavar="WHEN",
        help="expiry: ISO 8601 or an offset (+2h, --expires=-1d); "
        "default coupon +30d, pickup +7d, reservation its slot +1d",
    )
    s.add_argument("--png", type=Path, metavar="FILE", help="also write the QR code as PNG")
    s.add_argument("--svg", type=Path, metavar="FILE", help="also write the QR code as SVG")
    s.add_argument("--json", action="store_true", help='print {"code": token, ...}')
    s.set_defaults(func=cmd_issue)

    s = sub.add_parser("export", help="export stored data")
    s.add_argument("what", choices=["events"])
    s.add_argument("--config", type=Path, default=_default_config())
    s.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    s.add_argument("--since", metavar="WHEN", help="ISO 8601 time or an offset such as -7d")
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("run", help="ingest, REST API and dashboard")
    s.add_argument("--config", type=Path, default=_default_config())
    s.add_argument("--http", metavar="HOST:PORT", help="listen address (default: the config's)")
    s.set_defaults(func=cmd_run)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.func(args))
    except (ConfigError, UsageError, ValueError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `o2o-bridge export events | head`: the reader left; that is not an error.
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115
        return 0


if __name__ == "__main__":
    sys.exit(main())
