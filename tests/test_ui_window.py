"""The kiosk's window on real displays, and its text in the Chinese face.

Each display size gets its own Xvfb with no window manager, as on a kiosk: the window must
cover the screen exactly (not Kivy's default 800x600 hanging off it), with the start
screen's buttons inside it. The driver (`python -m tests.test_ui_window CONFIG OUT`) runs
the real app full screen and reports what the X server and Kivy say.

A second kiosk on the same data must refuse before it opens any window.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.keys import Issuer
from tests.support import find_program, free_port, missing_component

REPO = Path(__file__).resolve().parent.parent
#: Chinese characters whose Japanese forms differ visibly from the Simplified Chinese ones.
HANZI = "返过直令"
SIZES = [(800, 480), (1024, 600), (600, 1024)]


# --- the driver, in the app's process ---------------------------------------------------


def _drive(config_path: Path, out: Path) -> dict[str, Any]:
    from kiosk.config import load_config
    from kiosk.runtime import KioskRuntime
    from kiosk.ui import create_app, open_window

    if not open_window():
        raise SystemExit("driver: no display")
    import numpy as np
    from kivy.clock import Clock
    from kivy.core.text import Label as CoreLabel
    from kivy.core.window import Window
    from kivy.uix.button import Button

    from tests.kivy_driver import on_ui, screenshot, settled, wait_for

    app, session = create_app(KioskRuntime(load_config(config_path)))
    report: dict[str, Any] = {}

    def window_state() -> dict[str, Any]:
        start = app.root.get_screen("start")
        buttons = [w for w in start.walk() if isinstance(w, Button) and w.opacity > 0]
        rects = []
        for b in buttons:
            x0, y0 = b.to_window(b.x, b.y)
            x1, y1 = b.to_window(b.right, b.top)
            rects.append([x0, y0, x1, y1, b.text])
        return {"size": list(Window.size), "buttons": rects}

    def hanzi() -> str:
        label = CoreLabel(text=HANZI, font_size=64)
        label.refresh()
        texture = label.texture
        pixels = np.frombuffer(texture.pixels, np.uint8).reshape(texture.height, texture.width, 4)
        path = out / "hanzi.npy"
        np.save(path, pixels[..., 3])
        return str(path)

    def scenario() -> None:
        try:
            wait_for("the start screen", lambda: app.root.current == "start")
            settled(app)
            report.update(on_ui(window_state))
            xwininfo = find_program("xwininfo")
            if xwininfo is not None:
                tree = subprocess.run(
                    [xwininfo, "-root", "-children"], capture_output=True, text=True, check=True
                ).stdout
                report["x_windows"] = re.findall(r"\s(\d+)x(\d+)([+-]\d+)([+-]\d+)\s", tree)
            report["shot"] = screenshot(app, out / "start.png")
            report["hanzi"] = on_ui(hanzi)
        except BaseException:
            report["error"] = traceback.format_exc()
        finally:
            Clock.schedule_once(lambda _dt: app.stop())

    import threading

    app.bind(on_start=lambda *_: threading.Thread(target=scenario, daemon=True).start())
    app.run()
    session.stop()
    return report


def _driver_main(argv: list[str]) -> int:
    config_path, out = Path(argv[0]), Path(argv[1])
    report = _drive(config_path, out)
    (out / "report.json").write_text(json.dumps(report, ensure_ascii=False, indent=1))
    return 1 if "error" in report else 0


# --- the tests, in pytest's process -------------------------------------------------------


def _write_config(directory: Path) -> Path:
    issuer = Issuer()
    keys = "\n".join(f'{kid} = "{key}"' for kid, key in issuer.config_keys.items())
    path = directory / "kiosk-k1.toml"
    path.write_text(
        f'store = "{issuer.store}"\nkiosk = "k1"\ndata_dir = "data"\n\n[keys]\n{keys}\n\n'
        f'[mqtt]\nurl = "mqtt://127.0.0.1:{free_port()}"\n\n[ui]\nlanguage = "zh_CN"\n',
        encoding="utf-8",
    )
    (directory / "data").mkdir(exist_ok=True)
    return path


@contextlib.contextmanager
def _xvfb(width: int, height: int) -> Iterator[str]:
    """An X server of this size and nothing else on it (no window manager)."""
    xvfb = find_program("Xvfb")
    if xvfb is None:
        missing_component("Xvfb", "apt-get install xvfb xauth, or run scripts/setup.sh")
        raise AssertionError("unreachable")
    read_fd, write_fd = os.pipe()
    screen = f"{width}x{height}x24"
    proc = subprocess.Popen(
        [xvfb, "-displayfd", str(write_fd), "-screen", "0", screen, "-nolisten", "tcp"],
        pass_fds=(write_fd,),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        number = pipe.readline().strip()
    try:
        assert number.isdigit(), f"Xvfb {screen} did not start"
        yield f":{number}"
    finally:
        proc.terminate()
        proc.wait(5)


def _env(display: str, home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("O2O_UI_WINDOW", None)  # full screen, as at the door
    env.update(
        DISPLAY=display,
        SDL_VIDEODRIVER="x11",
        KIVY_NO_ARGS="1",
        KIVY_NO_CONSOLELOG="1",
        KIVY_WINDOW="sdl2",
        KIVY_HOME=str(home),
        LIBGL_ALWAYS_SOFTWARE="1",
        PYTHONPATH=str(REPO),
    )
    return env


def _need_kivy() -> None:
    if importlib.util.find_spec("kivy") is None:
        missing_component("Kivy", "pip install -e '.[kiosk]', or run scripts/setup.sh")


@pytest.fixture(scope="module", params=SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def on_display(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """The app run full screen on a display of one size; its report."""
    _need_kivy()
    if find_program("xwininfo") is None:
        missing_component("xwininfo", "apt-get install x11-utils, or run scripts/setup.sh")
    width, height = request.param
    out = tmp_path_factory.mktemp(f"window-{width}x{height}")
    config = _write_config(out)
    with _xvfb(width, height) as display:
        proc = subprocess.run(
            [sys.executable, "-m", "tests.test_ui_window", str(config), str(out)],
            cwd=REPO,
            env=_env(display, out / "kivy-home"),
            capture_output=True,
            text=True,
            timeout=90,
        )
    report_path = out / "report.json"
    if not report_path.exists():
        pytest.fail(f"the window driver crashed (status {proc.returncode}):\n{proc.stderr[-4000:]}")
    report: dict[str, Any] = json.loads(report_path.read_text(encoding="utf-8"))
    assert "error" not in report, f"{report['error']}\n{proc.stderr[-3000:]}"
    report["screen"] = (width, height)
    return report


def test_the_window_covers_the_display_exactly(on_display: dict[str, Any]) -> None:
    import cv2

    width, height = on_display["screen"]
    assert tuple(on_display["size"]) == (width, height)
    # What the X server says: Kivy's default 800x600 hung 60 px above a 800x480 screen.
    [(w, h, x, y)] = on_display["x_windows"]
    assert (int(w), int(h), int(x), int(y)) == (width, height, 0, 0)
    shot = cv2.imread(on_display["shot"])
    assert shot.shape[:2] == (height, width)


def test_every_start_button_is_inside_the_window(on_display: dict[str, Any]) -> None:
    width, height = on_display["screen"]
    buttons = on_display["buttons"]
    assert buttons, "the start screen shows buttons"
    lowest = min(buttons, key=lambda b: b[1])
    for x0, y0, x1, y1, text in buttons:
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height, (text, (x0, y0, x1, y1))
    assert lowest[1] >= 0, f"the bottom button {lowest[4]!r} is cut off"


def _ink(alpha: Any) -> Any:
    """The glyphs' ink, cropped to its bounding box, as booleans."""
    import numpy as np

    mask = alpha > 96
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def _distance(ours: Any, reference: Any) -> float:
    """Share of differing pixels once both are scaled to the same box (either row order:
    a texture may be stored bottom-up)."""
    import cv2
    import numpy as np

    size = (reference.shape[1], reference.shape[0])
    scaled = cv2.resize(ours.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
    return float(min(np.mean(scaled != reference), np.mean(scaled[::-1] != reference)))


def test_chinese_renders_with_the_simplified_chinese_face(on_display: dict[str, Any]) -> None:
    """返过直令 from the kiosk's default font match the SC face of the collection drawn
    directly (by Pillow), and not the JP face that comes first in it."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    from kiosk.screens.fonts import chinese_face_index, find_cjk_font

    font = find_cjk_font()
    if font is None:
        missing_component("a CJK font", "apt-get install fonts-noto-cjk, or scripts/setup.sh")
        raise AssertionError("unreachable")
    index = chinese_face_index(font)
    if index == 0:
        pytest.skip(f"{font} has no separate Simplified Chinese face")

    def draw(face: int) -> Any:
        ttf = ImageFont.truetype(str(font), 64, index=face)
        image = Image.new("L", (400, 120))
        ImageDraw.Draw(image).text((10, 10), HANZI, font=ttf, fill=255)
        return _ink(np.asarray(image))

    ours = _ink(np.load(on_display["hanzi"]))
    to_sc, to_jp = _distance(ours, draw(index)), _distance(ours, draw(0))
    assert to_sc < 0.05, f"our 返过直令 differ from the SC face's by {to_sc:.1%}"
    assert to_jp > 2 * to_sc, f"JP {to_jp:.1%} vs SC {to_sc:.1%}: the faces look alike"


#: Draws 400 characters a door has not shown before, in both weights and two sizes, in a
#: fresh process; prints the growth of resident memory and whether the font is mapped.
NEW_NAMES = """
import json, os, random
import numpy  # what drawing a glyph imports, before the first reading
from kiosk.screens import fonts

def resident():
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return sum(int(fields[k].split()[0]) for k in ("RssAnon", "RssFile")) / 1024

regular = fonts.find_cjk_font()
bold = fonts._bold_of(regular) or regular
paths = [str(regular), str(bold)]
for path in paths:
    fonts._face_index[path] = fonts.chinese_face_index(path)
before = resident()
rng = random.Random(7)
for char in {chr(rng.randint(0x4E00, 0x9FA5)) for _ in range(400)}:
    for path in paths:
        for size in (24, 48):
            fonts._glyph(path, size, char)
files = tuple(os.path.realpath(path) for path in paths)  # the maps name the real file
mapped = [line for line in open("/proc/self/maps") if line.rstrip().endswith(files)]
print(json.dumps({"grew_mb": resident() - before, "mapped": mapped}))
"""


def test_new_names_do_not_keep_more_of_the_font_in_memory() -> None:
    """A shop's door sees new names for weeks: drawing their characters must not keep page
    after page of the 19 MB CJK font resident (mapped, 400 new characters kept 21 MB)."""
    from kiosk.screens.fonts import find_cjk_font

    if find_cjk_font() is None:
        missing_component("a CJK font", "apt-get install fonts-noto-cjk, or scripts/setup.sh")
    proc = subprocess.run(
        [sys.executable, "-c", NEW_NAMES], capture_output=True, text=True, timeout=120, check=True
    )
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["mapped"] == [], "the font file is memory-mapped"
    # The faces' tables (about 4.5 MB) plus 1,600 small bitmaps in the glyph cache.
    assert report["grew_mb"] < 10, f"drawing new characters kept {report['grew_mb']:.1f} MB"


# --- a second kiosk on the same data ---------------------------------------------------------


def test_a_second_kiosk_on_the_same_data_refuses_before_any_window(
    xvfb_display: str,
) -> None:
    """One clear line and a failing status, with no window (Kivy never even imported: its
    home directory stays empty) and no C++ abort at exit."""
    _need_kivy()
    from kiosk.config import load_config
    from kiosk.localdb import KioskDB

    with tempfile.TemporaryDirectory(prefix="o2o-second-") as tmp:
        directory = Path(tmp)
        config = _write_config(directory)
        camera = directory / "camera"  # no images: the kiosk must stop before reading any
        camera.mkdir()
        cfg = load_config(config)
        first = KioskDB(cfg.data_dir, store=cfg.store, kiosk=cfg.kiosk)  # the running kiosk
        try:
            started = time.monotonic()
            command = [sys.executable, "-m", "kiosk.cli", "run", "--config", str(config)]
            proc = subprocess.run(
                [*command, "--camera", str(camera)],
                cwd=REPO,
                env=_env(xvfb_display, directory / "kivy-home"),
                capture_output=True,
                text=True,
                timeout=60,
            )
        finally:
            first.close()
        took = time.monotonic() - started
        kivy_started = (directory / "kivy-home").exists()
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert errors == [f"o2o-kiosk: error: {cfg.data_dir} is in use by another kiosk process"]
    assert "terminate called" not in proc.stderr
    assert not kivy_started, "Kivy started: a window may have opened"
    assert took < 30


if __name__ == "__main__":
    sys.exit(_driver_main(sys.argv[1:]))
