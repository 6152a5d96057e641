"""One service, many stores (docs/chain.md): which store a request is for, and the
chain's figures.

Each store keeps the app it would have alone (`api.create_app` on its own config view,
tokens, key and services), so nothing a store's routes do can reach another store's
data. `ChainApp` sits in front of them and picks one per request:

- a store's token (full or read-only) goes to that store's app; `?store=` naming another
  store is a 403;
- the chain token (read-only over every store) reads `/api/v1/chain`, or any read route
  of one store with `?store=<id>`; it changes nothing (the store's app answers 403);
- without a token: `/health` (every store's runtime), `/m/<code>` member pages (the
  store the code names), `/j?store=<id>`, the dashboard page and `/openapi.json`.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qs, unquote

from starlette.types import ASGIApp, Receive, Scope, Send

from cloud_bridge.config import BridgeConfig
from cloud_bridge.db import Repository
from o2o_protocol.codes import decode_unverified, extract_token

#: The chain's figures route (read by the chain token only).
CHAIN_PATH = "/api/v1/chain"


def chain_figures(repo: Repository, views: list[BridgeConfig]) -> dict[str, Any]:
    """Today's figures of every store (each on its own shop day) and the chain's total:
    every count summed, the alerts of any store raised."""
    stores = [repo.today_stats(v.store, zone=v.zone()) for v in views]
    total: dict[str, Any] = {}
    for stats in stores:
        for key, value in stats.items():
            if isinstance(value, bool) or key in ("store", "day", "ts"):
                continue
            if isinstance(value, int):
                total[key] = total.get(key, 0) + value
            elif isinstance(value, dict) and key != "alerts":
                sub = total.setdefault(key, {})
                for k, n in value.items():
                    sub[k] = sub.get(k, 0) + n
        for alert, on in stats.get("alerts", {}).items():
            total.setdefault("alerts", {})
            total["alerts"][alert] = bool(total["alerts"].get(alert)) or bool(on)
    total.pop("rating_average_today", None)
    rated = [(s["ratings_today"], s["rating_average_today"]) for s in stores]
    n = sum(c for c, _ in rated)
    total["rating_average_today"] = round(sum(c * (a or 0) for c, a in rated) / n, 2) if n else None
    return {"stores": stores, "total": total}


class ChainApp:
    """ASGI: the store apps of one service behind one address, the store picked by the
    bearer token (see the module's docstring)."""

    def __init__(
        self,
        apps: Mapping[str, ASGIApp],
        tokens: Mapping[str, tuple[str, str | None]],
        chain_token: str | None,
        health: Callable[[], dict[str, Any]],
    ) -> None:
        """`apps` and `tokens` by store id, the top-level store first; `health`: every
        store's runtime, for `/health`."""
        self.apps = dict(apps)
        self.first = next(iter(self.apps))
        self._tokens = [
            (t.encode(), store) for store, pair in tokens.items() for t in pair if t is not None
        ]
        self._chain = chain_token.encode() if chain_token else None
        self.health = health

    def _who(self, scope: Scope) -> str | None:
        """The store a request's token is for, "*" for the chain token, None for none."""
        value = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        scheme, _, secret = value.partition(" ")
        if scheme.lower() != "bearer" or not secret:
            return None
        given = secret.encode()
        found = None
        for token, store in self._tokens:  # every comparison made: constant time per token
            if hmac.compare_digest(given, token):
                found = store
        if self._chain is not None and hmac.compare_digest(given, self._chain):
            found = "*"
        return found

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.apps[self.first](scope, receive, send)
            return
        path: str = scope["path"]
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        asked = (query.get("store") or [None])[0]
        if path == "/health":
            await self._health(send)
            return
        if not path.startswith("/api/"):
            await self.apps[self._page_store(path, asked)](scope, receive, send)
            return
        who = self._who(scope)
        if who is None:
            # The first store's guard answers 401, exactly as a single shop's would.
            await self.apps[self.first](scope, receive, send)
            return
        if who == "*":
            if path == CHAIN_PATH:
                await self.apps[self.first](scope, receive, send)
                return
            if asked is None:
                await _answer(
                    send,
                    422,
                    "the chain token reads one store at a time: add ?store=<id> "
                    f"(stores: {', '.join(self.apps)}), or read {CHAIN_PATH}",
                )
                return
            if asked not in self.apps:
                await _answer(send, 404, "no such store in this service")
                return
            await self.apps[asked](scope, receive, send)
            return
        if asked is not None and asked != who:
            await _answer(send, 403, "this token is for another store")
            return
        await self.apps[who](scope, receive, send)

    def _page_store(self, path: str, asked: str | None) -> str:
        """The store of a page without a token: the one a member code names, else
        `?store=`, else the first."""
        if path.startswith("/m/"):
            token = path[3:].split("/", 1)[0]
            payload = decode_unverified(extract_token(unquote(token)))
            store = getattr(payload, "st", None)
            if isinstance(store, str) and store in self.apps:
                return store
        if asked in self.apps:
            return str(asked)
        return self.first

    async def _health(self, send: Send) -> None:
        body = self.health()
        await _answer(send, 200 if body["status"] == "ok" else 503, body=body)


async def _answer(
    send: Send, code: int, detail: str | None = None, body: dict[str, Any] | None = None
) -> None:
    data = json.dumps(body if body is not None else {"detail": detail}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(data)).encode()),
    ]
    if body is None:  # a refusal: whatever body the client still sends is never read
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": code, "headers": headers})
    await send({"type": "http.response.body", "body": data})


def service_health(checks: Mapping[str, Callable[[], dict[str, Any]]]) -> dict[str, Any]:
    """`/health` of a service with several stores: each store's runtime verdict, and
    "degraded" with the problems prefixed by the store's id when any store is."""
    stores = {store: check() for store, check in checks.items()}
    problems = [f"{s}: {p}" for s, h in stores.items() for p in h.get("problems", [])]
    degraded = any(h.get("status") != "ok" for h in stores.values())
    return {
        "status": "degraded" if degraded else "ok",
        "problems": problems,
        # Every store's link connected and subscribed (what a one-shop /health says).
        "mqtt_connected": all(h.get("mqtt_connected") for h in stores.values()),
        "stores": stores,
    }
