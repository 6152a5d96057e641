"""`make demo`: one shop, start to finish, on this machine, told in a shop owner's words.

Sets up a demo shop, starts the message broker and the cloud service, issues the codes
customers would get online, plays a recorded camera session at the door through a
headless kiosk, and shows what reached the owner's dashboard. Everything is kept in
`demo-run/` so it can be looked at afterwards.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

from cloud_bridge.devbroker import DevBroker, free_port, wait_for_port
from kiosk.devices.replay import write_session
from o2o_protocol.codes import b64url_decode, b64url_encode

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "demo-run"
BIN = Path(sys.executable).parent
STEP = 0


def say(text: str) -> None:
    print(text, flush=True)


def step(text: str) -> None:
    global STEP
    STEP += 1
    say(f"\n{STEP}. {text}")


def tool(name: str, *args: str) -> str:
    proc = subprocess.run(
        [str(BIN / name), *args], cwd=RUN, capture_output=True, text=True, timeout=120
    )
    if proc.returncode != 0:
        raise SystemExit(f"demo: `{name} {' '.join(args)}` failed:\n{proc.stderr.strip()}")
    return proc.stdout


def issue(kind: str, *args: str) -> str:
    return str(json.loads(tool("o2o-bridge", "issue", kind, *args, "--json"))["code"])


def forge(token: str) -> str:
    prefix, payload, sig = token.split(".")
    body = json.loads(b64url_decode(payload))
    body["v"] = "¥500 off"
    return f"{prefix}.{b64url_encode(json.dumps(body, ensure_ascii=False).encode())}.{sig}"


REFUSALS = {
    "already_used": "this coupon was already used",
    "expired": "the code has expired",
    "wrong_store": "the code belongs to another shop",
    "bad_signature": "the code was tampered with (its signature does not match)",
    "unknown_key": "the code was not issued by this shop",
    "malformed": "that is not one of our codes",
    "not_yet_valid": "the code is not valid yet",
    "revoked": "the shop withdrew this code",
}


def tell(line: dict[str, Any]) -> str:
    data, kind = line["data"], line["type"]
    if kind == "checkin":
        return (
            f"  OK  Member {data.get('name') or data['member_id']} checked in: visit "
            f"{data['visits']}, +{data['points_earned']} points ({data['points']} in total)"
        )
    if kind == "coupon.redeemed":
        return f"  OK  Coupon '{data.get('campaign')}' redeemed: {data.get('value')}"
    if kind == "scan.rejected":
        return f"  NO  Refused: {REFUSALS.get(str(line['reason']), line['reason'])}"
    return f"  OK  {kind}"


def main() -> int:
    if RUN.exists():
        shutil.rmtree(RUN)
    RUN.mkdir()
    step("Setting up a demo shop 'demo' with one door kiosk 'door1'.")
    broker = DevBroker.start_on_free_port(RUN / "broker")
    say(f"    The message broker (Mosquitto) that links kiosk and cloud is up on {broker.url}.")
    tool(
        "o2o-bridge",
        "init",
        "--dir",
        str(RUN),
        "--store",
        "demo",
        "--kiosk",
        "door1",
        "--mqtt",
        broker.url,
    )
    say("    Wrote the shop's settings, its signing key (kept by the cloud service only)")
    say("    and the kiosk's settings (public key only: a stolen kiosk cannot make codes).")

    step("Starting the cloud service (stores every event, serves the owner's dashboard).")
    port = free_port()
    log = (RUN / "bridge.log").open("w")
    bridge = subprocess.Popen(
        [str(BIN / "o2o-bridge"), "run", "--config", "bridge.toml", "--http", f"127.0.0.1:{port}"],
        cwd=RUN,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port("127.0.0.1", port, timeout=30, alive=lambda: bridge.poll() is None)
        say(f"    Dashboard: http://127.0.0.1:{port}/  (API token in demo-run/api.token)")
        run_door(port)
    finally:
        bridge.send_signal(signal.SIGTERM)
        bridge.wait(20)
        log.close()
        broker.stop()
    say("\nDemo finished. The settings, codes, camera frames and logs are in demo-run/.")
    return 0


def run_door(port: int) -> None:
    step("Issuing the codes customers got online.")
    member = issue("member", "--id", "ming", "--name", "小明")
    coupon = issue("coupon", "--id", "spring-001", "--campaign", "spring", "--value", "¥10 off")
    expired = issue("coupon", "--id", "old-001", "--campaign", "summer", "--expires=-1d")
    foreign = issue("coupon", "--id", "other-001", "--store", "another-shop")
    say("    A member code for 小明, a ¥10 spring coupon, last summer's expired coupon,")
    say("    and a coupon from another shop. Someone also edits a coupon to say ¥500.")
    (RUN / "codes.json").write_text(
        json.dumps(
            {"member": member, "coupon": coupon, "expired": expired, "other_shop": foreign},
            indent=2,
        )
    )

    step("Customers show their codes at the door (a recorded camera session).")
    texts = [member, coupon, coupon, expired, foreign, forge(coupon), "https://example.com/hi"]
    frames = write_session(RUN / "camera", texts)
    say(f"    {len(frames)} camera frames, 640x480, in demo-run/camera/.")

    step("The kiosk at the door reads each code, decides, and records it before answering.")
    proc = subprocess.Popen(
        [
            str(BIN / "o2o-kiosk"),
            "run",
            "--headless",
            "--config",
            "kiosk-door1.toml",
            "--camera",
            "camera",
            "--exit-at-end",
        ],
        cwd=RUN,
        stdout=subprocess.PIPE,
        stderr=(RUN / "kiosk.log").open("w"),
        text=True,
    )
    assert proc.stdout is not None
    for raw in proc.stdout:
        say(tell(json.loads(raw)))
    status = proc.wait(120)
    if status == 0:
        say("    Every outcome reached the cloud service and was confirmed (acked).")
    else:
        say("    Some outcomes are still queued in the kiosk; they are sent when it reconnects.")

    step("What the owner sees in the cloud service (today's figures).")
    token = (RUN / "api.token").read_text().strip()
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/v1/stats", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        stats = json.loads(resp.read())
    say(
        f"    check-ins {stats['checkins']}, coupons redeemed {stats['redemptions']}, "
        f"refused scans {stats['rejected']}"
    )
    for reason, n in stats.get("rejections", {}).items():
        say(f"      refused because {REFUSALS.get(reason, reason)}: {n}")
    stored = [json.loads(x) for x in tool("o2o-bridge", "export", "events").splitlines()]
    say(
        f"    {len(stored)} events stored, each exactly once "
        f"({len({e['id'] for e in stored})} distinct ids)."
    )


if __name__ == "__main__":
    sys.exit(main())
