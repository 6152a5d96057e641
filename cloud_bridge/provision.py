"""`o2o-bridge init`: a store's set-up in one directory, written whole or not at all.

Run again on a directory that holds a service, it adds a store to it (docs/chain.md).

The bridge's own file, the signing key, the two API tokens, and one ready-to-run kiosk
file per kiosk (rendered from `o2o_protocol.provisioning`, so the service never imports
the appliance). Everything is rendered and checked before the first byte is written.
"""

from __future__ import annotations

import os
import secrets
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from cloud_bridge.config import CONFIG_NAME, BridgeConfig, load_config, normalise_db_url
from o2o_protocol.codes import b64url_encode, key_id, public_key_bytes
from o2o_protocol.config_file import ConfigError, parse_mqtt_url, validate_config
from o2o_protocol.hours import shop_zone
from o2o_protocol.messages import check_id
from o2o_protocol.provisioning import KioskProvisioning, toml_str

DEFAULT_MQTT = "mqtt://127.0.0.1:1883"


class UsageError(Exception):
    """A problem with what the user asked for: one line, exit status 2."""


BRIDGE_TEMPLATE = """\
# o2o-bridge configuration, written by `o2o-bridge init`.
# Relative paths are relative to this file. Run: o2o-bridge run --config {config}

# The store these kiosks belong to (also the MQTT topic level o2o/v1/<store>/...).
store = {store}

# The kiosks this store expects; the dashboard shows one that never came up as offline.
kiosks = [{kiosks}]

# The shop's IANA time zone: its day for today's figures, local times in the API.
{timezone_line}

[mqtt]
# mqtt://host:port, or mqtts://host:port for TLS
url = {mqtt}
# username = "bridge"
# password = "..."
# ca_file = "ca.crt"          # for mqtts:// with a private CA
# protocol = "auto"           # MQTT v5, or 3.1.1 when the broker says so; "3.1.1" to force
# client_id = "o2o-bridge-{store_raw}"   # stable id: the broker keeps our session across restarts
# shared_group = "bridges"    # several workers split the ingest ($share/bridges/...)

[db]
{db_line}
# PostgreSQL: url = "postgresql+psycopg://user:password@host/dbname"

[http]
host = "127.0.0.1"            # 0.0.0.0 to reach the dashboard from other machines
port = 8080

[api]
token_file = "api.token"      # REST API: Authorization: Bearer <token>; can do everything
read_token_file = "dashboard.token"   # read-only: the dashboard, dashboards, reports
# code_url = "https://shop.example/c/"   # issued codes also come back as a link

[signing]
key_file = "signing.key"      # Ed25519 private key that signs codes; keep it secret (0600)

[members]
# The bridge's address as a phone reaches it: join slips link to <page_url>/m/<code>.
# Unset while the http host is 127.0.0.1 or 0.0.0.0: slips carry no member page link.
# page_url = "https://shop.example"
# The shop's own online sign-up page; a member page's share link adds ref=<member id>.
# join_url = "https://shop.example/join"
# pool_size = 10              # unused pre-signed codes per kiosk, per reward and for joins
# voucher_days = 365          # how long a reward voucher stays valid
# referral_points = 50        # points for a member whose shared link brings someone in
"""


STORE_TEMPLATE = """
# Store {store_raw}, added by `o2o-bridge init`: its own kiosks, time zone, signing key
# and API tokens; the broker, database and HTTP address above serve every store
# (docs/chain.md).
[stores.{store_key}]
kiosks = [{kiosks}]
{timezone_line}

[stores.{store_key}.api]
token_file = {token}      # this store's REST API: sees and changes this store only
read_token_file = {read_token}   # read-only, this store only

[stores.{store_key}.signing]
key_file = {key}      # signs this store's codes only; keep it secret (0600)

# This shop's own members settings; absent keys are those of [members] above.
# [stores.{store_key}.members]
# join_url = "https://shop.example/join"
"""

CHAIN_TEMPLATE = """
# The owner of every store: a read-only token over all of them (docs/chain.md).
[chain]
token_file = {token}
"""


@dataclass(frozen=True)
class Provisioned:
    """What `init` wrote, for the summary it prints."""

    config: Path
    signing_key: Path
    key_id: str
    api_token: Path
    read_token: Path
    kiosks: list[Path]
    #: Set when a store was added to an existing service: its id.
    added: str | None = None
    #: The chain token's file, when this run wrote it (the second store of a service).
    chain_token: Path | None = None


