"""Refusals as HTTP answers: one JSON shape for ``/v1``, the gateway's text for the drop-in.

Every 4xx and 5xx of ``/v1`` is ``{"error": {"code": ..., "message": ...}}``,
FastAPI's own validation errors included. The service's exceptions are
translated here, at the boundary, so routes just call the service: status and
code come from ``dispatcher.errors.ANSWERS``, the one table the drop-in and the
dashboard read too (a ValidationError is a 422 ``invalid_option``,
``no_recipients``, ... everywhere; a NotFoundError a 404 ``not_found``). What
the table does not cover is answered here: the database unreachable is a 503
``unavailable``, anything unexpected a 500 ``internal_error``.

Under the drop-in prefix the same failures answer in the gateway's own format,
the table's gateway code (``ERR:INVALID_REQUEST``, ``ERR:INTERNAL_ERROR``), never
JSON: a client written for the gateway reads nothing else.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from dispatcher.domain import redaction
from dispatcher.errors import DispatcherError, answer_for
from dispatcher.persistence.db import InterfaceError, OperationalError

log = logging.getLogger(__name__)

DROPIN_PREFIX = "/smsgateway"
# How long a client should wait before trying again after a 503.
UNAVAILABLE_RETRY_AFTER_S = 5
# Per-field problems listed in one answer; a request can fail in many more places.
MAX_DETAILS = 20
# A 401 says how to authenticate.
_CHALLENGE = {"WWW-Authenticate": "Bearer"}
_SERVER_FAULT = "the request failed on the server"


class ApiError(Exception):
    """A refusal the routes raise with its status, stable code and message."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        gateway_code: str = "INVALID_REQUEST",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.gateway_code = gateway_code
        """What the drop-in endpoint answers instead (``ERR:<gateway_code>``)."""


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    headers: dict[str, str] | None = None,
    details: list[dict[str, Any]] | None = None,
) -> JSONResponse:
    """The ``/v1`` error body."""
    error: dict[str, Any] = {"code": code, "message": redaction.redact(message)}
    if details is not None:
        error["details"] = details
    return JSONResponse({"error": error}, status_code=status, headers=headers)


def gateway_error(
    code: str, *, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """A drop-in refusal in the gateway's format: one line, ``ERR:<CODE>``."""
    return PlainTextResponse(f"ERR:{code}", status_code=status, headers=headers)


def _is_dropin(request: Request) -> bool:
    return request.url.path.startswith(DROPIN_PREFIX + "/")


def dropin_refusal(exc: DispatcherError) -> Response:
    """The drop-in's answer to ``exc``: the table's gateway code, as the gateway answers
    a refusal (HTTP 200, one ``ERR:<CODE>`` line; docs/design.md section 1)."""
    answer = answer_for(exc)
    if answer.status >= 500:
        log.error("drop-in request failed: %s", type(exc).__name__, exc_info=exc)
    return gateway_error(answer.gateway_code)


def _field_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    # Neither the input nor the context goes back: they can be large, and echo
    # whatever the client sent in a header.
    return [
        {
            "loc": [str(part) for part in error.get("loc", ())],
            "msg": str(error.get("msg", "")),
            "type": str(error.get("type", "")),
        }
        for error in list(exc.errors())[:MAX_DETAILS]
    ]


def _summary(details: list[dict[str, Any]]) -> str:
    if not details:
        return "the request is not valid"
    first = details[0]
    where = ".".join(first["loc"]) or "request"
    more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
    return f"{where}: {first['msg']}{more}"


async def _on_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    if _is_dropin(request):
        return gateway_error(exc.gateway_code, status=exc.status, headers=exc.headers)
    return error_response(exc.status, exc.code, exc.message, headers=exc.headers)


async def _on_request_validation(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    if _is_dropin(request):
        return gateway_error("INVALID_REQUEST")
    details = _field_errors(exc)
    if any(d["type"] == "json_invalid" for d in details):
        return error_response(
            400, "malformed_json", "the body is not valid JSON: " + _summary(details)
        )
    refusal = _our_refusal(exc)
    if refusal is not None:
        # A field our own checks read (a time, through dispatcher.domain.times) is
        # answered as the same refusal raised anywhere else: by the one handler.
        return await _on_dispatcher_error(request, refusal)
    return error_response(422, "invalid_request", _summary(details), details=details)


def _our_refusal(exc: RequestValidationError) -> DispatcherError | None:
    """The DispatcherError a field's validator raised, when it is the only problem."""
    errors = list(exc.errors())
    if len(errors) != 1:
        return None
    cause = (errors[0].get("ctx") or {}).get("error")
    return cause if isinstance(cause, DispatcherError) else None


async def _on_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    headers = dict(exc.headers) if exc.headers else None
    if _is_dropin(request):
        return gateway_error("INVALID_REQUEST", status=exc.status_code, headers=headers)
    try:
        code = HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        code = "http_error"
    return error_response(exc.status_code, code, str(exc.detail), headers=headers)


async def _on_dispatcher_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, DispatcherError)
    if _is_dropin(request):
        return dropin_refusal(exc)
    answer = answer_for(exc)
    if answer.status >= 500:
        # The text of a server fault may name hosts or settings: the log has it, not the
        # answer.
        log.error(
            "%s %s failed: %s", request.method, request.url.path, type(exc).__name__, exc_info=exc
        )
        return error_response(answer.status, answer.code, _SERVER_FAULT)
    headers = _CHALLENGE if answer.status == 401 else None
    return error_response(answer.status, answer.code, str(exc), headers=headers)


async def _on_database_away(request: Request, exc: Exception) -> Response:
    # The driver's text names hosts and may quote SQL; the log gets its class only.
    log.warning(
        "%s %s: database unavailable (%s)", request.method, request.url.path, type(exc).__name__
    )
    headers = {"Retry-After": str(UNAVAILABLE_RETRY_AFTER_S)}
    if _is_dropin(request):
        return gateway_error("INTERNAL_ERROR", status=503, headers=headers)
    return error_response(
        503, "unavailable", "the database is unavailable; try again shortly", headers=headers
    )


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    log.error(
        "%s %s failed: %s", request.method, request.url.path, type(exc).__name__, exc_info=exc
    )
    if _is_dropin(request):
        return gateway_error("INTERNAL_ERROR", status=500)
    return error_response(500, "internal_error", _SERVER_FAULT)


def install(app: FastAPI) -> None:
    """Register every translation above on ``app``."""
    app.add_exception_handler(ApiError, _on_api_error)
    app.add_exception_handler(RequestValidationError, _on_request_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http_exception)
    # Starlette finds a handler along the exception's MRO: one for the whole tree.
    app.add_exception_handler(DispatcherError, _on_dispatcher_error)
    for away in (OperationalError, InterfaceError):
        app.add_exception_handler(away, _on_database_away)
    app.add_exception_handler(Exception, _on_unexpected)
