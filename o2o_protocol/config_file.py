"""Loading TOML config files into pydantic models, with errors a shop owner can act on.

Both the kiosk and the bridge read their files through `load_toml`, so a bad file, key or
value always produces the same kind of one-line message: `file: key: what is wrong`.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)

M = TypeVar("M", bound=BaseModel)


class ConfigError(Exception):
    """A config problem, already phrased for the person who wrote the file."""

    def __init__(self, file: str | Path, key: str, problem: str) -> None:
        self.file, self.key, self.problem = str(file), key, problem
        super().__init__(f"{self.file}: {key}: {problem}" if key else f"{self.file}: {problem}")


def load_toml(path: str | Path, model: type[M], **context: Any) -> M:
    """Read and validate one config file; raises ConfigError only."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(path, "", "no such file (run `o2o-bridge init` to make one)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, "", f"cannot read: {exc}") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, "", f"not valid TOML: {exc}") from None
    return validate_config(path, raw, model, **context)


def validate_config(path: str | Path, raw: dict[str, Any], model: type[M], **context: Any) -> M:
    try:
        return model.model_validate(raw, context={"config_dir": Path(path).parent, **context})
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling)"
        elif err["type"] == "missing":
            msg = "required key is missing"
        elif "input" in err and not isinstance(err["input"], dict | list):
            msg = f"{msg} (got {_shown(key, err['input'])})"
        raise ConfigError(path, key, msg) from None


_SECRET_KEYS = ("password", "token", "secret", "private")
_URL_CREDENTIALS = re.compile(r"(?<=://)([^/@:]*):([^/@]*)@")


def _shown(key: str, value: Any) -> str:
    """The bad value as a message may show it: never a password, even a wrong one."""
    if any(word in key.lower() for word in _SECRET_KEYS):
        return "a value (hidden)"
    return repr(_URL_CREDENTIALS.sub(r"\1:***@", value) if isinstance(value, str) else value)


def parse_mqtt_url(url: str) -> tuple[bool, str, int]:
    """`mqtt://host:port` or `mqtts://host:port` into (tls, host, port)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ValueError("must look like mqtt://host:port or mqtts://host:port") from None
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ValueError("must look like mqtt://host:port or mqtts://host:port")
    if parts.path not in ("", "/") or parts.query or parts.username:
        raise ValueError("must be just mqtt://host:port (credentials go in username/password)")
    tls = parts.scheme == "mqtts"
    return tls, parts.hostname, port or (8883 if tls else 1883)


class ConfigSection(BaseModel):
    """A config table: unknown keys are errors, values are read-only once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def resolve_path(path: Path, info: ValidationInfo) -> Path:
    """Relative paths in a config file are relative to that file, not to the shell's cwd."""
    base = (info.context or {}).get("config_dir")
    return path if path.is_absolute() or base is None else (Path(base) / path)


class MqttConnection(ConfigSection):
    """How to reach the broker; the same keys on the kiosk and the bridge."""

    url: str = "mqtt://127.0.0.1:1883"
    username: str | None = None
    password: SecretStr | None = None
    #: CA certificate that signed the broker's (for mqtts:// with a private CA).
    ca_file: Path | None = None
    keepalive_s: Annotated[int, Field(ge=5, le=3600)] = 30
    #: "auto": MQTT v5, or 3.1.1 when the broker answers that it does not speak v5.
    #: "3.1.1" for a broker that does not even answer a v5 CONNECT.
    protocol: Literal["auto", "5", "3.1.1"] = "auto"

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        parse_mqtt_url(v)
        return v

    @field_validator("ca_file")
    @classmethod
    def _ca(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        if v is None:
            return None
        path = resolve_path(v, info)
        if not path.is_file():
            raise ValueError(f"no CA certificate at {path}")
        return path

    @property
    def tls(self) -> bool:
        return parse_mqtt_url(self.url)[0]

    @property
    def host(self) -> str:
        return parse_mqtt_url(self.url)[1]

    @property
    def port(self) -> int:
        return parse_mqtt_url(self.url)[2]
