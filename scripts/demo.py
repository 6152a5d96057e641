"""`make demo`: one shop, start to finish, on this machine, told in a shop owner's words.

Sets up a demo shop, starts the message broker and the cloud service, issues the codes
customers would get online, plays a recorded camera session at the door through a
headless kiosk, and shows what reached the owner's dashboard. Then the same shop gets
weeks of history (`o2o-bridge simulate`, through the kiosks' protocol) and stays up
until Ctrl-C: the dashboard with its address printed, and, on a machine with a display,
the kiosk's own window playing the demo codes through a simulated camera. Everything is
kept in `demo-run/` so it can be looked at afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Run as `python scripts/demo.py`: the test tools in `devtools/` are not installed, so the
# repository root goes on the path (the installed packages are found either way).
sys.path.insert(0, str(ROOT))

from devtools.devbroker import DevBroker, free_port, wait_for_port  # noqa: E402
from devtools.replay import write_empty, write_session  # noqa: E402
from o2o_protocol.codes import b64url_decode, b64url_encode  # noqa: E402

RUN = ROOT / "demo-run"
BIN = Path(sys.executable).parent
STEP = 0


def here() -> str:
    """Where the demo's files are, as the person who ran it would type it."""
    try:
        return str(RUN.relative_to(Path.cwd()))
    except ValueError:
        return str(RUN)


def say(text: str) -> None:
    print(text, flush=True)


def step(text: str) -> None:
    global STEP
    STEP += 1
    say(f"\n{STEP}. {text}")


