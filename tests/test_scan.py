"""``o2o-kiosk scan``: one line per image, JSON shape, and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from devtools import corpus
from kiosk.devices.qr import QrDecoder
from kiosk.scan import scan_main, scan_paths


@pytest.fixture
def corpus_dir(tmp_path: Path) -> tuple[Path, list[str]]:
    rng = np.random.default_rng(1)
    texts = [corpus.sample_token(rng) for _ in range(2)]
    corpus.write_corpus(tmp_path, texts, ["clean", "none"], seed=3)
    (tmp_path / "zz-broken.png").write_bytes(b"\x89PNG not really")
    return tmp_path, texts


def test_scan_main_json_lines(corpus_dir, capsys) -> None:
    d, texts = corpus_dir
    # One unreadable image: every line still printed, and the status says so.
    assert scan_main([str(d)], as_json=True) == 1
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [Path(r["file"]).name for r in lines] == sorted(p.name for p in d.iterdir())
    assert [r["codes"] for r in lines] == [[texts[0]], [texts[1]], [], [], []]
    for r in lines[:4]:
        assert set(r) == {"file", "codes", "ms"}
        assert isinstance(r["ms"], float) and r["ms"] > 0
    assert lines[4] == {
        "file": str(d / "zz-broken.png"),
        "codes": [],
        "ms": 0.0,
        "error": "unreadable image",
    }


def test_scan_main_plain_text(corpus_dir, capsys) -> None:
    d, texts = corpus_dir
    first = sorted(d.glob("*.png"))[0]
    assert scan_main([str(first)], as_json=False) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and texts[0] in out and "ms" in out


def test_scan_main_missing_path(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "nope.png"
    assert scan_main([str(missing)], as_json=True) == 2
    cap = capsys.readouterr()
    assert cap.out == ""
    assert cap.err == f"o2o-kiosk: error: {missing}: no such file or directory\n"


def test_scan_paths_yields_per_image(corpus_dir) -> None:
    d, _ = corpus_dir
    results = list(scan_paths([str(d)], QrDecoder()))
    assert len(results) == 5
