"""The kiosk runtime with its real local database, lockers (gpiozero mock pins) and printer worker:
joins, receipts, faults and a full disk, as a customer or the owner would notice them."""

from __future__ import annotations

import contextlib
import errno
import json
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from kiosk.commands import apply_command
from kiosk.config import KioskConfig
from kiosk.devices.printer import SimulatedPrinter
from kiosk.localdb import DB_FILE, DBError, Recorded
from kiosk.pipeline import ScanFailed, ScanPipeline, ScanResult
from kiosk.runtime import KioskRuntime
from o2o_protocol import topics
from o2o_protocol.messages import Command
from tests.keys import Issuer
from tests.support import MosquittoBroker

ISSUER = Issuer()


def make_kiosk(
    tmp_path: Path, *, door_timeout_s: float = 5.0, **rules: object
) -> tuple[KioskRuntime, SimulatedPrinter]:
    cfg = KioskConfig.model_validate(
        {
            "store": "s1",
            "kiosk": "k1",
            "data_dir": str(tmp_path / "data"),
            "keys": ISSUER.config_keys,
            "mqtt": {"url": "mqtt://127.0.0.1:9"},  # nobody there: the kiosk works offline
            "lockers": {"sim_close_after_s": 0.2, "door_timeout_s": door_timeout_s},
            "ui": {"join_url": "https://shop.example/join", "language": "en"},
            "rules": rules,
        }
    )
    printer = SimulatedPrinter()
    kiosk = KioskRuntime(cfg, printer=printer)
    kiosk.printer.start()
    return kiosk, printer


@pytest.fixture
def kiosk(tmp_path: Path) -> Iterator[tuple[KioskRuntime, SimulatedPrinter]]:
    k, p = make_kiosk(tmp_path)
    yield k, p
    k.printer.stop()
    k.lockers.close()
    k.db.close()


