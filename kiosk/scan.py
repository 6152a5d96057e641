"""``o2o-kiosk scan``: decode image files and report codes with timing.

Lets an owner check a printed code or a camera snapshot without running the kiosk, and
gives black-box tests a stable, line-per-image output.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2

from kiosk.devices.camera import IMAGE_SUFFIXES
from kiosk.devices.qr import QrDecoder, timed_decode

log = logging.getLogger(__name__)


def _expand(path: str) -> list[str]:
    p = Path(path)
    if p.is_dir():
        return [
            str(c)
            for c in sorted(p.iterdir())
            if c.is_file() and c.suffix.lower() in IMAGE_SUFFIXES
        ]
    return [path]


def scan_paths(paths: list[str], decoder: QrDecoder) -> Iterator[dict[str, Any]]:
    """One result per image, directories expanded in name order. ``ms`` is the wall time
    of decoding only (not of reading the file), so it compares with the benchmark."""
    for path in paths:
        for file in _expand(path):
            img = cv2.imread(file, cv2.IMREAD_COLOR)
            if img is None:
                yield {"file": file, "codes": [], "ms": 0.0, "error": "unreadable image"}
                continue
            found, ms = timed_decode(decoder, img)
            yield {"file": file, "codes": [d.text for d in found], "ms": round(ms, 3)}


def scan_main(argv_paths: list[str], as_json: bool) -> int:
    """Print one line per image; exit status 2 (and nothing scanned) if a path is missing,
    1 if an image could not be read (its line says so), 0 otherwise."""
    for path in argv_paths:
        if not Path(path).exists():
            print(f"o2o-kiosk: error: {path}: no such file or directory", file=sys.stderr)
            return 2
    decoder = QrDecoder()
    status = 0
    for result in scan_paths(argv_paths, decoder):
        if "error" in result:
            status = 1
        if as_json:
            print(json.dumps(result, ensure_ascii=False), flush=True)
        elif "error" in result:
            print(f"{result['file']}: {result['error']}", flush=True)
        elif result["codes"]:
            codes = " | ".join(result["codes"])
            print(f"{result['file']}: {codes} ({result['ms']:.1f} ms)", flush=True)
        else:
            print(f"{result['file']}: no code ({result['ms']:.1f} ms)", flush=True)
    return status