def checked(validate: Callable[[str], Any], value: str, option: str) -> str:
    """Run a validator; its ValueError becomes a usage error naming the option."""
    try:
        validate(value)
    except ValueError as exc:
        raise UsageError(f"{option}: {exc}") from None
    return value


def write_private(path: Path, data: bytes) -> None:
    """Write a secret so it is never readable by others, not even for a moment."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)


def provision(
    directory: Path,
    *,
    store: str,
    kiosks: list[str],
    mqtt_url: str | None,
    db_url: str | None,
    force: bool = False,
    timezone: str | None = None,
) -> Provisioned:
    """Write a store's set-up into `directory`; UsageError names the option at fault.

    A directory that already holds a `bridge.toml` (and no `--force`) gets the store
    added to its service instead (`add_store`)."""
    if not force and (directory / CONFIG_NAME).is_file():
        if db_url:
            raise UsageError(
                f"--db: {directory / CONFIG_NAME} already names the service's database; "
                "a store added to it shares it"
            )
        return add_store(
            directory, store=store, kiosks=kiosks, mqtt_url=mqtt_url, timezone=timezone
        )
    mqtt_url = mqtt_url or DEFAULT_MQTT
    checked(check_id, store, "--store")
    for k in kiosks:
        checked(check_id, k, "--kiosk")
    if len(set(kiosks)) != len(kiosks):
        raise UsageError("--kiosk: the same kiosk id is given twice")
    checked(parse_mqtt_url, mqtt_url, "--mqtt")
    if timezone is not None:
        checked(shop_zone, timezone, "--timezone")
    if db_url:
        checked(lambda v: normalise_db_url(v, None), db_url, "--db")

    config_path = directory / CONFIG_NAME
    key_path = directory / "signing.key"
    token_path = directory / "api.token"
    read_token_path = directory / "dashboard.token"
    kiosk_paths = {k: directory / f"kiosk-{k}.toml" for k in kiosks}
    targets = [config_path, key_path, token_path, read_token_path, *kiosk_paths.values()]
    if not force:
        for p in targets:
            if p.exists():
                raise UsageError(f"{p} already exists (use --force to overwrite)")
    if directory.exists() and not directory.is_dir():
        raise UsageError(f"--dir: {directory} is not a directory")

    key = Ed25519PrivateKey.generate()
    public = key.public_key()
    kid = key_id(public)
    pub_text = b64url_encode(public_key_bytes(public))

    bridge_text = BRIDGE_TEMPLATE.format(
        config=config_path,
        store=toml_str(store),
        store_raw=store,
        kiosks=", ".join(toml_str(k) for k in kiosks),
        mqtt=toml_str(mqtt_url),
        timezone_line=(
            f"timezone = {toml_str(timezone)}"
            if timezone
            else '# timezone = "Asia/Shanghai"    # absent: this machine\'s zone'
        ),
        db_line=(
            f"url = {toml_str(db_url)}"
            if db_url
            else '# url = "sqlite:///bridge.db"      # the default: SQLite beside this file'
        ),
    )
    kiosk_texts = _kiosk_texts(store, kiosks, mqtt_url, {kid: pub_text}, kiosk_paths, timezone)
    # Validate everything before writing anything: init never leaves half a set-up.
    validate_config(config_path, tomllib.loads(bridge_text), BridgeConfig)

    try:
        directory.mkdir(parents=True, exist_ok=True)
        write_private(
            key_path, key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        )
        write_private(token_path, (secrets.token_urlsafe(32) + "\n").encode())
        write_private(read_token_path, (secrets.token_urlsafe(32) + "\n").encode())
        # bridge.toml may later hold broker and database passwords.
        write_private(config_path, bridge_text.encode())
        for k, text in kiosk_texts.items():
            write_private(kiosk_paths[k], text.encode())
    except OSError as exc:
        raise UsageError(f"--dir: cannot write in {directory}: {exc.strerror}") from None
    load_config(config_path)  # the files as written must load
    return Provisioned(
        config_path, key_path, kid, token_path, read_token_path, list(kiosk_paths.values())
    )


def add_store(
    directory: Path,
    *,
    store: str,
    kiosks: list[str],
    mqtt_url: str | None,
    timezone: str | None,
) -> Provisioned:
    """Add a store to the service in `directory`: its signing key, API tokens and kiosk
    files, and a `[stores.<id>]` table appended to `bridge.toml` (the file's bytes before
    it, comments included, are kept as they were). The chain token comes with the second
    store. Nothing is written unless all of it can be: the new text is validated first,
    and none of the new files may exist. `mqtt_url`: what the kiosk files name (default:
    the service's broker)."""
    config_path = directory / CONFIG_NAME
    checked(check_id, store, "--store")
    for k in kiosks:
        checked(check_id, k, "--kiosk")
    if len(set(kiosks)) != len(kiosks):
        raise UsageError("--kiosk: the same kiosk id is given twice")
    if mqtt_url is not None:
        checked(parse_mqtt_url, mqtt_url, "--mqtt")
    if timezone is not None:
        checked(shop_zone, timezone, "--timezone")
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        raise UsageError(f"cannot add a store: {exc}") from None
    if store in config.store_ids():
        raise UsageError(
            f"--store: store {store!r} already exists in {config_path}"
            " (use --force to overwrite the whole service)"
        )
    for view in config.stores():
        taken = set(view.kiosks) & set(kiosks)
        if taken:
            raise UsageError(
                f"--kiosk: {sorted(taken)[0]!r} is already a kiosk of store {view.store!r}"
                " (kiosk ids are unique across the service)"
            )

    key_path = directory / f"signing-{store}.key"
    token_path = directory / f"api-{store}.token"
    read_token_path = directory / f"dashboard-{store}.token"
    chain_path = directory / "chain.token" if config.chain.token_file is None else None
    kiosk_paths = {k: directory / f"kiosk-{k}.toml" for k in kiosks}
    targets = [key_path, token_path, read_token_path, *kiosk_paths.values()]
    if chain_path is not None:
        targets.append(chain_path)
    for p in targets:
        if p.exists():
            raise UsageError(f"{p} already exists: adding store {store!r} writes it")

    key = Ed25519PrivateKey.generate()
    public = key.public_key()
    kid = key_id(public)
    pub_text = b64url_encode(public_key_bytes(public))
    old_text = config_path.read_bytes()
    added = ""
    if chain_path is not None:
        added += CHAIN_TEMPLATE.format(token=toml_str(chain_path.name))
    added += STORE_TEMPLATE.format(
        store_raw=store,
        store_key=store,  # ids are letters, digits, - and _: a bare TOML key
        kiosks=", ".join(toml_str(k) for k in kiosks),
        timezone_line=(
            f"timezone = {toml_str(timezone)}"
            if timezone
            else '# timezone = "Asia/Shanghai"    # absent: this machine\'s zone'
        ),
        token=toml_str(token_path.name),
        read_token=toml_str(read_token_path.name),
        key=toml_str(key_path.name),
    )
    new_text = old_text + (b"" if old_text.endswith(b"\n") else b"\n") + added.encode()
    try:
        new_config = validate_config(config_path, tomllib.loads(new_text.decode()), BridgeConfig)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot add a store to {config_path}: {exc}") from None
    new_config.check_stores(config_path)
    broker = mqtt_url or config.mqtt.url
    kiosk_texts = _kiosk_texts(store, kiosks, broker, {kid: pub_text}, kiosk_paths, timezone)
    try:
        write_private(
            key_path, key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        )
        write_private(token_path, (secrets.token_urlsafe(32) + "\n").encode())
        write_private(read_token_path, (secrets.token_urlsafe(32) + "\n").encode())
        if chain_path is not None:
            write_private(chain_path, (secrets.token_urlsafe(32) + "\n").encode())
        for k, text in kiosk_texts.items():
            write_private(kiosk_paths[k], text.encode())
        # Last, and appended: the service's file keeps every byte it had.
        with config_path.open("ab") as f:
            f.write(new_text[len(old_text) :])
    except OSError as exc:
        raise UsageError(f"--dir: cannot write in {directory}: {exc.strerror}") from None
    load_config(config_path)  # the files as written must load
    return Provisioned(
        config_path,
        key_path,
        kid,
        token_path,
        read_token_path,
        list(kiosk_paths.values()),
        added=store,
        chain_token=chain_path,
    )


def _kiosk_texts(
    store: str,
    kiosks: Sequence[str],
    mqtt_url: str,
    keys: dict[str, str],
    paths: Mapping[str, Path],
    timezone: str | None,
) -> dict[str, str]:
    """Each kiosk file of a store, with one join secret for the store (the same phone
    gives the same hash at every door)."""
    join_secret = secrets.token_urlsafe(24)
    return {
        k: KioskProvisioning(
            store=store,
            kiosk=k,
            mqtt_url=mqtt_url,
            keys=keys,
            join_secret=join_secret,
            path=paths[k],
            timezone=timezone,
        ).render()
        for k in kiosks
    }
