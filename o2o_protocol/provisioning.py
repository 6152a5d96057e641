"""What a kiosk is given to run: its config file, as `o2o-bridge init` writes it.

The kiosk owns its config schema (`kiosk/config.py`); the bridge must not import the
appliance to make one. This model is the contract between them: the few values the
service decides for a kiosk (its ids, the broker, the store's public keys, the join
secret), and `render()` turning them into a commented TOML file that a shop owner can read
and edit. Everything else in the file is the kiosk's default, spelled out.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from o2o_protocol.codes import key_id, load_public_key
from o2o_protocol.config_file import parse_mqtt_url
from o2o_protocol.hours import shop_zone
from o2o_protocol.messages import check_id


def toml_str(value: str) -> str:
    """A TOML basic string."""
    out = value.replace("\\", "\\\\").replace('"', '\\"')
    out = "".join(c if c >= " " and c != "\x7f" else f"\\u{ord(c):04x}" for c in out)
    return f'"{out}"'


KIOSK_TEMPLATE = """\
# o2o-kiosk configuration for kiosk {kiosk_raw}, written by `o2o-bridge init`.
# Run: o2o-kiosk run --config {config}
# Copy it to the store's kiosks. [keys] are public keys, safe to share; join_secret
# is not: it keys the hashes of customers' phone numbers (file mode 0600).
# Every key is checked at start-up; a misspelt one stops the kiosk with one clear line.

store = {store}
kiosk = {kiosk}
# Outbox, redeemed coupons, members: keep it on the kiosk (relative to this file).
data_dir = {data_dir}
join_secret = {join_secret}
{timezone}
# Trusted code-signing keys: key id = base64url Ed25519 public key.
[keys]
{keys}

[mqtt]
url = {mqtt}                  # mqtts://host:8883 for TLS
# username = "{store_raw}/{kiosk_raw}"   # per-kiosk login: broker_config/add-kiosk-user.sh
# password = "..."
# ca_file = "ca.crt"          # for mqtts:// with a private CA (broker_config/make-certs.sh)
# protocol = "auto"           # MQTT v5, or 3.1.1 when the broker says so; "3.1.1" to force

[rules]
points_per_visit = 10
once_per_day = false          # true: one counted visit (and its points) per member per day
checkin_cooldown_min = 60     # a member code shown again within this earns nothing new
quiet_window_s = 3.0          # a code held up for seconds is one scan
reservation_early_min = 15    # arriving more than this early (or late) is early (or late)
reservation_late_min = 15
accept = ["m", "c", "p", "s", "r"]   # member, coupon, pickup, staff, reservation
staff_session_s = 120         # staff mode after a staff code
history_days = 90             # event history kept on the kiosk (un-synced events always)

[ui]
language = "zh_CN"            # zh_CN | en
result_s = 6.0                # seconds before a result screen returns to the start screen
refusal_s = 10.0              # the same for a refusal (longer: what to do next takes reading)
join_url = ""                 # the shop's online sign-up page (shown as a QR, printed)

[camera]
type = "v4l2"                 # v4l2 | picamera2 | file | images
source = "0"                  # device index or path, a video file, or an image directory

[lockers]
type = "simulated"            # gpio, with relay_pin and door_pin per [[lockers.bank]]
# sensor_fault_policy = "trust_relay"   # or "refuse": see kiosk/devices/lockers.py
# [[lockers.bank]]
# size = "M"                  # S | M | L
# relay_pin = 17              # BCM numbering
# door_pin = 27

[printer]
type = "simulated"            # serial, with port = "/dev/serial0" (Pi UART) or a USB port
# codepage = "gb18030"
# next_visit_url = ""         # printed as a QR on check-in receipts
"""


def _timezone_lines(zone: str | None) -> str:
    """The `timezone` key and its comment; nothing without one (the machine's zone), so a
    file written without `--timezone` is the one `init` always wrote."""
    if not zone:
        return ""
    note = "# The shop's time zone (IANA): campaign hours are read in it."
    return f"{note}\ntimezone = {toml_str(zone)}\n"


def _mqtt_url(url: str) -> str:
    parse_mqtt_url(url)
    return url


_Id = Annotated[str, AfterValidator(check_id)]


class KioskProvisioning(BaseModel):
    """One kiosk's file: checked here, so what `render()` writes always loads."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    store: _Id
    kiosk: _Id
    #: The broker, as the kiosk reaches it: mqtt://host:port or mqtts://host:port.
    mqtt_url: Annotated[str, AfterValidator(_mqtt_url)]
    #: Trusted code-signing keys: key id -> base64url Ed25519 public key.
    keys: Annotated[dict[str, str], Field(min_length=1)]
    #: Keys the hashes of phone numbers typed at the kiosk; one per store.
    join_secret: Annotated[str, Field(min_length=1)]
    #: Where the file will be written (named in its "Run:" comment).
    path: Path
    #: The kiosk's data directory, relative to its file; default `kiosk-<ID>-data`.
    data_dir: str | None = None
    #: The shop's IANA time zone (`init --timezone`); None leaves it commented out.
    timezone: str | None = None

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, v: str | None) -> str | None:
        shop_zone(v)
        return v

    @field_validator("keys")
    @classmethod
    def _keys(cls, v: dict[str, str]) -> dict[str, str]:
        for kid, text in v.items():
            if key_id(load_public_key(text)) != kid:
                raise ValueError(f"key {kid!r} does not match its public key")
        return v

    @model_validator(mode="after")
    def _rendered_is_toml(self) -> KioskProvisioning:
        tomllib.loads(self.render())  # a TOMLDecodeError is a ValueError
        return self

    def render(self) -> str:
        """The kiosk's config file, comments and all."""
        return KIOSK_TEMPLATE.format(
            config=self.path,
            store=toml_str(self.store),
            kiosk=toml_str(self.kiosk),
            kiosk_raw=self.kiosk,
            store_raw=self.store,
            data_dir=toml_str(self.data_dir or f"kiosk-{self.kiosk}-data"),
            keys="\n".join(f"{toml_str(kid)} = {toml_str(pub)}" for kid, pub in self.keys.items()),
            mqtt=toml_str(self.mqtt_url),
            join_secret=toml_str(self.join_secret),
            timezone=_timezone_lines(self.timezone),
        )
