"""Keep secrets out of text that leaves the process: log lines, stored replies, errors.

Secrets are registered once (the gateway password when the client is built, API
tokens when they are checked) and every log record passing a handler that carries
``RedactingFilter`` has them replaced, in its message, its arguments and its
exception text.
"""

from __future__ import annotations

import html
import json
import logging
import threading
from collections.abc import Iterable
from urllib.parse import quote, quote_plus

MASK = "***"
# Short values would mask ordinary words all over the logs and reveal nothing anyway.
_MIN_SECRET_LENGTH = 4

_lock = threading.Lock()
_secrets: frozenset[str] = frozenset()


def _forms(secret: str) -> set[str]:
    # A password also travels URL-encoded in a form body or query string, and comes
    # back HTML-escaped in an error page or JSON-escaped in an API's reply.
    return {
        secret,
        quote(secret, safe=""),
        quote_plus(secret, safe=""),
        html.escape(secret),
        html.escape(secret, quote=False),
        json.dumps(secret)[1:-1],
    }


def register_secret(secret: str | None) -> None:
    """Mask this value (and its URL-encoded forms) wherever redaction applies."""
    global _secrets
    if not secret or len(secret) < _MIN_SECRET_LENGTH:
        return
    with _lock:
        _secrets = _secrets | _forms(secret)


def registered_secrets() -> frozenset[str]:
    """The values currently masked."""
    return _secrets


def redact(text: str, extra: Iterable[str] = ()) -> str:
    """``text`` with every registered secret, and each of ``extra``, replaced by a mask."""
    values = set(_secrets)
    for secret in extra:
        if secret and len(secret) >= _MIN_SECRET_LENGTH:
            values |= _forms(secret)
    # Longest first, so a secret that contains another is masked whole.
    for value in sorted(values, key=len, reverse=True):
        if value in text:
            text = text.replace(value, MASK)
    return text


class RedactingFilter(logging.Filter):
    """A logging filter that masks registered secrets in every record it passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not _secrets:
            return True
        message = record.getMessage()
        redacted = redact(message)
        if redacted != message:
            record.msg = redacted
            record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            formatted = logging.Formatter().formatException(record.exc_info)
            record.exc_text = redact(formatted)
            # The formatter would re-render exc_info; the redacted exc_text replaces it.
            record.exc_info = None
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def install(logger: logging.Logger | None = None) -> RedactingFilter:
    """Attach one RedactingFilter to every handler of ``logger`` (default: the root).

    Filters on handlers, not loggers, because a logger's filters do not apply to
    records propagated from its children.
    """
    target = logger or logging.getLogger()
    existing = next(
        (f for h in target.handlers for f in h.filters if isinstance(f, RedactingFilter)), None
    )
    flt = existing or RedactingFilter()
    for handler in target.handlers:
        if flt not in handler.filters:
            handler.addFilter(flt)
    return flt
