"""The install extras keep the appliance and the service apart.

`pip install .[kiosk]` must bring no web framework, SQL toolkit or database driver, and
`pip install .[bridge]` no Kivy, OpenCV, GPIO, QR decoder or other appliance part. The
project's own requirements are read from `pyproject.toml` (the source, so a stale
editable install cannot hide a change); everything they pull in is followed through the
installed distributions' `Requires-Dist` metadata, with markers evaluated for this
machine and for the extras asked for. Offline: nothing is downloaded.

A second check reads the source: every third-party module that `kiosk/` (or
`cloud_bridge/`) imports must come from a distribution in its own closure, so a new
import cannot work in the dev environment only because the other side's extra is there.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import sys
import tomllib
from collections.abc import Iterable
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
NAME = canonicalize_name(PROJECT["name"])

#: What a kiosk must not install: web frameworks and servers, SQL toolkits, DB drivers.
NOT_ON_A_KIOSK = {
    "fastapi", "starlette", "uvicorn", "gunicorn", "hypercorn", "flask", "django",
    "werkzeug", "sanic", "aiohttp", "tornado", "python-multipart",
    "sqlalchemy", "alembic", "sqlmodel", "peewee", "greenlet",
    "psycopg", "psycopg-binary", "psycopg-c", "psycopg-pool", "psycopg2",
    "psycopg2-binary", "asyncpg", "pymysql", "mysqlclient", "aiosqlite",
}  # fmt: skip
#: What a server must not install: the touch UI, computer vision, GPIO, QR decoders, the
#: printer and the kiosk's local store. NumPy alone is fair game for a service (figures),
#: so it is not listed; today the bridge pulls it in through nothing.
NOT_ON_A_SERVER = {
    "kivy", "kivy-garden", "pygame", "pysdl2",
    "opencv-python", "opencv-python-headless", "opencv-contrib-python",
    "opencv-contrib-python-headless",
    "gpiozero", "colorzero", "rpi-gpio", "rpi-lgpio", "lgpio", "pigpio", "picamera2",
    "pyzbar", "zxing-cpp", "pyserial", "python-escpos", "tinydb", "freetype-py",
}  # fmt: skip
#: Prefixes of families of distributions (kivy-deps-sdl2, opencv-*, ...).
NOT_ON_A_SERVER_PREFIXES = ("kivy", "opencv")


def _project_requirements(extras: Iterable[str]) -> list[Requirement]:
    """The project's own requirements for `extras`, from pyproject.toml (self-references
    such as `o2o-kiosk[kiosk,bridge]` in `dev` are followed in the same file)."""
    optional: dict[str, list[str]] = PROJECT.get("optional-dependencies", {})
    wanted = list(extras)
    seen: set[str] = set()
    found = [Requirement(r) for r in PROJECT["dependencies"]]
    while wanted:
        extra = wanted.pop()
        if extra in seen:
            continue
        seen.add(extra)
        assert extra in optional, f"pyproject.toml has no extra {extra!r}"
        for text in optional[extra]:
            req = Requirement(text)
            if canonicalize_name(req.name) == NAME:
                wanted.extend(req.extras)
            else:
                found.append(req)
    return found


def _applies(req: Requirement, extras: Iterable[str]) -> bool:
    if req.marker is None:
        return True
    env = default_environment()
    return any(req.marker.evaluate({**env, "extra": e}) for e in ("", *extras))


def closure(extras: Iterable[str]) -> dict[NormalizedName, str]:
    """Every distribution `pip install .[extras]` brings, each with who pulled it in.

    Fails when a needed distribution is not installed here: the answer would be partial.
    """
    pulled_by: dict[NormalizedName, str] = {}
    todo: list[tuple[Requirement, str]] = [
        (r, PROJECT["name"]) for r in _project_requirements(extras) if _applies(r, ())
    ]
    done: set[tuple[NormalizedName, frozenset[str]]] = set()
    missing: list[str] = []
    while todo:
        req, parent = todo.pop()
        name = canonicalize_name(req.name)
        key = (name, frozenset(req.extras))
        if key in done:
            continue
        done.add(key)
        pulled_by.setdefault(name, parent)
        try:
            dist = md.distribution(req.name)
        except md.PackageNotFoundError:
            missing.append(f"{req} (needed by {parent})")
            continue
        for text in dist.requires or ():
            sub = Requirement(text)
            if _applies(sub, req.extras):
                todo.append((sub, str(name)))
    assert not missing, "not installed here, cannot follow: " + ", ".join(sorted(missing))
    return pulled_by


def _forbidden_on_server(name: str) -> bool:
    return name in NOT_ON_A_SERVER or name.startswith(NOT_ON_A_SERVER_PREFIXES)


@pytest.fixture(scope="module")
def kiosk_closure() -> dict[NormalizedName, str]:
    return closure(["kiosk"])


@pytest.fixture(scope="module")
def bridge_closure() -> dict[NormalizedName, str]:
    return closure(["bridge"])


def test_a_kiosk_installs_no_web_framework_sql_or_database_driver(kiosk_closure) -> None:
    # The closure really is the appliance's (a typo in an extra's name would give []).
    assert {"kivy", "opencv-python-headless", "tinydb", "gpiozero", "paho-mqtt"} <= set(
        kiosk_closure
    )
    bad = {n: by for n, by in kiosk_closure.items() if n in NOT_ON_A_KIOSK}
    assert not bad, f"[kiosk] pulls in service packages (name: pulled in by): {bad}"


def test_a_server_installs_no_ui_vision_gpio_or_decoder(bridge_closure) -> None:
    assert {"fastapi", "uvicorn", "sqlalchemy", "psycopg", "paho-mqtt"} <= set(bridge_closure)
    bad = {n: by for n, by in bridge_closure.items() if _forbidden_on_server(n)}
    assert not bad, f"[bridge] pulls in appliance packages (name: pulled in by): {bad}"


def test_the_base_install_is_the_protocol_only() -> None:
    base = closure([])
    assert {"pydantic", "cryptography", "paho-mqtt", "uuid6"} <= set(base)
    bad = sorted(n for n in base if n in NOT_ON_A_KIOSK or _forbidden_on_server(n))
    assert not bad, f"the base dependencies pull in one side's packages: {bad}"


def test_dev_is_both_sides_plus_tools(kiosk_closure, bridge_closure) -> None:
    dev = closure(["dev"])
    assert set(kiosk_closure) | set(bridge_closure) <= set(dev)
    assert {"pytest", "ruff", "mypy", "packaging", "setuptools", "amqtt"} <= set(dev)


def test_only_the_runtime_packages_are_installed() -> None:
    """devtools/, tests/, bench/ and scripts/ stay in the repository."""
    from setuptools import find_packages

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    find = pyproject["tool"]["setuptools"]["packages"]["find"]
    packages = find_packages(
        str(ROOT), include=find.get("include", ("*",)), exclude=find.get("exclude", ())
    )
    assert {p.split(".")[0] for p in packages} == {"o2o_protocol", "kiosk", "cloud_bridge"}


def _third_party_imports(package: str) -> dict[str, str]:
    """Top-level third-party module -> first place it is imported in `package`."""
    own = {"o2o_protocol", "kiosk", "cloud_bridge"}
    found: dict[str, str] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in own or top in sys.stdlib_module_names or top == "__future__":
                    continue
                found.setdefault(top, f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


#: Modules that are not on PyPI for this purpose: Raspberry Pi OS ships picamera2 as the
#: Debian package python3-picamera2, and the kiosk falls back to OpenCV without it.
SYSTEM_MODULES = {"picamera2"}


@pytest.mark.parametrize(
    ("packages", "extra"),
    [
        (("o2o_protocol",), None),
        (("o2o_protocol", "kiosk"), "kiosk"),
        (("cloud_bridge",), "bridge"),
    ],
)
def test_every_third_party_import_is_in_its_own_extra(packages, extra) -> None:
    have = set(closure([extra] if extra else []))
    by_module = md.packages_distributions()
    wrong = []
    for package in packages:
        for module, where in _third_party_imports(package).items():
            if module in SYSTEM_MODULES:
                continue
            dists = {canonicalize_name(d) for d in by_module.get(module, [])}
            if not dists & have:
                wrong.append(f"{where}: {module} (from {sorted(dists) or 'nothing installed'})")
    side = f"[{extra}]" if extra else "the base dependencies"
    assert not wrong, f"imported but not brought by {side}:\n" + "\n".join(wrong)
