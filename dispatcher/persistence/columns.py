"""Values fitted to the schema's bounded columns, in one place.

A gateway reply feeds several columns. Two of them hold it exactly and are
unbounded: the attempt's ``raw_reply`` (the whole reply) and a recipient's
``gateway_message_id``. The others are bounded (``error_code`` 64 characters,
causes and details 500, the attempt's ``host`` 255...), and an undocumented error
code, a cause quoting a long ID or a long client error would make the database
refuse the write of the whole batch's reply for one recipient's value. So
everything written there is fitted first, never refused:

- prose (causes, details, error messages, hosts, actors) is clipped to the
  column's width and ends in ``…``, so a reader sees that it was clipped;
- an error code is clipped to end in ``…`` and eight hex digits of the full
  code's SHA-256: it keeps its recognisable beginning, and the same long code
  always gives the same value, while two long codes that share a beginning stay
  apart (codes are counted and charted by value);
- a NUL or a lone surrogate, which no database text column takes, becomes U+FFFD.

The full value is always in the attempt's raw reply. Widths are read from the
models, so a migration that widens a column widens its fit. Widths count
characters, as PostgreSQL's ``varchar(n)`` does, so clipping a Python string,
which never splits a UTF-8 sequence, fits exactly.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping
from typing import Any

from sqlalchemy import String

from dispatcher.domain.storable import make_storable
from dispatcher.persistence.models import Attempt, Base, Recipient, StatusEvent

CLIPPED = "…"
"""Ends a value that was clipped to fit its column."""
CODE_DIGEST_CHARS = 8

_CODE_COLUMNS = frozenset({"error_code"})
_EXACT_COLUMNS = frozenset({"gateway_message_id"})
"""Stored exactly or not at all: a changed ID would point at another message."""


def clip(text: str, width: int) -> str:
    """``text`` in at most ``width`` characters, ending in ``…`` when it was cut."""
    if len(text) <= width:
        return text
    return text[: width - len(CLIPPED)] + CLIPPED


def clip_code(code: str, width: int) -> str:
    """An error code in at most ``width`` characters: its beginning, ``…`` and a digest."""
    if len(code) <= width:
        return code
    digest = hashlib.sha256(code.encode("utf-8", "surrogatepass")).hexdigest()
    tail = CLIPPED + digest[:CODE_DIGEST_CHARS]
    return code[: width - len(tail)] + tail


@functools.cache
def width_of(model: type[Base], name: str) -> int | None:
    """The width of a bounded string column, or None when it is unbounded."""
    column_type = model.__table__.c[name].type
    return column_type.length if isinstance(column_type, String) else None


def fit(model: type[Base], values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` (column name to value, for ``model``'s table) with every string
    made storable and fitted to its column; other values are left as they are.

    A gateway message ID is left exactly as it is: if the database cannot hold it,
    the write fails and the caller's careful path records that plainly.
    """
    fitted: dict[str, Any] = {}
    for name, value in values.items():
        if isinstance(value, str) and name not in _EXACT_COLUMNS:
            value = make_storable(value)
            width = width_of(model, name)
            if width is not None:
                value = clip_code(value, width) if name in _CODE_COLUMNS else clip(value, width)
        fitted[name] = value
    return fitted


def fit_code(code: str | None) -> str | None:
    """A recipient's error code fitted to ``recipients.error_code``."""
    return None if code is None else str(fit(Recipient, {"error_code": code})["error_code"])


def fit_cause(cause: str) -> str:
    """A status change's cause fitted to ``status_events.cause``."""
    return str(fit(StatusEvent, {"cause": cause})["cause"])


def fit_actor(actor: str) -> str:
    """Who made a status change, fitted to ``status_events.actor``."""
    return str(fit(StatusEvent, {"actor": actor})["actor"])


def fit_attempt(values: Mapping[str, Any]) -> dict[str, Any]:
    """An attempt's result columns fitted to ``attempts``; the raw reply stays whole."""
    return fit(Attempt, values)
