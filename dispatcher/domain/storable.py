"""Text the database can hold: no NUL character, no lone surrogate.

PostgreSQL refuses a NUL in a text value, and a lone surrogate (a JSON
``"\\ud800"`` escape, or bytes that are not UTF-8 on a command line, which Python
keeps as ``\\udcXX``) cannot be encoded as UTF-8 for any database at all. Either
would fail deep in the driver, as a 500 or a traceback, for what is the caller's
mistake. Every path that writes or looks up text a user gave checks it here
first and refuses it naming the field.
"""

from __future__ import annotations

import re

from dispatcher.errors import InvalidOptionError, ValidationError

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
REPLACEMENT = "\ufffd"


def unstorable(value: str) -> str | None:
    """Why ``value`` cannot be stored or looked up as text, or None when it can."""
    found = _UNSTORABLE.search(value)
    if found is None:
        return None
    if found.group() == "\x00":
        return "contains a NUL character"
    return "is not valid Unicode text (a lone surrogate, or bytes that are not UTF-8)"


def make_storable(text: str) -> str:
    """``text`` with each NUL and lone surrogate replaced by U+FFFD: for what arrived from
    outside and must be kept whatever it holds (a gateway reply), not refused."""
    return _UNSTORABLE.sub(REPLACEMENT, text)


def check_storable(
    value: str, field: str, *, error: type[ValidationError] = InvalidOptionError
) -> str:
    """``value`` unchanged, or ``error`` naming ``field`` when the database cannot hold it."""
    reason = unstorable(value)
    if reason is not None:
        raise error(f"{field} {reason}")
    return value
