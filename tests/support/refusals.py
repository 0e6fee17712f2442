"""Refusals that every entry point must answer as the one table says (``dispatcher.errors``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dispatcher.errors import (
    ConfigurationError,
    ConfirmationRequiredError,
    ConflictError,
    DispatcherError,
    InvalidOptionError,
    InvalidTextError,
    NoRecipientsError,
    NotFoundError,
    SenderNotAllowedError,
    TooManyRecipientsError,
)

REFUSALS: list[DispatcherError] = [
    InvalidOptionError("maxconcat must be from 1 to 6"),
    TooManyRecipientsError("101 numbers in one job; at most 100: split the request"),
    NoRecipientsError("no acceptable recipient"),
    InvalidTextError("text is empty"),
    SenderNotAllowedError("this key may send as 'Acme' only"),
    ConfirmationRequiredError("unknown recipients may have been sent: confirm"),
    ConflictError("Idempotency-Key used for another request"),
    NotFoundError("no job '01ZZ'"),
    ConfigurationError("no gateway password configured for secret-host.example"),
]
"""The same exceptions, raised through each entry point by its own tests (tests/api/test_api.py's
for /v1, test_dropin's, test_dashboard's): each must answer as the one table says."""


def refuse_with(exc: Exception) -> Callable[..., Any]:
    """A stand-in for a service method that refuses with ``exc``."""

    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise exc

    return refuse
