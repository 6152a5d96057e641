"""Campaign codes at two doors of one shop, through real kiosk runtimes, the real test
Mosquitto and a running bridge: a visit card counted across doors, a code shown outside
its hours, and the slip a visit card prints."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from devtools.replay import write_session
from kiosk.config import load_config
from kiosk.devices.printer import SimulatedPrinter
from kiosk.localdb import Recorded
from kiosk.runtime import KioskRuntime
from o2o_protocol.codes import Code, issue_code, verify_code
from o2o_protocol.messages import EventType
from tests.shop import bridge_cli, run_kiosk, running_bridge, stored_events
from tests.support import MosquittoBroker
from tests.test_kiosk_app import wait_for


class Shop:
    """A shop made by `o2o-bridge init` with two doors, its bridge running."""

    def __init__(self, root: Path, port: int) -> None:
        self.root, self.port = root, port
        self.token = (root / "api.token").read_text().strip()
        key = load_pem_private_key((root / "signing.key").read_bytes(), password=None)
        assert isinstance(key, Ed25519PrivateKey)
        self.key = key
        self.doors: dict[str, KioskRuntime] = {}
        self.paper: dict[str, SimulatedPrinter] = {}

    def api(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def open_door(self, kiosk: str) -> KioskRuntime:
        path = self.root / f"kiosk-{kiosk}.toml"
        # The shop's zone is UTC here: the test's hours are written in it.
        text = path.read_text().replace("\n[keys]", 'timezone = "UTC"\n\n[keys]', 1)
        path.write_text(text)
        paper = SimulatedPrinter()
        door = KioskRuntime(load_config(path), printer=paper)
        door.start()
        assert door.sync.wait_connected(20)
        self.doors[kiosk], self.paper[kiosk] = door, paper
        return door

    def code(self, id: str, **fields: Any) -> str:
        """A campaign code signed with the shop's key, as the bridge issues them."""
        now = int(time.time())
        return issue_code(
            self.key, type="c", id=id, store="s1", iat=now - 60, exp=now + 86400, **fields
        )


@pytest.fixture
def shop(tmp_path: Path, mosquitto_broker: MosquittoBroker) -> Iterator[Shop]:
    bridge_cli(
        tmp_path, "init", "--dir", str(tmp_path), "--store", "s1", "--kiosk", "k1", "--kiosk",
        "k2", "--mqtt", mosquitto_broker.url,
    )  # fmt: skip
    with running_bridge(tmp_path) as port:
        s = Shop(tmp_path, port)
        try:
            yield s
        finally:
            for door in s.doors.values():
                door.stop()


def uses_known(door: KioskRuntime, text: str) -> int:
    """The uses of a code this door knows of (its own and the bridge's count)."""
    code = verify_code(text, door.cfg.public_keys(), store="s1", now=time.time())
    assert isinstance(code, Code)
    return door.db.facts_for(code).coupon_uses


def outcome(door: KioskRuntime, text: str) -> dict[str, Any]:
    recorded = door.scan(text)
    assert isinstance(recorded, Recorded)
    return {"type": recorded.event.type, **recorded.event.data}


def test_a_three_use_card_is_refused_on_its_fourth_use_at_another_door(shop: Shop) -> None:
    k1, k2 = shop.open_door("k1"), shop.open_door("k2")
    card = shop.code("vc-1", cp="c-card", cn="咖啡三次卡", ck="visit_card", v="美式咖啡", uses=3)
    uses = [outcome(k1, card) for _ in range(3)]
    assert [(u["type"], u["use"], u["uses"]) for u in uses] == [
        ("coupon.redeemed", n, 3) for n in (1, 2, 3)
    ]
    assert uses[0]["campaign_name"] == "咖啡三次卡" and uses[0]["kind"] == "visit_card"
    assert outcome(k1, card)["reason"] == "already_used"  # this door counted all three
    assert k1.wait_drained(20)

    # The bridge tells the other door how many uses it stored (the REST route takes it).
    body = {"name": "coupon.used", "data": {"id": "vc-1", "count": 3}}
    shop.api("POST", "/api/v1/kiosks/k2/commands", body)
    wait_for(lambda: uses_known(k2, card) == 3, timeout=20)
    refused = outcome(k2, card)
    assert refused["type"] == EventType.SCAN_REJECTED and refused["reason"] == "already_used"
    assert k2.wait_drained(20)

    stored = [e for e in stored_events(shop.root) if e["data"].get("coupon_id") == "vc-1"]
    assert sorted(e["data"]["use"] for e in stored) == [1, 2, 3]
    assert {e["data"]["campaign"] for e in stored} == {"c-card"}
    rejected = [
        e for e in stored_events(shop.root) if e["type"] == "scan.rejected" and e["kiosk"] == "k2"
    ]
    assert [e["data"]["reason"] for e in rejected] == ["already_used"]


def test_outside_its_hours_a_code_is_refused_with_its_hours_and_stays_unused(
    shop: Shop,
) -> None:
    k1 = shop.open_door("k1")
    today = datetime.now(UTC).isoweekday()
    other_days = [d for d in range(1, 8) if d != today]
    # Tomorrow's window must not reach back into today: no window past midnight.
    hours = [{"days": other_days, "from": "00:00", "to": "23:59"}]
    flash = shop.code("fs-1", cp="flash", cn="周末快闪", ck="flash_sale", v="半价", hrs=hours)
    refused = outcome(k1, flash)
    assert refused["reason"] == "outside_hours" and refused["hours"] == hours
    assert uses_known(k1, flash) == 0  # nothing marked used: it works within its hours
    assert k1.wait_drained(20)
    (stored,) = [e for e in stored_events(shop.root) if e["type"] == "scan.rejected"]
    assert stored["data"]["hours"] == hours and stored["data"]["code_id"] == "fs-1"


def test_a_visit_card_slip_names_the_campaign_and_the_uses_left(shop: Shop) -> None:
    k1 = shop.open_door("k1")
    card = shop.code("vc-2", cp="c-card", cn="咖啡三次卡", ck="visit_card", v="美式咖啡", uses=3)
    outcome(k1, card)
    outcome(k1, card)
    wait_for(lambda: len(shop.paper["k1"].printed) >= 2, timeout=10)
    slip = shop.paper["k1"].printed[1]
    for line in ("活动：咖啡三次卡", "优惠：美式咖啡", "第 2 次，共 3 次", "剩余次数：1"):
        assert line in slip, slip


def test_a_card_held_up_is_one_use_and_shown_again_later_is_the_next(shop: Shop) -> None:
    """Through the camera: frames of a card held for 2.5 s are one scan (the quiet
    window, as for any code); the same card shown again 3.5 s later is its next use."""
    card = shop.code("vc-3", cp="c-card", cn="咖啡三次卡", ck="visit_card", v="美式咖啡", uses=3)
    write_session(shop.root / "held", [card], hold_frames=25)
    status, lines, stderr = run_kiosk(shop.root, shop.root / "held")
    assert status == 0, stderr[-3000:]
    assert [(x["type"], x["data"].get("use")) for x in lines] == [("coupon.redeemed", 1)]
    write_session(shop.root / "twice", [card, card], hold_frames=10, gap_frames=35)
    status, lines, stderr = run_kiosk(shop.root, shop.root / "twice")
    assert status == 0, stderr[-3000:]
    assert [(x["type"], x["data"].get("use")) for x in lines] == [
        ("coupon.redeemed", 2),
        ("coupon.redeemed", 3),
    ]
