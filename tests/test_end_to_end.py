"""One shop, end to end: a real broker, the bridge, and a headless kiosk on camera frames.

The customer-visible promise: every outcome the kiosk shows is stored at the bridge
exactly once, and bad codes are refused with the contract's reasons.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import pytest

from cloud_bridge.config import load_config, load_signing_key
from devtools.corpus import write_video
from devtools.replay import write_session
from o2o_protocol.codes import CodeType, b64url_decode, b64url_encode, issue_code
from tests.keys import Issuer
from tests.shop import init_shop, issue, outcomes, run_kiosk, running_bridge, stored_events
from tests.support import MosquittoBroker


def forge(token: str) -> str:
    """The same signature over a payload whose value a customer doubled."""
    prefix, payload, sig = token.split(".")
    body = json.loads(b64url_decode(payload))
    body["v"] = "¥999 off"
    return f"{prefix}.{b64url_encode(json.dumps(body).encode())}.{sig}"


@pytest.fixture
def shop(tmp_path: Path, mosquitto_broker: MosquittoBroker) -> Iterator[Path]:
    """A shop directory made by `o2o-bridge init`, with the bridge running."""
    init_shop(tmp_path, mosquitto_broker.url)
    with running_bridge(tmp_path):
        yield tmp_path


def test_scans_reach_the_bridge_once_with_reasons(shop: Path) -> None:
    member = issue(shop, "member", "--id", "u1", "--name", "小明")
    coupon = issue(shop, "coupon", "--id", "cp1", "--campaign", "spring", "--value", "¥10 off")
    # `issue` refuses an expiry in the past; a code issued two days ago that lived a day:
    key = load_signing_key(load_config(shop / "bridge.toml"))
    now = int(time.time())
    expired = issue_code(
        key, type=CodeType.COUPON, id="cp2", store="s1", iat=now - 2 * 86400, exp=now - 86400
    )
    elsewhere = issue(shop, "coupon", "--id", "cp3", "--store", "other-shop")
    early = issue(shop, "coupon", "--id", "cp4", "--not-before=+1d")
    stranger = Issuer(store="s1").code("c", "cp5")  # signed, but not with this shop's key
    texts = [
        member,
        coupon,
        coupon,
        expired,
        elsewhere,
        forge(coupon),
        "hello, not a code",
        early,
        stranger,
    ]
    write_session(shop / "frames", texts)

    status, lines, stderr = run_kiosk(shop, shop / "frames")
    assert status == 0, stderr
    assert outcomes(lines) == [
        ("checkin", None),
        ("coupon.redeemed", None),
        ("scan.rejected", "already_used"),
        ("scan.rejected", "expired"),
        ("scan.rejected", "wrong_store"),
        ("scan.rejected", "bad_signature"),
        ("scan.rejected", "malformed"),
        ("scan.rejected", "not_yet_valid"),
        ("scan.rejected", "unknown_key"),
    ], stderr
    assert lines[0]["data"]["name"] == "小明"

    stored = stored_events(shop)
    assert sorted(e["id"] for e in stored) == sorted(line["event"] for line in lines)
    by_id = {e["id"]: e for e in stored}
    for line in lines:
        event = by_id[line["event"]]
        assert (event["type"], event["store"], event["kiosk"]) == (line["type"], "s1", "k1")
    assert sorted(e["seq"] for e in stored) == list(range(1, 10))

    # The kiosk remembers across restarts: the coupon stays used, and the member shown
    # again within the hour is welcomed but earns no second visit.
    write_session(shop / "frames2", [member, coupon])
    status, lines2, stderr = run_kiosk(shop, shop / "frames2")
    assert status == 0, stderr
    assert outcomes(lines2) == [("checkin", None), ("scan.rejected", "already_used")]
    assert lines2[0]["data"]["visits"] == 1 and lines2[0]["data"]["counted"] is False
    assert len(stored_events(shop)) == 11


def test_video_file_camera(shop: Path) -> None:
    member = issue(shop, "member", "--id", "u7")
    paths = write_session(shop / "frames", [member], gap_frames=5)
    video = write_video(shop / "door.avi", [cv2.imread(str(p)) for p in paths])
    status, lines, stderr = run_kiosk(shop, video)
    assert status == 0, stderr
    assert [(x["type"], x["data"]["member_id"]) for x in lines] == [("checkin", "u7")]


def test_outcomes_wait_in_the_outbox_while_the_broker_is_down(
    shop: Path, mosquitto_broker: MosquittoBroker
) -> None:
    coupon = issue(shop, "coupon", "--id", "cp9")
    write_session(shop / "frames", [coupon])
    mosquitto_broker.stop()
    status, lines, stderr = run_kiosk(shop, shop / "frames", drain_timeout=2)
    # The customer got their redemption; it is queued, not lost, and the run says so.
    assert outcomes(lines) == [("coupon.redeemed", None)]
    assert status == 1 and "not yet acked" in stderr
    mosquitto_broker.start()
    empty = shop / "empty"
    empty.mkdir()
    last = sorted((shop / "frames").iterdir())[-1]  # a frame with no code in it
    (empty / last.name).write_bytes(last.read_bytes())
    status, lines, stderr = run_kiosk(shop, empty)
    assert status == 0 and lines == [], stderr
    assert [e["data"]["coupon_id"] for e in stored_events(shop)] == ["cp9"]
