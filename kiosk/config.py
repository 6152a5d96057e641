"""The kiosk's config file (`kiosk-<ID>.toml`, written by `o2o-bridge init`).

Validated with pydantic and `extra="forbid"`: a misspelt key stops the kiosk at start-up
with one clear line instead of being silently ignored on a shop's door.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import (
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from o2o_protocol.codes import key_id, load_public_key
from o2o_protocol.config_file import (
    ConfigSection,
    MqttConnection,
    load_toml,
    resolve_path,
)
from o2o_protocol.hours import shop_zone
from o2o_protocol.messages import check_id

_Section = ConfigSection
CodeLetter = Literal["m", "c", "p", "s", "r"]
ALL_CODE_TYPES: tuple[CodeLetter, ...] = ("m", "c", "p", "s", "r")
_resolve = resolve_path


class MqttSection(MqttConnection):
    #: Events per published batch while draining a backlog.
    batch_size: Annotated[int, Field(ge=1, le=1000)] = 500
    #: Un-acked events are published again after this long.
    resend_after_s: Annotated[float, Field(gt=0)] = 10.0


class RulesSection(_Section):
    points_per_visit: Annotated[int, Field(ge=0, le=10_000)] = 10
    #: Count at most one check-in (and its points) per member per day.
    once_per_day: bool = False
    #: A member code shown again within this many minutes earns no new visit or points
    #: (showing a phone twice at the door is not two visits).
    checkin_cooldown_min: Annotated[float, Field(ge=0, le=24 * 60)] = 60.0
    #: The same code seen again within this window is the same scan, not a new one.
    quiet_window_s: Annotated[float, Field(ge=0, le=60)] = 3.0
    reservation_early_min: Annotated[int, Field(ge=0)] = 15
    reservation_late_min: Annotated[int, Field(ge=0)] = 15
    #: Code types this kiosk serves (m member, c coupon, p pickup, s staff, r reservation);
    #: others are refused with `not_allowed` (a shop without lockers drops "p").
    accept: list[CodeLetter] = Field(default_factory=lambda: list(ALL_CODE_TYPES))
    #: How long a staff code keeps the kiosk in staff mode.
    staff_session_s: Annotated[float, Field(gt=0, le=3600)] = 120.0
    #: Days of event history kept on the kiosk (events not yet acked are always kept).
    history_days: Annotated[int, Field(ge=1, le=3650)] = 90


class CameraSection(_Section):
    type: Literal["v4l2", "picamera2", "file", "images"] = "v4l2"
    #: Device index or path for v4l2, a video file, or an image directory.
    source: str = "0"


class LockerSection(_Section):
    """One locker door: its size and the two GPIO pins wired to it (BCM numbers or names)."""

    size: Literal["S", "M", "L"] = "M"
    #: Drives the latch relay. Optional for simulated lockers (mock pins are picked).
    relay_pin: int | str | None = None
    #: Reads the door switch: closed while the door is shut (normally-open reed switch).
    door_pin: int | str | None = None


class LockersSection(_Section):
    """The locker bank; lockers are numbered 1..n in the order of `bank`."""

    type: Literal["simulated", "gpio"] = "simulated"
    #: Relay boards differ: many cheap modules switch on a LOW input (active_high = false).
    active_high: bool = True
    #: Door switch wired to ground with the Pi's pull-up (true), or to 3.3 V with a pull-down.
    #: With a pull-up a cut wire reads "open", so a broken sensor is noticed, never trusted.
    door_pull_up: bool = True
    #: Switch debounce; a latch spring can rattle the reed switch.
    door_bounce_s: Annotated[float, Field(ge=0, le=1)] = 0.05
    #: How long the latch relay is powered for one unlock.
    pulse_s: Annotated[float, Field(gt=0, le=10)] = 0.5
    #: How long after the pulse starts the door must read open, else `door_not_opened`.
    door_timeout_s: Annotated[float, Field(gt=0, le=60)] = 5.0
    #: What an unlock does when the door sensor cannot be trusted (the door already reads
    #: open, or it has not reported open after `sensor_fault_after` pulses in a row):
    #: "trust_relay" pulses and reports the door opened (unconfirmed), so a broken sensor
    #: never traps a customer's goods; "refuse" reports `sensor_fault` and leaves it to staff.
    sensor_fault_policy: Literal["trust_relay", "refuse"] = "trust_relay"
    #: Unlocks in a row without the door reading open before the sensor is suspected.
    sensor_fault_after: Annotated[int, Field(ge=1, le=10)] = 2
    #: Simulated lockers only: the door "springs open" this long after the relay fires...
    sim_open_delay_s: Annotated[float, Field(ge=0, le=10)] = 0.1
    #: ...and is "closed" by the simulated customer this long after it opened.
    sim_close_after_s: Annotated[float, Field(ge=0, le=600)] = 3.0
    bank: list[LockerSection] = Field(default_factory=lambda: [LockerSection() for _ in range(4)])

    @model_validator(mode="after")
    def _distinct_pins(self) -> LockersSection:
        seen: dict[str, str] = {}
        for i, locker in enumerate(self.bank):
            for role in ("relay_pin", "door_pin"):
                pin = getattr(locker, role)
                if pin is None:
                    continue
                key = str(pin).upper().removeprefix("GPIO").removeprefix("BCM")
                if key in seen:
                    raise ValueError(f"bank[{i}].{role} = {pin!r} is also {seen[key]}")
                seen[key] = f"bank[{i}].{role}"
        return self


class PrinterSection(_Section):
    """The receipt printer: ESC/POS over a serial port (the Pi's UART or USB serial)."""

    type: Literal["simulated", "serial", "none"] = "simulated"
    #: /dev/serial0 is the Pi's UART on GPIO 14/15; a USB printer is usually /dev/ttyUSB0.
    port: str = "/dev/serial0"
    baudrate: Annotated[int, Field(ge=1200, le=921600)] = 19200
    #: Text encoding the printer expects: gb18030 / gbk for Chinese printers (sent in the
    #: printer's Chinese mode), big5, shift_jis; or a single-byte page such as cp437.
    codepage: str = "gb18030"
    #: Characters per line: 32 on 58 mm paper, 48 on 80 mm.
    width: Annotated[int, Field(ge=16, le=64)] = 32
    #: How long to wait for the printer's answer to a status query before calling it offline.
    status_timeout_s: Annotated[float, Field(gt=0, le=5)] = 0.5
    #: Next-visit coupon: a link printed as a QR on every receipt ("" = off). A kiosk
    #: cannot sign codes (docs/codes.md), so this is the shop's online page that hands one out.
    next_visit_url: str = ""

    @field_validator("codepage")
    @classmethod
    def _codepage(cls, v: str) -> str:
        """Only what the printer code can send: a Chinese-mode codec or an ESC/POS page."""
        import codecs

        from kiosk.devices.printer import CJK_CODECS

        try:
            name = codecs.lookup(v).name
        except LookupError:
            name = v.lower()
        if name in CJK_CODECS:
            return name
        # escpos's code-page table costs 8 MB and a moment: read only for single-byte pages.
        from escpos.codepages import CodePages

        if v.upper() in CodePages.data or name.upper() in CodePages.data:
            return name
        raise ValueError(
            f"codepage {v!r} is not one a receipt printer takes (gb18030, big5, cp437, …)"
        )


class UiSection(_Section):
    language: Literal["zh_CN", "en"] = "zh_CN"
    #: Seconds a result screen stays before the kiosk returns to its start screen.
    result_s: Annotated[float, Field(gt=0, le=120)] = 6.0
    #: Seconds a refusal stays: longer than a success, to read what to do next.
    refusal_s: Annotated[float, Field(gt=0, le=120)] = 10.0
    join_url: str = ""


class KioskConfig(_Section):
    store: str
    kiosk: str
    #: Where the kiosk keeps its TinyDB store (outbox, redeemed coupons, members).
    data_dir: Path = Path("kiosk-data")
    #: Trusted signing keys: key id -> base64url Ed25519 public key. Public keys only.
    keys: dict[str, str]
    #: Keys the hash of phone numbers typed at the kiosk; the same on every kiosk of the
    #: store, known to nobody else. `o2o-bridge init` writes a random one.
    join_secret: SecretStr | None = None
    #: The shop's time zone (IANA, e.g. "Asia/Shanghai"): a campaign's hours are read in
    #: it. None: this machine's zone.
    timezone: str | None = None
    mqtt: MqttSection = MqttSection()
    rules: RulesSection = RulesSection()
    camera: CameraSection = CameraSection()
    lockers: LockersSection = LockersSection()
    printer: PrinterSection = PrinterSection()
    ui: UiSection = UiSection()

    @field_validator("store", "kiosk")
    @classmethod
    def _ids(cls, v: str) -> str:
        return check_id(v)

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, v: str | None) -> str | None:
        shop_zone(v)  # a name the time zone database does not know stops the kiosk here
        return v

    @field_validator("data_dir")
    @classmethod
    def _data_dir(cls, v: Path, info: ValidationInfo) -> Path:
        return _resolve(v, info)

    @field_validator("keys")
    @classmethod
    def _keys(cls, v: dict[str, str]) -> dict[str, str]:
        if not v:
            raise ValueError("at least one public key is needed to accept codes")
        for kid, text in v.items():
            try:
                key = load_public_key(text)
            except ValueError:
                raise ValueError(f"key {kid!r} is not a base64url Ed25519 public key") from None
            if key_id(key) != kid:
                raise ValueError(f"key {kid!r} does not match its public key (id {key_id(key)})")
        return v

    @model_validator(mode="after")
    def _lockers_pins(self) -> KioskConfig:
        if self.lockers.type == "gpio":
            for i, locker in enumerate(self.lockers.bank):
                if locker.relay_pin is None or locker.door_pin is None:
                    raise ValueError(f"lockers.bank[{i}] needs relay_pin and door_pin for gpio")
        return self

    def phone_secret(self) -> str:
        """The key for phone hashes; without a configured one, the store id (weaker)."""
        if self.join_secret is not None:
            return self.join_secret.get_secret_value()
        return f"o2o:{self.store}"

    def public_keys(self) -> dict[str, Ed25519PublicKey]:
        return {kid: load_public_key(text) for kid, text in self.keys.items()}


DEFAULT_CONFIG_GLOB = "kiosk-*.toml"


def find_default_config(cwd: Path | None = None) -> Path:
    """`--config` defaults to the one kiosk file `init` wrote in the current directory."""
    cwd = cwd or Path.cwd()
    found = sorted(cwd.glob(DEFAULT_CONFIG_GLOB))
    if len(found) == 1:
        return found[0]
    from o2o_protocol.config_file import ConfigError

    if not found:
        raise ConfigError(cwd, "", "no kiosk-*.toml here: pass --config or run `o2o-bridge init`")
    names = ", ".join(p.name for p in found)
    raise ConfigError(cwd, "", f"several kiosk configs ({names}): pass --config")


def load_config(path: str | Path) -> KioskConfig:
    return load_toml(path, KioskConfig)