def wait_for(predicate: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def test_join_stores_only_a_hash_and_links_back_online(
    kiosk: tuple[KioskRuntime, SimulatedPrinter], tmp_path: Path
) -> None:
    k, _printer = kiosk
    assert k.join("not a phone") is None
    first = k.join("138 0013 8000")
    assert isinstance(first, Recorded) and first.event.type == "member.joined"
    member_id = first.event.data["member_id"]
    assert first.event.data["join_url"] == f"https://shop.example/join?j={member_id}"
    again = k.join("13800138000")
    assert again is not None and again.event.data["member_id"] == member_id
    assert again.event.data["known"] is True
    for f in (tmp_path / "data").iterdir():
        assert "13800138000" not in f.read_text(errors="replace")
    assert k.db.outbox_size() == 2


def test_receipt_printed_after_redemption(kiosk: tuple[KioskRuntime, SimulatedPrinter]) -> None:
    k, printer = kiosk
    k.scan(ISSUER.code("c", "cp1", cp="spring", v="10 off"))
    wait_for(lambda: len(printer.printed) == 1)
    assert "spring" in printer.printed[0] and "10 off" in printer.printed[0]


def test_paper_out_is_reported_and_the_kiosk_keeps_serving(
    kiosk: tuple[KioskRuntime, SimulatedPrinter],
) -> None:
    k, printer = kiosk
    printer.paper_out = True
    redeemed = k.scan(ISSUER.code("c", "cp2"))
    assert isinstance(redeemed, Recorded) and redeemed.event.type == "coupon.redeemed"
    wait_for(lambda: any(e["type"] == "printer.fault" for e in k.db.history()))
    fault = next(e for e in k.db.history() if e["type"] == "printer.fault")
    assert fault["data"]["fault"] == "paper_out"
    member = k.scan(ISSUER.code("m", "u1"))
    assert isinstance(member, Recorded) and member.event.type == "checkin"


def test_full_disk_records_nothing_and_shows_nothing(
    kiosk: tuple[KioskRuntime, SimulatedPrinter], monkeypatch: pytest.MonkeyPatch
) -> None:
    k, _printer = kiosk
    shown: list[Recorded] = []
    k.add_listener(shown.append)
    coupon = ISSUER.code("c", "cp3")
    import kiosk.journal as journal

    def full(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(journal.os, "write", full)
        with pytest.raises(DBError):
            k.scan(coupon)
    assert shown == [] and k.db.outbox_size() == 0
    # Space again: the same coupon was never marked used by the failed attempt.
    ok = k.scan(coupon)
    assert isinstance(ok, Recorded) and ok.event.type == "coupon.redeemed" and ok.event.seq == 1


def test_remote_locker_open_is_logged_as_a_staff_action(
    kiosk: tuple[KioskRuntime, SimulatedPrinter],
) -> None:
    k, _ = kiosk
    cmd = Command(seq=1, name="locker.open", data={"locker": 2, "by": "owner"})
    assert apply_command(k.db, cmd)
    k.doors.start()
    k.doors.on_command(cmd)
    assert k.doors.wait_remote(5)
    action = k.db.history()[0]
    assert action["type"] == "staff.action"
    assert action["data"] == {
        "action": "locker.open",
        "locker": 2,
        "source": "remote:owner",
        "opened": True,
        "order": None,
    }


def test_a_remote_open_cut_off_by_a_restart_runs_once_after_it(tmp_path: Path) -> None:
    """The command is applied (its seq on disk) but the power goes before the pulse:
    the next start opens the locker, logs it, and a third start opens nothing."""
    k, _ = make_kiosk(tmp_path)
    assert apply_command(
        k.db, Command(seq=1, name="locker.open", data={"locker": 3, "by": "owner"})
    )
    assert [p.locker for p in k.db.remote_opens()] == [3]
    _close(k)  # no device thread ever ran it

    k2, _ = make_kiosk(tmp_path)
    k2.doors.start()
    k2.doors.recover()
    assert k2.doors.wait_remote(5)
    actions = [e for e in k2.db.history() if e["type"] == "staff.action"]
    assert [(a["data"]["locker"], a["data"]["source"]) for a in actions] == [(3, "remote:owner")]
    assert k2.db.remote_opens() == [] and k2.db.last_cmd_seq == 1
    _close(k2)

    k3, _ = make_kiosk(tmp_path)
    k3.doors.start()
    k3.doors.recover()
    assert k3.doors.wait_remote(5)
    assert len([e for e in k3.db.history() if e["type"] == "staff.action"]) == 1
    _close(k3)


def test_forced_door_is_a_locker_fault(kiosk: tuple[KioskRuntime, SimulatedPrinter]) -> None:
    k, _ = kiosk
    assert k.lockers.simulator is not None
    k.lockers.simulator.open(3)
    wait_for(lambda: any(e["type"] == "locker.fault" for e in k.db.history()))
    fault = next(e for e in k.db.history() if e["type"] == "locker.fault")
    assert fault["data"]["locker"] == 3 and fault["data"]["fault"] == "forced_open"


def test_store_survives_restart_with_data_files_present(tmp_path: Path) -> None:
    k, _ = make_kiosk(tmp_path, checkin_cooldown_min=0)
    k.scan(ISSUER.code("m", "u9", n="Ann"))
    k.printer.stop()
    k.lockers.close()
    k.db.close()
    assert (tmp_path / "data" / DB_FILE).with_suffix(".journal").exists()
    k2, _ = make_kiosk(tmp_path, checkin_cooldown_min=0)
    again = k2.scan(ISSUER.code("m", "u9", n="Ann"))
    assert isinstance(again, Recorded) and again.event.data["visits"] == 2
    k2.printer.stop()
    k2.lockers.close()
    k2.db.close()


def test_stale_remote_open_is_ignored(kiosk: tuple[KioskRuntime, SimulatedPrinter]) -> None:
    """A kiosk re-sent its whole history (say, after a new SD card) opens nothing old."""
    k, _ = kiosk
    cmd = Command(seq=1, name="locker.open", data={"locker": 1, "expires": int(time.time()) - 60})
    assert apply_command(k.db, cmd)
    k.doors.start()
    k.doors.on_command(cmd)
    assert k.doors.wait_remote(5)
    assert [e["type"] for e in k.db.history()] == []
    assert k.db.remote_opens() == []  # settled: a restart does not try it again


def test_a_locker_open_for_loading_is_not_given_to_a_second_order(tmp_path: Path) -> None:
    k, _ = make_kiosk(tmp_path)
    k.lockers.simulator.close_after_s = 0  # type: ignore[union-attr]  # staff keep it open
    for seq, order in enumerate(("A1", "A2"), start=1):
        apply_command(k.db, Command(seq=seq, name="preorder.upsert", data={"order": order}))
    k.scan(ISSUER.code("s", "st1"))
    first = k.scan(ISSUER.code("p", "p1", o="A1"))
    second = k.scan(ISSUER.code("p", "p2", o="A2"))
    assert first.locker != second.locker  # type: ignore[union-attr]
    k.lockers.close()
    k.db.close()


def test_second_kiosk_process_on_the_same_data_is_refused(tmp_path: Path) -> None:
    k, _ = make_kiosk(tmp_path)
    with pytest.raises(DBError, match="in use"):
        make_kiosk(tmp_path)
    k.lockers.close()
    k.db.close()


def test_an_order_shown_twice_while_loading_goes_into_one_locker(tmp_path: Path) -> None:
    k, _ = make_kiosk(tmp_path)
    k.lockers.simulator.close_after_s = 0  # type: ignore[union-attr]  # staff keep it open
    apply_command(k.db, Command(seq=1, name="preorder.upsert", data={"order": "A12"}))
    k.scan(ISSUER.code("s", "st1"))
    pick = ISSUER.code("p", "p12", o="A12")
    first = k.scan(pick)
    again = k.scan(pick)
    assert first == again  # the same locker, not a second one
    # The locker is held, durably, while staff have it open (a restart keeps it taken).
    others = tuple((n, "M") for n in (1, 2, 3, 4) if n != first.locker)  # type: ignore[union-attr]
    assert k.db.free_lockers() == others
    k.lockers.simulator.shut(first.locker)  # type: ignore[union-attr]
    wait_for(lambda: any(e["type"] == "locker.loaded" for e in k.db.history()))
    time.sleep(0.3)
    loads = [e for e in k.db.history() if e["type"] == "locker.loaded"]
    assert len(loads) == 1 and loads[0]["data"]["locker"] == first.locker  # type: ignore[union-attr]
    k.lockers.close()
    k.db.close()


def _close(k: KioskRuntime) -> None:
    k.doors.stop()
    k.lockers.close()
    k.db.close()


def _load(k: KioskRuntime, order: str) -> int:
    apply_command(
        k.db, Command(seq=k.db.last_cmd_seq + 1, name="preorder.upsert", data={"order": order})
    )
    k.scan(ISSUER.code("s", "st1"))
    opening = k.scan(ISSUER.code("p", f"p-{order}", o=order))
    return opening.locker  # type: ignore[union-attr]


def test_a_restart_during_loading_keeps_the_locker_and_finishes_the_load(tmp_path: Path) -> None:
    k, _ = make_kiosk(tmp_path)
    k.lockers.simulator.close_after_s = 0  # type: ignore[union-attr]
    locker = _load(k, "B7")
    _close(k)  # power cut while staff have the door open; they shut it meanwhile
    k2, _ = make_kiosk(tmp_path)
    k2.doors.recover()
    pre = k2.db.preorder("B7")
    assert pre is not None and (pre.status, pre.locker) == ("ready", locker)
    assert any(e["type"] == "locker.loaded" for e in k2.db.history())
    _close(k2)


def test_an_unconfirmed_open_is_not_a_pickup_even_after_a_restart(tmp_path: Path) -> None:
    # The latch sticks: each scan waits out the door timeout, short here.
    k, _ = make_kiosk(tmp_path, door_timeout_s=0.5)
    locker = _load(k, "C9")
    wait_for(lambda: (k.db.preorder("C9") or k.db.preorder("x")).status == "ready")  # type: ignore[union-attr]
    k.staff_logout()
    k.lockers.simulator.jammed.add(locker)  # type: ignore[union-attr]  # the latch sticks
    code = ISSUER.code("p", "p-C9", o="C9")
    outcomes = []
    for _ in range(3):
        outcomes.append(k.scan(code).event.data)  # type: ignore[union-attr]
    assert any(d.get("confirmed") is False for d in outcomes)  # the customer was told
    _close(k)  # restart before the door was ever seen open
    k2, _ = make_kiosk(tmp_path)
    k2.doors.recover()
    pre = k2.db.preorder("C9")
    assert pre is not None and pre.status == "ready" and pre.locker == locker
    assert not any(e["type"] == "pickup.completed" for e in k2.db.history())
    _close(k2)


def test_a_remote_open_waiting_on_its_door_does_not_hold_up_events(
    tmp_path: Path, mosquitto_broker: MosquittoBroker
) -> None:
    """The owner opens a jammed locker remotely: while the kiosk still waits for that door,
    a customer's coupon reaches the broker. Ordered by conditions, not by timings: the
    door timeout is far longer than the test, and the door opens only once the coupon
    has been seen on the wire."""
    door_timeout = 60.0
    cfg = KioskConfig.model_validate(
        {
            "store": "s1",
            "kiosk": "k1",
            "data_dir": str(tmp_path / "data"),
            "keys": ISSUER.config_keys,
            "mqtt": {"url": mosquitto_broker.url},
            "lockers": {"pulse_s": 0.1, "door_timeout_s": door_timeout},
            "printer": {"type": "none"},
        }
    )
    k = KioskRuntime(cfg)
    assert k.lockers.simulator is not None
    k.lockers.simulator.jammed.add(2)  # the door never reads open: the unlock waits it out
    wire: queue.Queue[tuple[float, dict[str, object]]] = queue.Queue()
    peer = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="owner-peer")
    subscribed = threading.Event()
    peer.on_subscribe = lambda *_args: subscribed.set()

    def on_message(_c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        body = json.loads(msg.payload)
        for event in body if isinstance(body, list) else [body]:
            wire.put((time.monotonic(), event))

    peer.on_message = on_message
    peer.connect(mosquitto_broker.host, mosquitto_broker.port)
    peer.loop_start()
    try:
        peer.subscribe(topics.kiosk_topic("s1", "k1", topics.EVENTS), qos=1)
        assert subscribed.wait(10)
        k.start()
        assert k.sync.wait_subscribed(10)  # a command sent before that would not arrive
        command = {"seq": 1, "name": "locker.open", "data": {"locker": 2, "by": "owner"}}
        peer.publish(topics.kiosk_topic("s1", "k1", topics.CMD), json.dumps(command), qos=1)
        wait_for(lambda: k.db.last_cmd_seq == 1)
        coupon = k.scan(ISSUER.code("c", "cp-remote"))
        assert isinstance(coupon, Recorded)
        events: list[dict[str, object]] = []

        def wait_wire(kind: str) -> None:
            deadline = time.monotonic() + 30
            while not any(e["type"] == kind for e in events):
                assert time.monotonic() < deadline, f"no {kind} on the wire; saw {events}"
                with contextlib.suppress(queue.Empty):
                    events.append(wire.get(timeout=0.2)[1])

        wait_wire("coupon.redeemed")
        assert not k.doors.wait_remote(0), "the remote open had already finished"
        assert not any(e["type"] == "staff.action" for e in events)
        k.lockers.simulator.open(2)  # the latch gives at last: the open completes
        wait_wire("staff.action")
        action = next(e for e in k.db.history() if e["type"] == "staff.action")
        assert action["data"]["source"] == "remote:owner" and action["data"]["opened"] is True
    finally:
        peer.loop_stop()
        peer.disconnect()
        k.stop()


def test_a_scan_that_cannot_be_recorded_fails_alone(
    kiosk: tuple[KioskRuntime, SimulatedPrinter], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the one scan pipeline: nothing shown as done, and the next scan works."""
    runtime, _ = kiosk
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
