"""`o2o-bridge`: init, issue, codes, export, run (docs/cli.md).

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
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, NoReturn

from cloud_bridge.config import (
    CONFIG_NAME,
    BridgeConfig,
    load_config,
    load_signing_key,
)
from cloud_bridge.issuing import TYPE_NAMES, code_fields, issue
from cloud_bridge.provision import UsageError, provision
from o2o_protocol.config_file import ConfigError
from o2o_protocol.timeutil import parse_when

log = logging.getLogger("cloud_bridge")

PROG = "o2o-bridge"
EXIT_USAGE = 2
_WHEN_OPTIONS = ("--expires", "--not-before", "--at", "--since")


class _Parser(argparse.ArgumentParser):
    """argparse, but a mistake is one line (not usage + message) and exit status 2."""

    def error(self, message: str) -> NoReturn:
        if "expected one argument" in message:
            option = next((o for o in _WHEN_OPTIONS if o in message), None)
            if option is not None:
                message += f" (for a past offset write it as {option}=-1d)"
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


# -- init ------------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    done = provision(
        args.dir,
        store=args.store,
        kiosks=args.kiosk or ["door1"],
        mqtt_url=args.mqtt,
        db_url=args.db,
        force=args.force,
        timezone=args.timezone,
    )
    if done.added:
        print(f"added store {done.added} to {done.config}")
    else:
        print(f"wrote {done.config}")
    print(f"wrote {done.signing_key}  (private signing key, key id {done.key_id}; keep it secret)")
    print(f"wrote {done.api_token}  (REST API token: issues codes, commands kiosks)")
    print(f"wrote {done.read_token}  (read-only token for the dashboard)")
    if done.chain_token:
        print(f"wrote {done.chain_token}  (chain token: reads every store, changes nothing)")
    for p in done.kiosks:
        print(f"wrote {p}")
    print("next:")
    print(f"  o2o-bridge run --config {done.config}")
    for p in done.kiosks:
        print(f"  o2o-kiosk run --config {p}")
    store = f" --store {done.added}" if done.added else ""
    print(f"  o2o-bridge issue member --config {done.config}{store} --name Ada --png member.png")
    return 0


def _store_config(config: BridgeConfig, store: str | None) -> BridgeConfig:
    """The config as `--store` sees it (default: the top-level store); status 2 for a
    store the service does not have."""
    if store is None:
        return config
    try:
        return config.for_store(store)
    except KeyError:
        raise UsageError(
            f"--store: no store {store!r} in this service ({', '.join(config.store_ids())})"
        ) from None


# -- issue -----------------------------------------------------------------------------


def cmd_issue(args: argparse.Namespace) -> int:
    service = load_config(args.config)
    # A store of the service signs with its own key; another store id (a code for a
    # shop this service does not run) is signed with the top-level store's key.
    config = service.for_store(args.store) if args.store in service.store_ids() else service
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


# -- codes -----------------------------------------------------------------------------


def cmd_codes(args: argparse.Namespace) -> int:
    """Issue N codes of a campaign (the same service and rules as the API), print them,
    and optionally write a printable sheet of their QR codes."""
    from cloud_bridge.campaigns import CampaignError, CampaignService, Refused
    from cloud_bridge.db import Repository
    from cloud_bridge.sheet import PER_PAGE, write_sheet

    sheet: Path | None = args.sheet
    if sheet is not None:
        if sheet.suffix.lower() not in (".png", ".pdf"):
            raise UsageError(f"--sheet: {sheet} must end in .png or .pdf")
        if sheet.suffix.lower() == ".png" and args.count > PER_PAGE:
            raise UsageError(
                f"--sheet: a PNG holds one page ({PER_PAGE} codes); write a PDF for {args.count}"
            )
    config = _store_config(load_config(args.config), args.store)
    key = load_signing_key(config)
    repo = Repository.from_url(config.db.url)
    try:
        repo.migrate()
        service = CampaignService(repo, config, key)
        try:
            codes = service.issue(args.campaign, args.count, member=args.member)
        except LookupError:
            raise UsageError(f"--campaign: no campaign {args.campaign!r}") from None
        except (Refused, CampaignError) as exc:
            raise UsageError(str(exc)) from None
    finally:
        repo.close()
    if args.format == "json":
        print(json.dumps({"codes": [c.as_dict() for c in codes]}, ensure_ascii=False))
    else:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(["id", "code", "url"])
        for c in codes:
            writer.writerow([c.id, c.code, c.url or ""])
    sys.stdout.flush()
    if sheet is not None:
        try:
            n = write_sheet([(c.id, c.code) for c in codes], sheet)
        except OSError as exc:
            raise UsageError(
                f"--sheet: cannot write {sheet}: {exc.strerror} (the codes above are issued)"
            ) from None
        print(f"wrote {sheet} ({n} page{'s' if n > 1 else ''})", file=sys.stderr)
    return 0


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
        repo.migrate()
        # Every store of the service, one after the other; each envelope names its store.
        for store in config.store_ids():
            write_events(
                repo.iter_events(store=store, since=since),
                args.format,
                sys.stdout,
                header=store == config.store,
            )
    finally:
        repo.close()
    return 0


def write_events(events: Iterator[Any], fmt: str, out: IO[str], *, header: bool = True) -> None:
    """Write stored events as JSON lines (contract envelopes) or CSV with a header."""
    if fmt == "jsonl":
        for e in events:
            out.write(json.dumps(e.envelope(), ensure_ascii=False, separators=(",", ":")) + "\n")
        return
    writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, lineterminator="\n")
    if header:
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
    if args.worker is not None:
        try:
            config = config.with_worker(args.worker)
        except ValueError as exc:
            raise UsageError(f"--worker: {exc}") from None
    host, port = listen or (config.http.host, config.http.port)
    return run_service(config, host, port, config_path=args.config)


# -- simulate --------------------------------------------------------------------------


def _speed(text: str) -> float | None:
    if text == "max":
        return None
    try:
        rate = float(text)
    except ValueError:
        rate = 0.0
    if not rate > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: 'max' or events per second, e.g. 50")
    return rate


def cmd_simulate(args: argparse.Namespace) -> int:
    if args.live:
        return _simulate_live(args)
    from cloud_bridge.simulate import simulate

    if not 1 <= args.weeks <= 52:
        raise UsageError("--weeks: 1 to 52")
    config = _store_config(load_config(args.config), args.store)
    kiosks = [k for group in args.kiosks or [] for k in group.split(",") if k]
    try:
        summary = simulate(
            config,
            args.config,
            weeks=args.weeks,
            kiosks=kiosks or None,
            seed=args.seed,
            rate=args.speed,
        )
    except (TimeoutError, ConnectionError) as exc:  # no bridge acking, no broker
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    print(summary.line())
    return 0


def _simulate_live(args: argparse.Namespace) -> int:
    from cloud_bridge.simulate import live

    config = load_config(args.config)
    stores = [s for group in args.stores or [] for s in group.split(",") if s]
    unknown = [s for s in stores if s not in config.store_ids()]
    if unknown:
        raise UsageError(f"--stores: {', '.join(unknown)} not a store of this service")
    if args.rate is None or not args.rate > 0:
        raise UsageError("--live needs --rate N (events per second, more than 0)")
    if not args.seconds > 0:
        raise UsageError("--seconds: more than 0")
    if args.kiosks_per_store is not None and args.kiosks_per_store < 1:
        raise UsageError("--kiosks-per-store: at least 1")
    try:
        report = live(
            config,
            args.config,
            stores=stores or None,
            kiosks_per_store=args.kiosks_per_store,
            rate=args.rate,
            seconds=args.seconds,
            seed=args.seed,
        )
    except (TimeoutError, ConnectionError) as exc:  # no bridge acking, no broker
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report.as_dict()) if args.json else report.line())
    if report.unacked:
        print(f"{PROG}: error: {report.unacked} events not acked after the drain", file=sys.stderr)
        return 1
    return 0


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
        "--mqtt",
        help="broker URL for bridge and kiosks (default mqtt://127.0.0.1:1883; adding a "
        "store: the service's, for its kiosk files)",
    )
    s.add_argument("--db", help="database URL (default: SQLite bridge.db beside bridge.toml)")
    s.add_argument(
        "--force",
        action="store_true",
        help="overwrite existing files (without it, a directory with a bridge.toml gets the "
        "store added to its service)",
    )
    s.add_argument(
        "--timezone",
        metavar="TZ",
        help="the shop's IANA time zone, e.g. Asia/Shanghai (default: this machine's)",
    )
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

    s = sub.add_parser("codes", help="issue codes of a campaign (CSV or JSON; a QR sheet)")
    s.add_argument("--config", type=Path, default=_default_config())
    s.add_argument("--campaign", required=True, metavar="ID", help="campaign id (cp-…)")
    s.add_argument("--count", type=int, required=True, metavar="N", help="how many, 1-1000")
    s.add_argument("--member", metavar="M", help="the member they are for, if any")
    s.add_argument("--store", metavar="ID", help="the store of the campaign (default: the first)")
    s.add_argument("--format", choices=["csv", "json"], default="csv")
    s.add_argument(
        "--sheet", type=Path, metavar="FILE", help="also write a printable A4 sheet (.png or .pdf)"
    )
    s.set_defaults(func=cmd_codes)

    s = sub.add_parser("export", help="export stored data")
    s.add_argument("what", choices=["events"])
    s.add_argument("--config", type=Path, default=_default_config())
    s.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    s.add_argument("--since", metavar="WHEN", help="ISO 8601 time or an offset such as -7d")
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("run", help="ingest, REST API and dashboard")
    s.add_argument("--config", type=Path, default=_default_config())
    s.add_argument("--http", metavar="HOST:PORT", help="listen address (default: the config's)")
    s.add_argument(
        "--worker",
        metavar="NAME",
        help="one of several workers of this service: the ingest is shared, every other"
        " job runs once between them (docs/chain.md)",
    )
    s.set_defaults(func=cmd_run)

    s = sub.add_parser(
        "simulate", help="feed weeks of realistic door traffic to the running bridge (demo)"
    )
    s.add_argument("--config", type=Path, default=_default_config())
    s.add_argument("--weeks", type=int, default=4, help="weeks of history up to now (default 4)")
    s.add_argument(
        "--kiosks", nargs="+", metavar="ID", help="the doors (default: the config's kiosks)"
    )
    s.add_argument("--seed", type=int, default=1, help="same seed, same traffic (default 1)")
    s.add_argument(
        "--store", metavar="ID", help="the store whose doors to play (default: the first)"
    )
    s.add_argument(
        "--speed",
        type=_speed,
        default=None,
        metavar="max|N",
        help="max (default): as fast as the bridge acks; N: events per second",
    )
    s.add_argument(
        "--live",
        action="store_true",
        help="load: events dated now from many kiosks at --rate for --seconds, with acks",
    )
    s.add_argument(
        "--stores", nargs="+", metavar="ID", help="live: the stores (default: every store)"
    )
    s.add_argument(
        "--kiosks-per-store",
        type=int,
        metavar="N",
        help="live: kiosks per store (default: its configured ones; more are added)",
    )
    s.add_argument("--rate", type=float, metavar="N", help="live: events per second, in all")
    s.add_argument(
        "--seconds", type=float, default=10.0, help="live: how long to send (default 10)"
    )
    s.add_argument("--json", action="store_true", help="live: print the report as JSON")
    s.set_defaults(func=cmd_simulate)
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
