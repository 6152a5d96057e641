"""The shop-door kiosk: scans codes, decides, records durably, syncs to the bridge."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("o2o-kiosk")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0"
