#!/usr/bin/env bash
# One-time (and idempotent) machine set-up for this repository, used by `make setup`,
# `make test`, `make demo` and `make bench`.
#
# 1. Installs the Debian packages the project needs at run time and in tests
#    (Mosquitto, zbar, Xvfb, CJK fonts, GL for Kivy, PostgreSQL), with apt-get,
#    only when one is missing.
# 2. Creates .venv/ with the system python3 (3.11+) and installs the project with the
#    extras of the machine's role (below), again only when pyproject.toml or the role
#    changed since the last successful install.
#
# O2O_ROLE picks the machine:
#   dev (default)  this repository's tests, demo and benchmarks: `-e .[dev]` (kiosk +
#                  bridge + tools), plus Xvfb and PostgreSQL for the tests.
#   kiosk          a Raspberry Pi at the door: `-e .[kiosk]` only (Kivy, OpenCV, zbar,
#                  GPIO, printer; no web framework, no SQL), with the GL, zbar and CJK
#                  font libraries it runs with; no test database, no virtual screen.
#   bridge         a server for the cloud bridge: `-e .[bridge]` only (FastAPI, SQLAlchemy,
#                  psycopg; no Kivy, OpenCV or GPIO), and no GL, zbar or font packages.
# Every role gets Mosquitto (a shop's or the central broker) and openssl (certificates).
#
# A second run checks and returns in about a second. Details of every install go to
# .venv/setup.log; on failure its tail is printed and the script exits non-zero.
set -euo pipefail

root=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
cd -- "$root"
venv=$root/.venv
log=$venv/setup.log
stamp=$venv/.setup-stamp

role=${O2O_ROLE:-dev}
# Debian package names. Kivy's PyPI wheels bundle SDL2 but load the system GL;
# under Xvfb that is Mesa's software renderer (llvmpipe): libgl1 + libglx-mesa0 +
# libgl1-mesa-dri (EGL alike). libmtdev1 is Kivy's touch input. Checked by starting
# a Kivy app under xvfb-run and taking a screenshot with CJK text. pyzbar loads
# libzbar0; the screens draw Chinese with fonts-noto-cjk. The dev role adds what the
# tests run: Xvfb (the touch UI), x11-utils (xwininfo: where the kiosk's window sits on
# the X screen), PostgreSQL (the bridge's production database), Chromium (the owner's
# dashboard, rendered headless) and systemd (systemd-analyze checks the units in deploy/).
apt_packages=(mosquitto mosquitto-clients openssl)
kiosk_apt_packages=(
    libzbar0
    fonts-noto-cjk
    libgl1 libglx-mesa0 libgl1-mesa-dri libegl1 libegl-mesa0 libmtdev1
)
case $role in
    dev) extras=dev; apt_packages+=("${kiosk_apt_packages[@]}" xvfb xauth x11-utils postgresql chromium systemd) ;;
    kiosk) extras=kiosk; apt_packages+=("${kiosk_apt_packages[@]}") ;;
    bridge) extras=bridge ;;
    *) printf 'setup: O2O_ROLE must be dev, kiosk or bridge (got %s)\n' "$role" >&2; exit 2 ;;
esac

say() { printf 'setup: %s\n' "$*"; }
die() {
    printf 'setup: FAILED: %s\n' "$*" >&2
    if [[ -s ${log:-} ]]; then
        printf -- '--- last lines of %s ---\n' "$log" >&2
        tail -n 30 -- "$log" >&2
    fi
    exit 1
}

# The log lives inside .venv, so it goes where the venv goes (and `make distclean`).
mkdir -p -- "$venv" || die "cannot create $venv"
: >>"$log"

# --- 1. system packages -------------------------------------------------------
missing=()
for pkg in "${apt_packages[@]}"; do
    # `Status: install ok installed` only; a removed-but-configured package is missing.
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed'; then
        missing+=("$pkg")
    fi
done

# Debian's python3 needs python3-venv for `python3 -m venv` (ensurepip).
python=${PYTHON:-python3}
if command -v "$python" >/dev/null && ! "$python" -c 'import ensurepip, venv' 2>/dev/null; then
    missing+=(python3-venv)
fi

if ((${#missing[@]})); then
    command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get here; install them by hand"
    sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null || die "missing ${missing[*]}; run as root or install sudo"
        # -n: never hang on a password prompt without a terminal (CI).
        if [[ -t 0 ]]; then sudo=(sudo); else sudo=(sudo -n); fi
    fi
    say "installing system packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    {
        echo "=== $(date -Is) apt-get update + install ${missing[*]}"
        "${sudo[@]}" apt-get update -q
        "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
    } >>"$log" 2>&1 </dev/null || die "apt-get install ${missing[*]}"
fi

# --- 2. Python virtualenv -------------------------------------------------------
command -v "$python" >/dev/null || die "no $python on PATH (need Python 3.11+)"
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    die "$("$python" -V 2>&1) is too old; need Python 3.11+ (set PYTHON=...)"

if [[ ! -x $venv/bin/python ]] || ! "$venv/bin/python" -c '' 2>/dev/null; then
    say "creating .venv with $("$python" -V 2>&1)"
    # Remove a half-made venv (everything but our log) before building a new one.
    find "$venv" -mindepth 1 -maxdepth 1 ! -name setup.log -exec rm -rf -- {} +
    "$python" -m venv "$venv" >>"$log" 2>&1 </dev/null || die "$python -m venv $venv"
fi

# The stamp names what was installed: pyproject.toml's hash and the interpreter.
want="$(sha256sum pyproject.toml | cut -d' ' -f1) $("$venv/bin/python" -V 2>&1) $extras"
if [[ ! -f $stamp || $(<"$stamp") != "$want" ]]; then
    say "installing Python packages into .venv (log: .venv/setup.log)"
    {
        echo "=== $(date -Is) pip install -e .[$extras]"
        "$venv/bin/python" -m pip install -q --upgrade pip
        "$venv/bin/python" -m pip install -q --progress-bar off -e ".[$extras]"
    } >>"$log" 2>&1 </dev/null || die "pip install -e '.[$extras]'"
    printf '%s' "$want" >"$stamp"
fi

say "ok ($("$venv/bin/python" -V 2>&1), system packages present, .venv up to date)"
