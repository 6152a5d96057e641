"""The bridge's config file (`bridge.toml`, written by `o2o-bridge init`).

Validated with pydantic and `extra="forbid"` in every section, so a misspelt key stops the
bridge at start-up with one line naming file, key and problem. Relative paths are taken
relative to the config file (validation context `config_dir`), so `o2o-bridge run
--config /srv/shop/bridge.toml` works from any directory.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import stat
from datetime import tzinfo
from pathlib import Path
from typing import Annotated, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from pydantic import (
    BaseModel,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from o2o_protocol.config_file import (
    ConfigError,
    ConfigSection,
    MqttConnection,
    load_toml,
    parse_mqtt_url,
    resolve_path,
)
from o2o_protocol.hours import parse_hours, shop_zone
from o2o_protocol.limits import Limits
from o2o_protocol.messages import check_id

log = logging.getLogger(__name__)

CONFIG_NAME = "bridge.toml"
DEFAULT_DB_NAME = "bridge.db"


_Section = ConfigSection


def _config_dir(info: ValidationInfo) -> Path | None:
    base = (info.context or {}).get("config_dir")
    return None if base is None else Path(base)


_resolve = resolve_path

#: Everything between `scheme://` and the last `@` of the authority: user and password.
_USERINFO = re.compile(r"(?<=://)[^?#]*@")


def redact_url(url: str) -> str:
    """A URL as a message may show it: the user and password part becomes `***`.

    Greedy up to the last `@`, so a password with `/` or `@` in it (which URL parsers
    disagree about) is hidden whole rather than cut at the first odd character.
    """
    return _USERINFO.sub("***@", url, count=1)


class _Hidden:
    """A config value whose repr is redacted.

    pydantic reports the value a failing validator was given; the shared config loader
    adds its repr to the message (`(got …)`). Wrapping a URL before its validator runs
    means an error can never echo a password, however oddly the URL is written.
    """

    def __init__(self, value: str) -> None:
        self.value = value

    def __repr__(self) -> str:
        return repr(redact_url(self.value))


class _UrlHidden(BaseModel):
    """A section whose `url` may hold a password: wrapped before any validator sees it."""

    @model_validator(mode="before")
    @classmethod
    def _hide(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("url"), str):
            return {**data, "url": _Hidden(data["url"])}
        return data


def _unwrap(value: Any) -> Any:
    return value.value if isinstance(value, _Hidden) else value


class MqttSection(MqttConnection, _UrlHidden):
    #: Stable id, so the broker keeps this bridge's session (and its queued messages)
    #: across restarts. Each worker of a shared group needs its own.
    client_id: str | None = None
    #: MQTT v5 shared-subscription group: several workers with the same group split the
    #: ingest between them (`$share/<group>/…`).
    shared_group: str | None = None
    #: How long the broker keeps the session (and queues QoS 1 messages) while the bridge
    #: is away.
    session_expiry_s: Annotated[int, Field(ge=0)] = 7 * 86400

    @field_validator("shared_group")
    @classmethod
    def _group(cls, v: str | None) -> str | None:
        return None if v is None else check_id(v, "shared_group")

    @field_validator("url", mode="before")
    @classmethod
    def _checked_url(cls, v: Any) -> Any:
        # Checked here, on the wrapped value, so an error shows the redacted URL only.
        v = _unwrap(v)
        if isinstance(v, str):
            parse_mqtt_url(v)
        return v


class DbSection(_Section, _UrlHidden):
    #: SQLAlchemy URL. Empty means the SQLite file `bridge.db` beside the config file;
    #: `postgresql+psycopg://user:pass@host/db` for PostgreSQL.
    url: Annotated[str, Field(validate_default=True)] = ""

    @field_validator("url", mode="before")
    @classmethod
    def _db_url(cls, v: Any, info: ValidationInfo) -> Any:
        v = _unwrap(v)
        return normalise_db_url(v, _config_dir(info)) if isinstance(v, str) else v


def normalise_db_url(url: str, config_dir: Path | None) -> str:
    """Check a database URL and make a relative SQLite path relative to the config file."""
    if not url:
        base = config_dir or Path.cwd()
        return f"sqlite:///{(base / DEFAULT_DB_NAME).resolve()}"
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ValueError(
            "must be a database URL: sqlite:///path.db or postgresql+psycopg://user@host/db"
        ) from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if parsed.drivername != "sqlite":
            raise ValueError("use sqlite:///path.db (the built-in driver)")
        db = parsed.database
        if not db or db == ":memory:":
            raise ValueError("SQLite needs a file path: sqlite:///bridge.db")
        path = Path(db)
        if not path.is_absolute() and config_dir is not None:
            path = (config_dir / path).resolve()
        return f"sqlite:///{path}"
    if backend == "postgresql":
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        elif parsed.drivername != "postgresql+psycopg":
            raise ValueError("for PostgreSQL use postgresql+psycopg://user:pass@host/db")
        return parsed.render_as_string(hide_password=False)
    raise ValueError(f"unsupported database {backend!r}: use sqlite or postgresql+psycopg")


class HttpSection(_Section):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 8080


class ApiSection(_Section):
    #: A file holding the bearer token the REST API and dashboard require.
    token_file: Annotated[Path, Field(validate_default=True)] = Path("api.token")
    #: A second, read-only token for the owner's dashboard and dashboards in general: it
    #: reads events, figures and kiosks, but cannot issue codes or command kiosks.
    read_token_file: Path | None = None
    #: Optional URL prefix: issued codes are also returned as `code_url + token`, a link
    #: a phone can open and a kiosk still accepts (it reads the last path segment).
    code_url: str | None = None

    @field_validator("token_file")
    @classmethod
    def _token(cls, v: Path, info: ValidationInfo) -> Path:
        return _resolve(v, info)

    @field_validator("read_token_file")
    @classmethod
    def _read_token(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        return None if v is None else _resolve(v, info)


class SigningSection(_Section):
    #: The Ed25519 private key (PEM, mode 0600) that signs codes. Kiosks hold only the
    #: public half.
    key_file: Annotated[Path, Field(validate_default=True)] = Path("signing.key")

    @field_validator("key_file")
    @classmethod
    def _key(cls, v: Path, info: ValidationInfo) -> Path:
        return _resolve(v, info)


class MembersSection(_Section):
    """Members, points and rewards (docs/members.md)."""

    #: Points a member earns when someone they shared a link with joins.
    referral_points: Annotated[int, Field(ge=0, le=1_000_000)] = 50
    #: Unused pre-signed codes each kiosk holds, per reward and for new members.
    pool_size: Annotated[int, Field(ge=1, le=200)] = 10
    #: How long a reward voucher stays valid.
    voucher_days: Annotated[int, Field(ge=1, le=3650)] = 365
    #: How long the live member code on a member's page stays valid.
    live_code_s: Annotated[int, Field(ge=30, le=86400)] = 120
    #: The bridge's address as a phone reaches it (e.g. `https://shop.example`): member
    #: pages are `<page_url>/m/<code>`. Empty: `http://<http.host>:<http.port>`, except
    #: that a loopback or unspecified host (no phone reaches it) gives no page links.
    page_url: str = ""
    #: The shop's own online sign-up page (e.g. its mini-program link): a member page's
    #: share link is `<join_url>` with `ref=<member id>`. Empty: the bridge's `/j` page.
    join_url: str = ""

    @field_validator("page_url")
    @classmethod
    def _page_url(cls, v: str) -> str:
        v = v.strip().rstrip("/")
        if v and not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", v):
            raise ValueError("page_url must be an http:// or https:// address")
        return v

    @field_validator("join_url")
    @classmethod
    def _join_url(cls, v: str) -> str:
        v = v.strip()
        if v and not re.fullmatch(r"https?://[^\s/?#]+[^\s#]*", v):
            raise ValueError("join_url must be an http:// or https:// address")
        return v


def _section() -> Any:
    # Validating the default ({}) lets path defaults resolve against the config's directory.
    return Field(default_factory=dict, validate_default=True)


class BridgeConfig(_Section):
    store: str
    mqtt: MqttSection = _section()
    db: DbSection = _section()
    http: HttpSection = _section()
    api: ApiSection = _section()
    signing: SigningSection = _section()
    members: MembersSection = _section()
    #: What the bridge takes from kiosks and API clients (docs/limits.md).
    limits: Limits = Field(default_factory=Limits)
    #: The kiosks this store expects, so the dashboard can show one that never came up.
    kiosks: list[str] = Field(default_factory=list)
    #: The shop's IANA time zone (its day for the figures, local times in the API);
    #: absent: this machine's zone.
    timezone: str | None = None
    #: When the shop is open, `[{days = [1..7], from = "HH:MM", to = "HH:MM"}]` in shop
    #: time: the insights look for slow hours among these. Absent: inferred from the
    #: check-ins (docs/insights.md).
    opening_hours: list[dict[str, Any]] | None = None
    #: A member with no visit in this many weeks is lapsed (docs/insights.md).
    lapsed_weeks: Annotated[int, Field(ge=1, le=104)] = 4

    @field_validator("opening_hours")
    @classmethod
    def _opening_hours(cls, v: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        return None if v is None else [w.wire() for w in parse_hours(v)]

    @field_validator("store")
    @classmethod
    def _store(cls, v: str) -> str:
        return check_id(v, "store id")

    @field_validator("kiosks")
    @classmethod
    def _kiosks(cls, v: list[str]) -> list[str]:
        for k in v:
            check_id(k, "kiosk id")
        if len(set(v)) != len(v):
            raise ValueError("kiosk ids must be unique")
        return v

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, v: str | None) -> str | None:
        shop_zone(v)
        return v

    def zone(self) -> tzinfo:
        """The shop's time zone (`timezone`, or this machine's)."""
        return shop_zone(self.timezone)

    def member_page_base(self) -> str:
        """Where member pages live, without the trailing slash (docs/members.md)."""
        return self.members.page_url or f"http://{self.http.host}:{self.http.port}"

    def client_id(self) -> str:
        """The MQTT client id: configured, or derived from store (and host for a group)."""
        if self.mqtt.client_id:
            return self.mqtt.client_id
        if self.mqtt.shared_group:
            return f"o2o-bridge-{self.store}-{socket.gethostname()}"
        return f"o2o-bridge-{self.store}"


def load_config(path: str | Path) -> BridgeConfig:
    """Read `bridge.toml`; raises ConfigError only."""
    return load_toml(path, BridgeConfig)


def load_signing_key(config: BridgeConfig) -> Ed25519PrivateKey:
    """The private key that signs codes; ConfigError names the file if it is unusable."""
    path = config.signing.key_file
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(path, "", f"cannot read the signing key: {exc.strerror}") from None
    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise ConfigError(path, "", "not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(path, "", "the signing key must be Ed25519")
    _warn_if_open(path)
    return key


def load_api_token(config: BridgeConfig) -> str:
    return _load_token(config.api.token_file)


def load_read_token(config: BridgeConfig) -> str | None:
    path = config.api.read_token_file
    return None if path is None else _load_token(path)


def _load_token(path: Path) -> str:
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, "", f"cannot read the API token: {exc}") from None
    if len(token) < 16:
        raise ConfigError(path, "", "the API token must be at least 16 characters")
    _warn_if_open(path)
    return token


def _warn_if_open(path: Path) -> None:
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("%s is readable by other users: chmod 600 %s", path, path)
