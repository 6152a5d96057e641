"""The touch UI's memory over a long day: peak RSS after start and after 1,000 scans.

The real app (`kiosk.ui.create_app` with a real `KioskRuntime`, offline: its broker URL
points at a closed port) runs under its own Xvfb at 800x480. Signed member codes and
coupons go in through the scan path (`Session.submit`, as a camera's reads do); every
scan shows its result screen and every second one goes back to the start screen, so the
run makes as many screen changes as scans. The fade is shortened to 0.05 s to keep the
run short: what it allocates per change does not depend on its length.

Baseline, in the same run: a bare Kivy window in a process that imported the same
libraries (the kiosk, its screens, Kivy) and drew a few frames.

Run from the repository root: ``python -m bench.bench_ui [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

SCANS = 1000
QUICK_SCANS = 200
#: The Raspberry Pi 7" display (fewer pixels for the software GL of Xvfb to draw, too).
SCREEN = (800, 480)
GOAL_GROWTH_MB = 10.0
GOAL_PEAK_MB = 200.0
#: The fade during the run (the kiosk's own is 0.15 s).
BENCH_FADE_S = 0.05
REPO = Path(__file__).resolve().parent.parent


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _peak_mb() -> float:
    """This program's peak RSS. Not `ru_maxrss`: Linux carries that over from the process
    that forked this one, so under `make bench` every child would report the parent's
    peak (the insights bench's, some 750 MB). `VmHWM` starts anew with the program."""
    return _status_mb("VmHWM")


def _rss_mb() -> float:
    return _status_mb("VmRSS")


def _rss_split_mb() -> dict[str, float]:
    """Resident memory now by kind: anonymous (heap, Python objects, textures) and
    file-backed (libraries' code, the CJK font's pages; shared with the page cache)."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("RssAnon", "RssFile", "RssShmem"):
            out[key] = int(value.split()[0]) / 1024
    return out


def _import_kiosk() -> None:
    """What the kiosk's UI process imports, for both children alike."""
    import kiosk.runtime
    import kiosk.screens.app
    import kiosk.ui  # noqa: F401


# --- the children (one Kivy window per process) ---------------------------------------------


def _bare() -> dict[str, Any]:
    from kiosk.ui import _configure_window, _prepare_kivy

    _prepare_kivy()
    _configure_window()
    _import_kiosk()
    from kivy.app import App
    from kivy.clock import Clock
    from kivy.uix.widget import Widget

    split: dict[str, float] = {}

    class Bare(App):  # type: ignore[misc]
        def build(self) -> Any:
            Clock.schedule_once(lambda _dt: split.update(_rss_split_mb()), 1.9)
            Clock.schedule_once(lambda _dt: self.stop(), 2.0)  # a couple of seconds of frames
            return Widget()

    Bare().run()
    return {"peak_mb": _peak_mb(), "rss_mb": _rss_mb(), "split": split}


def _kiosk(config: Path, codes: list[str]) -> dict[str, Any]:
    from kiosk.config import load_config
    from kiosk.runtime import KioskRuntime
    from kiosk.ui import create_app, open_window

    if not open_window():
        raise SystemExit("bench_ui: no display")
    _import_kiosk()
    from kivy.clock import Clock

    kiosk = KioskRuntime(load_config(config))
    app, session = create_app(kiosk)
    report: dict[str, Any] = {}
    shown = [0]
    lock = threading.Condition()
    show = app.show_outcome

    show_ms: list[float] = []

    def counted(outcome: Any) -> None:
        t0 = time.perf_counter()
        show(outcome)
        show_ms.append((time.perf_counter() - t0) * 1e3)
        with lock:
            shown[0] += 1
            lock.notify_all()

    app.show_outcome = counted

    def on_ui(fn: Any) -> Any:
        done, box = threading.Event(), {}

        def call(_dt: float) -> None:
            box["value"] = fn()
            done.set()

        Clock.schedule_once(call)
        if not done.wait(10):
            raise TimeoutError("the UI thread did not answer within 10 s")
        return box["value"]

    def wait_screen(name: str) -> None:
        deadline = time.monotonic() + 10
        while not on_ui(lambda: app.root.current == name and not app.root.transition.is_active):
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited 10 s for the {name} screen")
            time.sleep(0.005)

    def scenario() -> None:
        try:
            wait_screen("start")
            time.sleep(1.0)  # the first frames drawn, the kiosk's threads up
            report["start_peak_mb"], report["start_rss_mb"] = _peak_mb(), _rss_mb()
            report["start_split"] = _rss_split_mb()
            on_ui(lambda: setattr(app.root.transition, "duration", BENCH_FADE_S))
            started, changes = time.monotonic(), 0
            shown_ms: list[float] = []
            for i, code in enumerate(codes):
                before, t0 = shown[0], time.monotonic()
                session.submit(code)
                with lock:
                    if not lock.wait_for(lambda before=before: shown[0] > before, 10):
                        raise TimeoutError(f"scan {i} showed nothing within 10 s")
                shown_ms.append((time.monotonic() - t0) * 1e3)
                changes += i % 2 == 0  # the first of two scans: start -> result
                if i % 2:  # the second scan replaced the first's result: now back home
                    wait_screen("result")
                    on_ui(app.go_home)
                    wait_screen("start")
                    changes += 1
            report["run_s"] = time.monotonic() - started
            report["scan_to_screen_ms_p50"] = sorted(shown_ms)[len(shown_ms) // 2]
            report["show_ms_p50"] = sorted(show_ms)[len(show_ms) // 2]
            report["scans"], report["screen_changes"] = len(codes), changes
            time.sleep(0.5)
            report["end_peak_mb"], report["end_rss_mb"] = _peak_mb(), _rss_mb()
            report["end_split"] = _rss_split_mb()
            # The kiosk's database lives in memory too (its outbox grows while offline).
            files = kiosk.cfg.data_dir.glob("*")
            report["data_mb"] = sum(f.stat().st_size for f in files if f.is_file()) / 2**20
        except BaseException as exc:
            report["error"] = repr(exc)
        finally:
            Clock.schedule_once(lambda _dt: app.stop())

    app.bind(on_start=lambda *_: threading.Thread(target=scenario, daemon=True).start())
    app.run()
    session.stop()
    return report


def _child_main(argv: list[str]) -> int:
    if argv[0] == "bare":
        result = _bare()
    else:
        config = Path(argv[1])
        codes = json.loads((config.parent / "codes.json").read_text(encoding="utf-8"))
        result = _kiosk(config, codes)
    print("BENCH_UI " + json.dumps(result))
    return 1 if "error" in result else 0


# --- the parent ----------------------------------------------------------------------------


def _start_xvfb(size: tuple[int, int]) -> tuple[subprocess.Popen[bytes], str]:
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        raise SystemExit("bench_ui: Xvfb is missing (apt-get install xvfb, or scripts/setup.sh)")
    read_fd, write_fd = os.pipe()
    proc = subprocess.Popen(
        [
            xvfb,
            "-displayfd",
            str(write_fd),
            "-screen",
            "0",
            f"{size[0]}x{size[1]}x24",
            "-nolisten",
            "tcp",
        ],
        pass_fds=(write_fd,),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        number = pipe.readline().strip()
    if not number.isdigit():
        proc.kill()
        raise SystemExit("bench_ui: Xvfb did not start")
    return proc, f":{number}"


def _child(args: list[str], env: dict[str, str]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.bench_ui", "--child", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("BENCH_UI "):
            result: dict[str, Any] = json.loads(line.removeprefix("BENCH_UI "))
            if "error" in result:
                raise RuntimeError(f"bench_ui {args[0]}: {result['error']}\n{proc.stderr[-2000:]}")
            return result
    raise RuntimeError(f"bench_ui {args[0]} crashed ({proc.returncode}):\n{proc.stderr[-3000:]}")


def run(quick: bool = False) -> dict[str, Any]:
    """Both children under one Xvfb; returns plain figures (MB, seconds)."""
    # Here, not at the top: the children import this module, and what the bench itself
    # needs (the code corpus, numpy's random) must not count as the kiosk's memory.
    from bench.bench_latency import _codes, _config

    scans = QUICK_SCANS if quick else SCANS
    xvfb, display = _start_xvfb(SCREEN)
    try:
        with tempfile.TemporaryDirectory(prefix="o2o-bench-ui-") as tmp:
            key = Ed25519PrivateKey.generate()
            config = _config(Path(tmp), key)
            (Path(tmp) / "codes.json").write_text(json.dumps(_codes(key, scans)))
            env = dict(os.environ)
            env.update(
                DISPLAY=display,
                SDL_VIDEODRIVER="x11",
                KIVY_HOME=str(Path(tmp) / "kivy-home"),
                KIVY_NO_ARGS="1",
                KIVY_NO_CONSOLELOG="1",
                LIBGL_ALWAYS_SOFTWARE="1",
                PYTHONPATH=str(REPO),
            )
            env.pop("O2O_UI_WINDOW", None)  # the window covers the display, as at the door
            bare = _child(["bare"], env)
            ui = _child(["kiosk", str(config)], env)
    finally:
        xvfb.terminate()
        xvfb.wait(5)
    growth = ui["end_peak_mb"] - ui["start_peak_mb"]
    return {
        "screen": f"{SCREEN[0]}x{SCREEN[1]}",
        "scans": ui["scans"],
        "screen_changes": ui["screen_changes"],
        "run_s": ui["run_s"],
        "scan_to_screen_ms_p50": ui["scan_to_screen_ms_p50"],
        "show_ms_p50": ui["show_ms_p50"],
        "bare_peak_mb": bare["peak_mb"],
        "start_peak_mb": ui["start_peak_mb"],
        "end_peak_mb": ui["end_peak_mb"],
        "end_rss_mb": ui["end_rss_mb"],
        "data_mb": ui["data_mb"],
        "growth_mb": growth,
        "over_bare_mb": ui["start_peak_mb"] - bare["peak_mb"],
        "split": {"bare": bare["split"], "start": ui["start_split"], "end": ui["end_split"]},
        "goal_growth_mb": GOAL_GROWTH_MB,
        "goal_peak_mb": GOAL_PEAK_MB,
        "target_met": growth <= GOAL_GROWTH_MB and ui["end_peak_mb"] <= GOAL_PEAK_MB,
    }


def print_table(results: dict[str, Any]) -> None:
    """Peak RSS after start and after the run, beside the bare window's."""
    r = results
    print(
        f"Touch UI memory: {r['scans']} scans, {r['screen_changes']} screen changes under "
        f"Xvfb {r['screen']} in {r['run_s']:.0f} s (scan to screen p50 "
        f"{r['scan_to_screen_ms_p50']:.0f} ms, of which the UI thread "
        f"{r['show_ms_p50']:.0f} ms); peak RSS (MB)"
    )
    print(f"{'bare Kivy window, same imports (baseline)':<44}{r['bare_peak_mb']:>8.1f}")
    print(f"{'kiosk UI after start':<44}{r['start_peak_mb']:>8.1f}")
    print(f"{'kiosk UI after the run':<44}{r['end_peak_mb']:>8.1f}")
    print(
        f"growth {r['growth_mb']:.1f} MB (goal <= {r['goal_growth_mb']:.0f}), "
        f"{r['over_bare_mb']:.1f} MB over the bare window at start; the kiosk's data "
        f"(offline outbox included) {r['data_mb']:.1f} MB on disk after the run"
    )
    split = r["split"]
    print(
        "resident now, anonymous / file-backed (MB): "
        + ", ".join(
            f"{name} {split[key].get('RssAnon', 0):.1f} / {split[key].get('RssFile', 0):.1f}"
            for key, name in (("bare", "bare"), ("start", "after start"), ("end", "after the run"))
        )
    )
    verdict = "OK" if r["target_met"] else "MISSED"
    print(
        f"target: growth <= {r['goal_growth_mb']:.0f} MB, peak <= {r['goal_peak_mb']:.0f} MB "
        f"{verdict}"
    )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        sys.exit(_child_main(sys.argv[2:]))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_SCANS} scans, not {SCANS}")
    args = parser.parse_args()
    print_table(run(quick=args.quick))


if __name__ == "__main__":
    main()
