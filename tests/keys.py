"""Signing keys and code issuing for tests: the issuer's side of the contract."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from o2o_protocol.codes import b64url_encode, issue_code, key_id, public_key_bytes


@dataclass
class Issuer:
    store: str = "s1"
    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    #: "Now" for `iat`, `exp` and `at` defaults. Tests that decide at a fixed time pass
    #: the same time here: a code issued minutes later (a long suite) is not valid yet.
    clock: Callable[[], float] = time.time

    @property
    def kid(self) -> str:
        return key_id(self.key.public_key())

    @property
    def public_keys(self) -> dict[str, Ed25519PublicKey]:
        return {self.kid: self.key.public_key()}

    @property
    def config_keys(self) -> dict[str, str]:
        return {self.kid: b64url_encode(public_key_bytes(self.key.public_key()))}

    def code(self, t: str, id: str, *, store: str | None = None, **fields: Any) -> str:
        now = int(self.clock())
        fields.setdefault("iat", now - 60)
        if t in ("c", "p", "r"):
            fields.setdefault("exp", now + 86400)
        if t == "p":
            fields.setdefault("o", f"order-{id}")
        if t == "r":
            fields.setdefault("at", now)
        return issue_code(self.key, type=t, id=id, store=store or self.store, **fields)
