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
    PrivateAttr,
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


#: The shared-subscription group of `run --worker` when `mqtt.shared_group` is not set.
DEFAULT_SHARED_GROUP = "o2o-bridge"


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


class ChainSection(_Section):
    """The owner of every store (docs/chain.md); `init` appends it, with the second store."""

    #: The chain's read-only token: reads every store of the service, changes nothing.
    token_file: Path | None = None

    @field_validator("token_file")
    @classmethod
    def _chain_token(cls, v: Path | None, info: ValidationInfo) -> Path | None:
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


def _check_kiosks(v: list[str]) -> list[str]:
    for k in v:
        check_id(k, "kiosk id")
    if len(set(v)) != len(v):
        raise ValueError("kiosk ids must be unique")
    return v


def _check_hours(v: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    return None if v is None else [w.wire() for w in parse_hours(v)]


def _check_zone(v: str | None) -> str | None:
    shop_zone(v)
    return v


class StoreSection(_Section):
    """One more store of the service (`[stores.<id>]`, docs/chain.md): what is the shop's
    own. Broker, database, HTTP address and limits are the service's (top level)."""

    kiosks: list[str] = Field(default_factory=list)
    timezone: str | None = None
    opening_hours: list[dict[str, Any]] | None = None
    lapsed_weeks: Annotated[int, Field(ge=1, le=104)] = 4
    api: ApiSection = _section()
    signing: SigningSection = _section()
    members: MembersSection = _section()

    _kiosks = field_validator("kiosks")(_check_kiosks)
    _opening_hours = field_validator("opening_hours")(_check_hours)
    _timezone = field_validator("timezone")(_check_zone)


class BridgeConfig(_Section):
    #: The first store of the service (the only one of a single shop).
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
    #: The chain token (`[chain] token_file`), for a service of several stores.
    chain: ChainSection = _section()
    #: More stores of the same service, `[stores.<id>]` (docs/chain.md).
    extra_stores: dict[str, StoreSection] = Field(default_factory=dict, alias="stores")
    #: This process's name among the workers of the service (`run --worker NAME`); None:
    #: the only process, which does everything.
    worker: str | None = None

    _opening_hours = field_validator("opening_hours")(_check_hours)
    _kiosks = field_validator("kiosks")(_check_kiosks)
    _timezone = field_validator("timezone")(_check_zone)

    @field_validator("worker")
    @classmethod
    def _worker(cls, v: str | None) -> str | None:
        return None if v is None else check_id(v, "worker")

    @field_validator("store")
    @classmethod
    def _store(cls, v: str) -> str:
        return check_id(v, "store id")

    @model_validator(mode="before")
    @classmethod
    def _store_defaults(cls, data: Any) -> Any:
        """A store table's own files default to names with its id (`signing-<id>.key`,
        `api-<id>.token`), so two stores never share a key by omission; its `[members]`
        keys default to the top-level ones."""
        if not isinstance(data, dict) or not isinstance(data.get("stores"), dict):
            return data
        members_raw = data.get("members")
        top_members: dict[str, Any] = members_raw if isinstance(members_raw, dict) else {}
        stores: dict[str, Any] = {}
        for sid, table in data["stores"].items():
            if isinstance(table, dict):
                table = dict(table)
                signing = table.get("signing", {})
                api = table.get("api", {})
                members = table.get("members", {})
                if isinstance(signing, dict):
                    table["signing"] = {"key_file": f"signing-{sid}.key", **signing}
                if isinstance(api, dict):
                    table["api"] = {"token_file": f"api-{sid}.token", **api}
                if isinstance(members, dict):
                    table["members"] = {**top_members, **members}
            stores[sid] = table
        return {**data, "stores": stores}

    @field_validator("extra_stores")
    @classmethod
    def _store_ids(cls, v: dict[str, StoreSection]) -> dict[str, StoreSection]:
        for sid in v:
            check_id(sid, "store id")
        return v

    def zone(self) -> tzinfo:
        """The shop's time zone (`timezone`, or this machine's)."""
        return shop_zone(self.timezone)

    def member_page_base(self) -> str:
        """Where member pages live, without the trailing slash (docs/members.md)."""
        return self.members.page_url or f"http://{self.http.host}:{self.http.port}"

    def with_worker(self, name: str) -> BridgeConfig:
        """The config as worker `name` runs it: its own client ids, and the ingest shared
        with the other workers (`mqtt.shared_group`, `DEFAULT_SHARED_GROUP` if unset)."""
        name = check_id(name, "worker")
        mqtt = self.mqtt
        if not mqtt.shared_group:
            mqtt = mqtt.model_copy(update={"shared_group": DEFAULT_SHARED_GROUP})
        copy = self.model_copy(update={"worker": name, "mqtt": mqtt})
        copy._path = self._path
        return copy

    def client_id(self) -> str:
        """The MQTT client id: configured, or derived from store (and host for a group);
        a worker's ends with its name, so each worker of a store has a session of its own."""
        if self.mqtt.client_id:
            return self.mqtt.client_id + (f"-{self.worker}" if self.worker else "")
        if self.worker:
            return f"o2o-bridge-{self.store}-{self.worker}"
        if self.mqtt.shared_group:
            return f"o2o-bridge-{self.store}-{socket.gethostname()}"
        return f"o2o-bridge-{self.store}"

    # -- several stores (docs/chain.md) -----------------------------------------------

    def store_ids(self) -> list[str]:
        """Every store of the service, the top-level one first."""
        return [self.store, *self.extra_stores]

    def is_chain(self) -> bool:
        """More than one store, or a chain token: the API picks the store by token."""
        return bool(self.extra_stores) or self.chain.token_file is not None

    def stores(self) -> list[BridgeConfig]:
        """One single-store view per store (`for_store`), the top-level one first."""
        return [self.for_store(s) for s in self.store_ids()]

    def for_store(self, store: str) -> BridgeConfig:
        """The config as one store sees it: its own kiosks, zone, hours, key, tokens and
        members settings, and the service's broker, database, HTTP and limits. Every
        per-store part takes this as it took a single shop's config. A configured
        `mqtt.client_id` gets `-<store>` for every store but the first, so each store's
        link keeps a session of its own. KeyError for a store the service does not have."""
        if store == self.store:
            return self.model_copy(update={"extra_stores": {}})
        s = self.extra_stores[store]
        mqtt = self.mqtt
        if mqtt.client_id:
            mqtt = mqtt.model_copy(update={"client_id": f"{mqtt.client_id}-{store}"})
        copy = self.model_copy(
            update={
                "store": store,
                "mqtt": mqtt,
                "api": s.api,
                "signing": s.signing,
                "members": s.members,
                "kiosks": s.kiosks,
                "timezone": s.timezone,
                "opening_hours": s.opening_hours,
                "lapsed_weeks": s.lapsed_weeks,
                "extra_stores": {},
            }
        )
        copy._path = self._path
        return copy

    def key_of(self, store: str) -> str:
        """The dotted config key where `store` is configured (for messages)."""
        return "store" if store == self.store else f"stores.{store}"

    def check_stores(self, path: str | Path) -> None:
        """What no single table can check: a store configured twice, a kiosk in two
        stores (they share the directory's kiosk files). ConfigError names file and key."""
        if self.store in self.extra_stores:
            raise ConfigError(
                path, f"stores.{self.store}", "this store is already the top-level `store`"
            )
        owner: dict[str, str] = {k: self.store for k in self.kiosks}
        for sid, s in self.extra_stores.items():
            for k in s.kiosks:
                if k in owner:
                    raise ConfigError(
                        path,
                        f"stores.{sid}.kiosks",
                        f"kiosk {k!r} is already a kiosk of store {owner[k]!r}"
                        " (kiosk ids are unique across the service)",
                    )
                owner[k] = sid

    _path: Path | None = PrivateAttr(default=None)


def load_config(path: str | Path) -> BridgeConfig:
    """Read `bridge.toml`; raises ConfigError only."""
    config = load_toml(path, BridgeConfig)
    config.check_stores(path)
    config._path = Path(path)
    return config


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


def load_chain_token(config: BridgeConfig) -> str | None:
    path = config.chain.token_file
    return None if path is None else _load_token(path)


def load_store_tokens(config: BridgeConfig) -> dict[str, tuple[str, str | None]]:
    """Each store's (full, read-only) API tokens, checked across the service: a token
    that opens two stores, or a store token that is also the chain token, would let one
    shop read another's data, so it stops the bridge (ConfigError names file and key)."""
    where = config._path or Path(CONFIG_NAME)
    seen: dict[str, tuple[str | None, str]] = {}  # token -> (store, key); None: the chain
    chain = load_chain_token(config)
    if chain is not None:
        seen[chain] = (None, "chain.token_file")
    tokens: dict[str, tuple[str, str | None]] = {}
    for view in config.stores():
        prefix = "" if view.store == config.store else f"stores.{view.store}."
        full = load_api_token(view)
        read = load_read_token(view)
        for token, key in ((full, "api.token_file"), (read, "api.read_token_file")):
            if token is None:
                continue
            owner, other = seen.setdefault(token, (view.store, prefix + key))
            if owner != view.store:
                raise ConfigError(
                    where, prefix + key, f"the same token as {other}: every store needs its own"
                )
        tokens[view.store] = (full, read)
    return tokens
