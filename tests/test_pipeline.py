"""The one scan pipeline both runners use, with a real kiosk runtime behind it: a scan
that cannot be recorded shows nothing as done and never stops the scans behind it."""

from __future__ import annotations

import errno
import queue
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiosk.config import KioskConfig
from kiosk.localdb import Recorded
from kiosk.pipeline import QuietWindow, ScanFailed, ScanPipeline, ScanResult
from kiosk.runtime import KioskRuntime
from tests.keys import Issuer

ISSUER = Issuer()


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[KioskRuntime]:
    cfg = KioskConfig.model_validate(
        {
            "store": "s1",
            "kiosk": "k1",
            "data_dir": str(tmp_path / "data"),
            "keys": ISSUER.config_keys,
            "mqtt": {"url": "mqtt://127.0.0.1:9"},  # nobody there: the kiosk works offline
            "printer": {"type": "none"},
        }
    )
    k = KioskRuntime(cfg)
    yield k
    k.stop()


def test_a_scan_that_cannot_be_recorded_fails_alone(
    runtime: KioskRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    results: queue.Queue[ScanResult] = queue.Queue()
    pipeline = ScanPipeline(runtime, None, on_outcome=results.put, quiet_window_s=3.0)
    pipeline.start()
    try:
        import kiosk.journal as journal

        def full(fd: int, data: bytes) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        with monkeypatch.context() as m:
            m.setattr(journal.os, "write", full)
            pipeline.submit(ISSUER.code("c", "cp1"))
            failed = results.get(timeout=10)
        assert isinstance(failed, ScanFailed) and runtime.outbox_size() == 0
        pipeline.submit(ISSUER.code("c", "cp1"))  # the disk has room again
        ok = results.get(timeout=10)
        assert isinstance(ok, Recorded) and ok.event.type == "coupon.redeemed"
        pipeline.submit("not a code at all")
        rejected = results.get(timeout=10)
        assert isinstance(rejected, Recorded) and rejected.event.data["reason"] == "malformed"
    finally:
        pipeline.stop()


def test_quiet_window_merges_a_code_held_up() -> None:
    q = QuietWindow(3.0)
    assert q.is_new("A", 0.0)
    assert not q.is_new("A", 1.0)
    assert not q.is_new("A", 3.5)  # still in sight: seen 2.5 s ago
    assert q.is_new("B", 3.6)
    assert q.is_new("A", 7.0)  # away for 3.5 s: a new scan
