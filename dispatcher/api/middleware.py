"""ASGI middleware: the access log, the body-size limit and the UTF-8 check.

All are plain ASGI (not Starlette's ``BaseHTTPMiddleware``) so they see every
byte and every answer, including those of requests the app never routes.

**The access log** writes method, path, status and duration, and never the
query string: the drop-in endpoint receives the gateway's parameters, password
included, in the query of a GET, and so may any client that misuses ``/v1``.
Uvicorn's own access log, which prints the query, must stay off
(``dispatcher.api.server`` turns it off).

**The body limit** refuses a body larger than ``max_bytes`` with 413 as soon as
it is known to be too large: at once from its ``Content-Length``, or, for a
chunked body, when the bytes read so far pass the limit. Nothing past the limit
is ever held in memory, and the app never sees a refused request.

**The UTF-8 check** refuses with 400 a query string, a form (URL-encoded or
multipart) or a JSON body whose bytes are not UTF-8, instead of letting them reach
the routes as U+FFFD or Latin-1.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import unquote_to_bytes

from dispatcher.api.errors import DROPIN_PREFIX
from dispatcher.domain import redaction

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

access_log = logging.getLogger("dispatcher.api.access")


class AccessLogMiddleware:
    """One INFO line per request: ``METHOD /path STATUS DURATIONms``, no query string."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        logged = False

        def log_once() -> None:
            nonlocal logged
            if not logged:
                logged = True
                access_log.info(
                    "%s %s %d %.1fms",
                    scope.get("method", "-"),
                    _loggable_path(scope),
                    status,
                    (time.perf_counter() - started) * 1000.0,
                )

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                # Logged before the last byte leaves: whoever has the answer can find its line.
                log_once()
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            log_once()


class BodyLimitMiddleware:
    """413 for a request body over ``max_bytes``, decided while it is read."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(scope, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                # The client went away; let the app see the disconnect.
                chunks.clear()
                await self.app(scope, _replay(None, message, receive), send)
                return
            body: bytes = message.get("body", b"")
            size += len(body)
            if size > self.max_bytes:
                await self._refuse(scope, send)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        whole = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        await self.app(scope, _replay(whole, None, receive), send)

    async def _refuse(self, scope: Scope, send: Send) -> None:
        message = f"the request body is larger than {self.max_bytes} bytes"
        # The rest of the body will not be read: the connection cannot be reused.
        await refuse(scope, send, 413, "body_too_large", message, close=True)


class EncodingMiddleware:
    """400 for a query string, form or JSON body that is not UTF-8, before the app reads it.

    Starlette decodes query strings and forms with ``errors="replace"``, so bytes
    that are not UTF-8 would reach the routes as U+FFFD and be sent or stored as
    if the client had meant them; FastAPI answers a JSON body that is not UTF-8
    with a 400 that does not say why. Here both are refused with the reason.
    Runs inside ``BodyLimitMiddleware``, so the body it reads is already bounded.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if not _is_utf8(unquote_to_bytes(scope.get("query_string", b""))):
            await refuse(scope, send, 400, "invalid_encoding", "the query string is not UTF-8")
            return
        media_type = _media_type(scope)
        if media_type == "application/x-www-form-urlencoded":
            decode: Callable[[bytes], bytes] = unquote_to_bytes
            code, reason = "invalid_encoding", "the form is not UTF-8"
        elif media_type == "multipart/form-data":
            # Starlette reads a part that is not UTF-8 as Latin-1. No route takes a
            # file, so every byte of such a body is a field name or value.
            decode = bytes
            code, reason = "invalid_encoding", "the form is not UTF-8"
        elif media_type == "application/json" or media_type.endswith("+json"):
            # RFC 8259: JSON between systems is UTF-8; the same code as any other
            # body that is not JSON.
            decode = bytes
            code, reason = "malformed_json", "the body is not valid JSON: it is not UTF-8"
        else:
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay(None, message, receive), send)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if not _is_utf8(decode(body)):
            await refuse(scope, send, 400, code, reason)
            return
        whole = {"type": "http.request", "body": body, "more_body": False}
        await self.app(scope, _replay(whole, None, receive), send)


async def refuse(
    scope: Scope, send: Send, status: int, code: str, message: str, *, close: bool = False
) -> None:
    """Answer ``status`` before the app sees the request: the ``/v1`` error body, or
    ``ERR:INVALID_REQUEST`` under the drop-in prefix (its clients read nothing else)."""
    if str(scope.get("path", "")).startswith(DROPIN_PREFIX + "/"):
        body = b"ERR:INVALID_REQUEST"
        content_type = b"text/plain; charset=utf-8"
    else:
        body = json.dumps({"error": {"code": code, "message": message}}).encode()
        content_type = b"application/json"
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _media_type(scope: Scope) -> str:
    for name, value in scope.get("headers", []):
        if name == b"content-type":
            return str(value.decode("latin-1").split(";", 1)[0].strip().lower())
    return ""


def _loggable_path(scope: Scope) -> str:
    """The request's path for a log line: never its query string, never a line break.

    The raw path is still percent-encoded, so a ``%0A`` in it cannot start a forged
    log line, and what else it holds goes through the one sanitiser every log line
    passes (``redaction.sanitise``); ``scope["query_string"]`` is never read here.
    """
    raw = scope.get("raw_path")
    path = raw.decode("ascii", "backslashreplace") if isinstance(raw, bytes) else None
    if path is None:
        path = str(scope.get("path", "-"))
    return redaction.sanitise(path.split("?", 1)[0])


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _replay(first: Message | None, disconnect: Message | None, receive: Receive) -> Receive:
    """A ``receive`` that hands out the buffered body once, then defers to the server."""
    pending = [m for m in (first, disconnect) if m is not None]

    async def replayed() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed
