"""Keep secrets out of text that leaves the process: log lines, stored replies, errors.

Secrets are registered once (the gateway password when the client is built, API
tokens when they are checked, the database and broker passwords at start) and
every log record passing a handler that carries ``RedactingFilter`` has them
replaced, in its message, its arguments and its exception text.

``redact`` finds a secret in any encoding an echo may carry: it searches every
decoding of the text (``decodings.candidates``: percent, ``+``, HTML, JSON, and
mixtures of them) and masks the span of the original that decoded to it. It also
masks the value of any ``password=`` field and the password of any URL
(``redis://:password@host``), whatever those values are: an echoed form may carry
a password that is not ours to know, and a database or broker URL is logged by
more libraries than ours.

The same filter escapes control characters in every message (``sanitise``), so
nothing a request or a gateway reply carries into a log line can start a forged
line or drive a terminal.
"""

from __future__ import annotations

import functools
import html
import json
import logging
import re
import threading
from collections.abc import Iterable
from urllib.parse import quote, quote_plus

from dispatcher.domain import decodings

MASK = "***"
# Short values would mask ordinary words all over the logs and reveal nothing anyway.
_MIN_SECRET_LENGTH = 4
# Passes of masking at most: masking can only shorten what is left to find.
_MAX_PASSES = 3

_lock = threading.Lock()
_secrets: frozenset[str] = frozenset()

# ``password=value`` in a query or form, ``"password": "value"`` in JSON: the value.
_PASSWORD_FIELD = re.compile(
    r"""pass(?:word|wd) (?: \s*=\s* | ["']\s*:\s* )
        (?: "(?P<dq>(?:[^"\\\r\n]|\\.)*)" | '(?P<sq>[^'\r\n]*)' | (?P<bare>[^\s&"'<>]+) )""",
    re.IGNORECASE | re.VERBOSE,
)
# An echoed HTML form: <input name="password" ... value="...">.
_PASSWORD_INPUT = re.compile(
    r"""name\s*=\s*["']?pass(?:word|wd)["']?[^<>]*?\bvalue\s*=\s*
        (?: "(?P<dq>[^"]*)" | '(?P<sq>[^']*)' | (?P<bare>[^\s"'<>]+) )""",
    re.IGNORECASE | re.VERBOSE,
)
# A URL's password: scheme://user:password@host, up to the last '@' of the URL.
_URL_PASSWORD = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@]*:(?P<bare>\S*)@")
_VALUE_GROUPS = ("dq", "sq", "bare")

# C0 and C1 controls, DEL, the Unicode line and paragraph separators and the bidi
# overrides: whatever could end a log line early or make it read as something else.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_CONTROL_BUT_NEWLINE = re.compile(
    "[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]"
)


# Letters, digits and ``._-`` alone (as a gateway's message IDs nearly always are): no
# scheme of ``decodings`` decodes such a text (each needs one of ``% + & \``) and no
# password field or URL can be spelled in it (they need ``=``, a quote or ``:``).
_INERT = re.compile(r"[A-Za-z0-9._-]*")


@functools.lru_cache(maxsize=64)
def _forms(secret: str) -> frozenset[str]:
    # The common encodings, searched in the text as it stands (the decodings find
    # the rest); registered_secrets() lists them. Cached: the gateway password's
    # forms are asked for once per stored value of every reply.
    return frozenset(
        {
            secret,
            quote(secret, safe=""),
            quote(secret, safe="").lower(),
            quote_plus(secret, safe=""),
            html.escape(secret),
            html.escape(secret, quote=False),
            json.dumps(secret)[1:-1],
        }
    )


def register_secret(secret: str | None) -> None:
    """Mask this value (in any encoding) wherever redaction applies."""
    global _secrets
    if not secret or len(secret) < _MIN_SECRET_LENGTH:
        return
    with _lock:
        _secrets = _secrets | _forms(secret)


def registered_secrets() -> frozenset[str]:
    """The values currently masked, with their common encoded forms."""
    return _secrets


def _spans(text: str, needles: set[str]) -> list[tuple[int, int]]:
    """Spans of ``text`` that decode, in some scheme, to a needle or a password value."""
    found: list[tuple[int, int]] = []
    for decoding in decodings.candidates(text):
        decoded = decoding.text
        for needle in needles:
            start = decoded.find(needle)
            while start >= 0:
                found.append(decoding.span(start, start + len(needle)))
                start = decoded.find(needle, start + 1)
        for pattern in (_PASSWORD_FIELD, _PASSWORD_INPUT, _URL_PASSWORD):
            for match in pattern.finditer(decoded):
                groups = match.groupdict()
                group = next(g for g in _VALUE_GROUPS if groups.get(g) is not None)
                start, end = match.span(group)
                if end > start and decoded[start:end] != MASK:
                    found.append(decoding.span(start, end))
    return found


def _mask(text: str, spans: list[tuple[int, int]]) -> str:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    parts: list[str] = []
    at = 0
    for start, end in merged:
        parts += [text[at:start], MASK]
        at = end
    parts.append(text[at:])
    return "".join(parts)


def redact(text: str, extra: Iterable[str] = ()) -> str:
    """``text`` with every registered secret, each of ``extra``, every password
    field's value and every URL's password masked, in whatever encoding each appears."""
    needles = set(_secrets)
    for secret in extra:
        if secret and len(secret) >= _MIN_SECRET_LENGTH:
            needles |= _forms(secret)
    if _INERT.fullmatch(text) and not any(needle in text for needle in needles):
        # The text is its own only decoding and holds no secret: nothing to mask.
        # (A hundred accepted IDs per reply made the full search half a millisecond
        # of a dispatch thread's CPU per batch; docs/performance.md.)
        return text
    return _masked(text, needles)


def _masked(text: str, needles: set[str]) -> str:
    """``redact``'s full search, in every decoding, a few passes deep."""
    for _ in range(_MAX_PASSES):
        spans = _spans(text, needles)
        if not spans:
            break
        text = _mask(text, spans)
    return text


def _escape(match: re.Match[str]) -> str:
    return match.group().encode("unicode_escape").decode("ascii")


def sanitise(text: str) -> str:
    """``text`` with every control character written as its escape (``\\n``, ``\\x1b``)."""
    return _CONTROL.sub(_escape, text)


class RedactingFilter(logging.Filter):
    """A logging filter that masks secrets and escapes control characters in every
    record it passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = sanitise(redact(message))
        if cleaned != message:
            record.msg = cleaned
            record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            formatted = logging.Formatter().formatException(record.exc_info)
            # A traceback keeps its line breaks; its other controls are escaped.
            record.exc_text = _CONTROL_BUT_NEWLINE.sub(_escape, redact(formatted))
            # The formatter would re-render exc_info; the redacted exc_text replaces it.
            record.exc_info = None
        if record.stack_info:
            record.stack_info = _CONTROL_BUT_NEWLINE.sub(_escape, redact(record.stack_info))
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
