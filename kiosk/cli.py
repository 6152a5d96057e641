"""`o2o-kiosk`: run the kiosk, decode image files, or self-test the hardware.

A bad command line or config exits with status 2 and one line naming the problem; no
traceback ever reaches the person at the terminal.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import NoReturn

from kiosk import __version__
from kiosk.config import KioskConfig, find_default_config, load_config
from kiosk.devices.locker import LockerError
from kiosk.localdb import DBError
from o2o_protocol.config_file import ConfigError

log = logging.getLogger("kiosk")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="o2o-kiosk", description="The shop-door kiosk.")
    p.add_argument("--version", action="version", version=f"o2o-kiosk {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run the kiosk (touch UI, or --headless)")
    run.add_argument("--config", type=Path, help="kiosk config (default: ./kiosk-*.toml)")
    run.add_argument("--headless", action="store_true", help="no screen: JSON lines on stdout")
    run.add_argument("--camera", metavar="SOURCE", help="device, picamera2, video file or dir")
    run.add_argument(
        "--exit-at-end", action="store_true", help="stop when a file source ends and synced"
    )
    run.add_argument(
        "--camera-fps",
        type=float,
        metavar="FPS",
        help="play a video file or image dir as a live camera, FPS frames a second, looped",
    )
    run.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="with --exit-at-end: how long to wait for the bridge's acks (default 30)",
    )

    scan = sub.add_parser("scan", help="decode QR codes in image files")
    scan.add_argument("paths", nargs="+", metavar="IMAGE_OR_DIR")
    scan.add_argument("--json", action="store_true", help="one JSON object per image")

    check = sub.add_parser("check", help="self-test: camera, lockers, printer, broker")
    check.add_argument("--config", type=Path, help="kiosk config (default: ./kiosk-*.toml)")
    return p


def _config(path: Path | None) -> KioskConfig:
    return load_config(path if path is not None else find_default_config())


def _camera_spec(cfg: KioskConfig, override: str | None) -> str:
    if override:
        return override
    return "picamera2" if cfg.camera.type == "picamera2" else cfg.camera.source


def _run(args: argparse.Namespace) -> int:
    if args.camera_fps is not None and args.exit_at_end:
        raise ConfigError("--camera-fps", "", "a played source never ends: drop --exit-at-end")
    cfg = _config(args.config)
    from kiosk.devices.camera import CameraError, open_source, play_source

    spec = _camera_spec(cfg, args.camera)
    try:
        # Opened once: both runners capture from this source.
        source = (
            open_source(spec) if args.camera_fps is None else play_source(spec, args.camera_fps)
        )
    except CameraError as exc:
        raise ConfigError("--camera" if args.camera else "camera.source", "", str(exc)) from None
    mode = "headless" if args.headless else "with the touch UI"
    log.info(
        "kiosk %s/%s starting %s, camera %s, broker %s",
        cfg.store,
        cfg.kiosk,
        mode,
        spec,
        cfg.mqtt.url,
    )
    if not args.headless:
        from kiosk.ui import run_ui

        return run_ui(cfg, source)
    from kiosk.headless import run_headless
    from kiosk.runtime import KioskRuntime

    try:
        kiosk = KioskRuntime(cfg)
    except BaseException:
        source.close()
        raise
    return run_headless(
        kiosk, source, exit_at_end=args.exit_at_end, drain_timeout_s=args.drain_timeout
    )


def _check(args: argparse.Namespace) -> int:
    from kiosk.selftest import run_checks

    return run_checks(_config(args.config))


def _scan(args: argparse.Namespace) -> int:
    from kiosk.scan import scan_main

    return scan_main(args.paths, args.json)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose or os.environ.get("O2O_DEBUG") else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    handlers = {"run": _run, "scan": _scan, "check": _check}
    try:
        return handlers[args.command](args)
    except ConfigError as exc:
        print(f"o2o-kiosk: error: {exc}", file=sys.stderr)
        return 2
    except (DBError, LockerError) as exc:
        print(f"o2o-kiosk: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
