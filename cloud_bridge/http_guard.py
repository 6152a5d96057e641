"""What every `/api/` request passes before a route sees it (docs/limits.md).

The token is checked before a body byte is read, a body over `[limits] body_bytes` is
refused (413) while it streams, and JSON bodies are parsed strictly (no NaN or Infinity,
UTF-8, bounded depth), so no client can make the bridge read, parse or store what it
would refuse anyway.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import HTTPException, Request, Response, status
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cloud_bridge.api_schema import unprocessable
from o2o_protocol.limits import LimitExceeded, Limits, check_json


class _StrictJsonRequest(Request):
    """A request whose JSON body is parsed strictly: NaN and Infinity are not JSON, and
    the shop's limits (depth, string and item counts) are checked before any model sees
    the value. Every refusal is a 422 in the validation-error shape."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            try:
                value = json.loads(body, parse_constant=_not_json)
            except json.JSONDecodeError:
                raise  # FastAPI's own 422 (json_invalid), with the position
            except (ValueError, RecursionError) as exc:
                msg = str(exc) if isinstance(exc, _NotJson) else f"not JSON: {type(exc).__name__}"
                raise unprocessable(msg, "body") from None
            limits: Limits = self.app.state.limits
            try:
                check_json(value, limits, what="body")
            except LimitExceeded as exc:
                raise unprocessable(str(exc), "body") from None
            self._json = value
        return self._json


class _NotJson(ValueError):
    pass


def _not_json(constant: str) -> Any:
    raise _NotJson(f"{constant} is not JSON: numbers must be finite")


class StrictJsonRoute(APIRoute):
    """Every route of the app reads its JSON body through `_StrictJsonRequest`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            return await handler(_StrictJsonRequest(request.scope, request.receive))

        return strict


class _TooLarge(HTTPException):
    """Raised from `receive` past the limit. An HTTPException, so FastAPI's body reading
    passes it on as it is (its own answer for other errors there is a 400)."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            status.HTTP_413_CONTENT_TOO_LARGE,
            _too_large(limit),
            headers={"Connection": "close"},
        )


class RequestGuard:
    """ASGI middleware: authenticate first, then cap the body, before anything reads it.

    On `/api/`, a missing or wrong token is a 401 before a byte of the body is read; then
    a `Content-Length` over the limit is a 413 at once, and a body sent without one
    (chunked) is counted while it arrives and cut off with a 413 past the limit, so no
    request can make the bridge hold more than `limit` bytes of it.
    """

    def __init__(
        self, app: ASGIApp, *, authenticated: Callable[[str | None], bool], limit: int
    ) -> None:
        self.app = app
        self.authenticated = authenticated
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/api/"):
            await self.app(scope, receive, send)  # the page and /health read no body
            return
        headers = {k.lower(): v for k, v in scope["headers"]}
        given = headers.get(b"authorization")
        if not self.authenticated(None if given is None else given.decode("latin-1")):
            await _refuse(send, 401, "missing or wrong API token", b"Bearer")
            return
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            await _refuse(send, 413, _too_large(self.limit))
            return

        received = 0
        started = False

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise _TooLarge(self.limit)
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except _TooLarge:
            if started:
                raise
            await _refuse(send, 413, _too_large(self.limit))


def _too_large(limit: int) -> str:
    return f"the body is larger than {limit} bytes ([limits] body_bytes)"


async def _refuse(send: Send, code: int, detail: str, challenge: bytes | None = None) -> None:
    """Answer at once, and close: the body the client may still be sending is never read."""
    body = json.dumps({"detail": detail}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    if challenge:
        headers.append((b"www-authenticate", challenge))
    await send({"type": "http.response.start", "status": code, "headers": headers})
    await send({"type": "http.response.body", "body": body})