def tool(name: str, *args: str, timeout: float = 120) -> str:
    proc = subprocess.run(
        [str(BIN / name), *args], cwd=RUN, capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        raise SystemExit(f"demo: `{name} {' '.join(args)}` failed:\n{proc.stderr.strip()}")
    return proc.stdout


def issue(kind: str, *args: str) -> str:
    return str(json.loads(tool("o2o-bridge", "issue", kind, *args, "--json"))["code"])


def issued_last_summer(code_id: str, campaign: str) -> str:
    """A coupon that has since expired. `issue` refuses an expiry in the past (a code dead
    on arrival is a mistake), so this one is signed with the shop's key as it was then."""
    from cloud_bridge.config import load_config, load_signing_key
    from o2o_protocol.codes import CodeType, issue_code

    config = load_config(RUN / "bridge.toml")
    then = int(time.time()) - 120 * 86400
    return issue_code(
        load_signing_key(config),
        type=CodeType.COUPON,
        id=code_id,
        store=config.store,
        iat=then,
        exp=then + 30 * 86400,
        cp=campaign,
    )


def forge(token: str) -> str:
    prefix, payload, sig = token.split(".")
    body = json.loads(b64url_decode(payload))
    body["v"] = "¥500 off"
    return f"{prefix}.{b64url_encode(json.dumps(body, ensure_ascii=False).encode())}.{sig}"


REFUSALS = {
    "already_used": "this code was already used",
    "expired": "the code has expired",
    "wrong_store": "the code belongs to another shop",
    "bad_signature": "the code was tampered with (its signature does not match)",
    "unknown_key": "the code was not issued by this shop",
    "malformed": "that is not one of our codes",
    "not_yet_valid": "the code is not valid yet",
    "revoked": "the shop withdrew this code",
    "unknown_order": "the order is not known here",
    "order_not_ready": "the order is not in a locker yet",
    "no_locker_free": "no free locker fits the order",
    "not_allowed": "this kiosk does not take that kind of code",
}


def tell(line: dict[str, Any]) -> str:
    data, kind = line["data"], line["type"]
    match kind:
        case "checkin":
            who = data.get("name") or data["member_id"]
            if not data.get("counted", True):
                return f"  OK  Welcome back {who} (just checked in: no new points)"
            return (
                f"  OK  Member {who} checked in: visit {data['visits']}, "
                f"+{data['points_earned']} points ({data['points']} in total)"
            )
        case "coupon.redeemed":
            return f"  OK  Coupon '{data.get('campaign')}' redeemed: {data.get('value')}"
        case "reservation.arrived":
            timing = str(data.get("timing", "")).replace("_", " ")
            return f"  OK  {data.get('name')} arrived for the {data.get('service')} ({timing})"
        case "staff.login":
            return f"  OK  Staff mode for {data.get('name') or data.get('staff_id')}"
        case "locker.loaded":
            return (
                f"  OK  Order {data['order']} is in locker {data['locker']} (staff shut the door)"
            )
        case "pickup.opened":
            return f"  OK  Locker {data['locker']} opened for order {data['order']}"
        case "pickup.completed":
            return f"  OK  Order {data['order']} picked up; locker {data['locker']} is free again"
        case "pickup.failed":
            return f"  NO  Locker {data.get('locker')} did not open; the order stays ready"
        case "scan.rejected":
            return f"  NO  Refused: {REFUSALS.get(str(line['reason']), line['reason'])}"
    return f"  OK  {kind}"


def main(argv: list[str] | None = None) -> int:
    global RUN
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--weeks", type=int, default=6, help="weeks of history (default 6)")
    args.add_argument("--dir", type=Path, default=RUN, help="where it all goes (demo-run/)")
    opts = args.parse_args(argv)
    RUN, weeks = opts.dir.resolve(), opts.weeks
    marker = RUN / ".o2o-demo"
    if RUN.exists() and any(RUN.iterdir()) and not marker.exists():
        raise SystemExit(
            f"demo: {RUN} is not empty and not an earlier demo's: choose another --dir"
        )
    if RUN.exists():
        shutil.rmtree(RUN)  # an earlier demo's files only (the marker says so)
    RUN.mkdir()
    marker.write_text("made by scripts/demo.py; deleted by its next run\n")
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
    window: subprocess.Popen[bytes] | None = None
    try:
        wait_for_port("127.0.0.1", port, timeout=30, alive=lambda: bridge.poll() is None)
        say(f"    Dashboard: http://127.0.0.1:{port}/  (token in {here()}/dashboard.token)")
        run_door(port)
        history(weeks)
        window = kiosk_window()
        serve(port, bridge, window)
    except KeyboardInterrupt:
        pass
    finally:
        for proc in (window, bridge):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        log.close()
        broker.stop()
    say(f"\nDemo stopped. The settings, codes, camera frames and logs are in {here()}/;")
    say("`make demo` starts afresh any time.")
    return 0


def history(weeks: int) -> None:
    step(f"{weeks} weeks of the same shop's door traffic, sent as its kiosk would.")
    cmd = ["simulate", "--config", "bridge.toml", "--weeks", str(weeks), "--seed", "1"]
    out = tool("o2o-bridge", *cmd, timeout=600)
    for line in out.splitlines():
        say(f"    {line}")


def kiosk_window() -> subprocess.Popen[bytes] | None:
    """On a machine with a display, the kiosk's touch screen, its camera playing new codes
    (a member, a coupon, a booking, then a forged coupon) over and over."""
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        say("    (No display here: on a desktop the kiosk's own window would open too.)")
        return None
    coupon = issue("coupon", "--id", "autumn-001", "--campaign", "autumn", "--value", "¥5 off")
    texts = [
        issue("member", "--id", "hua", "--name", "小华"),
        coupon,
        issue("reservation", "--id", "cut-1500", "--name", "Wang", "--at", "+10m"),
        forge(coupon),
    ]
    write_session(RUN / "window", texts, gap_frames=80)
    step("The kiosk's window: its camera plays new codes over and over (the first round")
    say("    succeeds; later rounds show what a code shown twice gets).")
    log = (RUN / "kiosk-window.log").open("w")
    args = [str(BIN / "o2o-kiosk"), "run", "--config", "kiosk-door1.toml"]
    return subprocess.Popen(
        [*args, "--camera", "window", "--camera-fps", "10"],
        cwd=RUN,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def serve(
    port: int, bridge: subprocess.Popen[bytes], window: subprocess.Popen[bytes] | None
) -> None:
    say(f"\nDashboard with history: http://127.0.0.1:{port}/")
    say(f"    (token in {here()}/dashboard.token; Ctrl-C stops everything)")
    while bridge.poll() is None:
        if window is not None and window.poll() is not None:
            say(f"    The kiosk window closed (exit {window.returncode}; see kiosk-window.log).")
            window = None
        time.sleep(0.5)
    say(f"    The cloud service stopped (exit {bridge.returncode}; see {here()}/bridge.log).")


def api(port: int, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    token = (RUN / "api.token").read_text().strip()
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def kiosk_args(camera: str) -> list[str]:
    return [
        str(BIN / "o2o-kiosk"),
        "run",
        "--headless",
        "--config",
        "kiosk-door1.toml",
        "--camera",
        camera,
    ]


def door_session(name: str, texts: list[str]) -> None:
    """Play a camera session through the headless kiosk, telling each outcome."""
    frames = write_session(RUN / name, texts)
    say(f"    ({len(frames)} camera frames, 640x480, in {here()}/{name}/)")
    with (RUN / "kiosk.log").open("a") as log:
        proc = subprocess.Popen(
            [*kiosk_args(name), "--exit-at-end"],
            cwd=RUN,
            stdout=subprocess.PIPE,
            stderr=log,
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


def bring_online(port: int, upto: int) -> None:
    """Let the kiosk sit online until it has applied the shop's commands up to `upto`."""
    write_empty(RUN / "idle")
    with (RUN / "kiosk.log").open("a") as log:
        proc = subprocess.Popen(kiosk_args("idle"), cwd=RUN, stdout=subprocess.DEVNULL, stderr=log)
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                kiosks = api(port, "GET", "/api/v1/kiosks")["kiosks"]
                status = next((k["status"] for k in kiosks if k["kiosk"] == "door1"), None)
                if status and status.get("last_cmd_seq") == upto:
                    return
                time.sleep(0.2)
            raise SystemExit("demo: the kiosk did not receive the preorder in time")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)


def run_door(port: int) -> None:
    step("Issuing the codes customers got online.")
    member = issue("member", "--id", "ming", "--name", "小明")
    coupon = issue("coupon", "--id", "spring-001", "--campaign", "spring", "--value", "¥10 off")
    expired = issued_last_summer("old-001", "summer")
    foreign = issue("coupon", "--id", "other-001", "--store", "another-shop")
    booking = issue(
        "reservation", "--id", "cut-1030", "--name", "Li", "--service", "haircut", "--at", "+5m"
    )
    say("    A member code for 小明, a ¥10 spring coupon, last summer's expired coupon, a")
    say("    coupon from another shop and a haircut booking. At the door the spring coupon is")
    say("    shown twice, someone shows a copy edited to say ¥500, and someone a web-page QR.")
    (RUN / "codes.json").write_text(
        json.dumps(
            {
                "member": member,
                "coupon": coupon,
                "expired": expired,
                "other_shop": foreign,
                "reservation": booking,
            },
            indent=2,
        )
    )

    step("Customers show their codes at the door; the kiosk decides and records each first.")
    door_session(
        "camera",
        [
            member,
            coupon,
            coupon,
            expired,
            foreign,
            booking,
            forge(coupon),
            "https://example.com/hi",
        ],
    )

    step("An online preorder: the shop's website tells the kiosk, staff load a locker.")
    seq = api(
        port,
        "POST",
        "/api/v1/kiosks/door1/commands",
        {"name": "preorder.upsert", "data": {"order": "A17", "size": "M", "name": "Li"}},
    )
    bring_online(port, int(seq["seq"]))
    staff = issue("staff", "--id", "zhang", "--name", "Zhang")
    pickup = issue("pickup", "--id", "pick-a17", "--order", "A17")
    say("    Order A17 reached the kiosk. Staff show their code, then the order's pickup code:")
    door_session("staff", [staff, pickup])

    step("The customer picks up order A17 with the code on their phone.")
    door_session("pickup", [pickup])
    say("    Later the same code is shown again:")
    door_session("pickup-again", [pickup])

    step("What the owner sees in the cloud service (today's figures).")
    stats = api(port, "GET", "/api/v1/stats")
    say(
        f"    check-ins {stats['checkins']}, coupons redeemed {stats['redemptions']}, "
        f"reservations {stats['reservations']}, pickups {stats['pickups']}, "
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
