"""Refusals as HTTP answers: one JSON shape for ``/v1``, the gateway's text for the drop-in.

Every 4xx and 5xx of ``/v1`` is ``{"error": {"code": ..., "message": ...}}``,
FastAPI's own validation errors included. The service's exceptions are
translated here, at the boundary, so routes just call the service:

| exception | status | code |
|---|---|---|
| NotFoundError | 404 | ``not_found`` |
| ConfirmationRequiredError | 409 | ``confirmation_required`` |
| ConflictError | 409 | ``idempotency_conflict`` |
| SenderNotAllowedError | 403 | ``sender_not_allowed`` |
| other ValidationError | 422 | ``invalid_number``, ``no_recipients``, ``invalid_text``, ... |
| AuthenticationError | 401 | ``unauthorized`` |
| the database unreachable | 503 | ``unavailable`` |

Under the drop-in prefix the same failures answer in the gateway's own format
(``ERR:INVALID_REQUEST``, ``ERR:INTERNAL_ERROR``), never JSON: a client written
for the gateway reads nothing else.
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
from dispatcher.errors import (
    AuthenticationError,
    ConfirmationRequiredError,
    ConflictError,
    InvalidNumberError,
    InvalidOptionError,
    InvalidSenderError,
    InvalidTextError,
    NoRecipientsError,
    NotFoundError,
    SenderNotAllowedError,
    ValidationError,
)
from dispatcher.persistence.db import InterfaceError, OperationalError

log = logging.getLogger(__name__)

DROPIN_PREFIX = "/smsgateway"
# How long a client should wait before trying again after a 503.
UNAVAILABLE_RETRY_AFTER_S = 5
# Per-field problems listed in one answer; a request can fail in many more places.
MAX_DETAILS = 20

_VALIDATION_CODES: list[tuple[type[ValidationError], str]] = [
    (InvalidNumberError, "invalid_number"),
    (NoRecipientsError, "no_recipients"),
    (InvalidTextError, "invalid_text"),
    (InvalidSenderError, "invalid_sender"),
    (InvalidOptionError, "invalid_option"),
]


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


def validation_code(exc: ValidationError) -> str:
    """The stable code of a service ValidationError."""
    for cls, code in _VALIDATION_CODES:
        if isinstance(exc, cls):
            return code
    return "invalid_request"


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
    return error_response(422, "invalid_request", _summary(details), details=details)


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
    if isinstance(exc, NotFoundError):
        status, code = 404, "not_found"
    elif isinstance(exc, ConfirmationRequiredError):
        status, code = 409, "confirmation_required"
    elif isinstance(exc, ConflictError):
        status, code = 409, "idempotency_conflict"
    elif isinstance(exc, SenderNotAllowedError):
        status, code = 403, "sender_not_allowed"
    elif isinstance(exc, ValidationError):
        status, code = 422, validation_code(exc)
    elif isinstance(exc, AuthenticationError):
        return error_response(401, "unauthorized", str(exc), headers={"WWW-Authenticate": "Bearer"})
    else:  # pragma: no cover - the handler is registered for these classes only
        raise exc
    if _is_dropin(request):
        return gateway_error("INVALID_REQUEST", status=status)
    return error_response(status, code, str(exc))


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
    return error_response(500, "internal_error", "the request failed on the server")


def install(app: FastAPI) -> None:
    """Register every translation above on ``app``."""
    app.add_exception_handler(ApiError, _on_api_error)
    app.add_exception_handler(RequestValidationError, _on_request_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http_exception)
    for cls in (NotFoundError, ConflictError, ValidationError, AuthenticationError):
        app.add_exception_handler(cls, _on_dispatcher_error)
    for away in (OperationalError, InterfaceError):
        app.add_exception_handler(away, _on_database_away)
    app.add_exception_handler(Exception, _on_unexpected)
