"""Times given by users: read from ISO 8601, put in UTC, refused when out of range.

Every entry point (``send()``, ``/v1``, the dashboard, the CLI, the audit
export) turns the times it is given into aware UTC datetimes here. A time at
the edge of the calendar that has no UTC equivalent (``0001-01-01T00:00+01:00``,
``9999-12-31T23:59-23:59``) is then one clear refusal naming the field, rather
than an OverflowError wherever it happened to be converted first.
"""

from __future__ import annotations

import datetime as dt

from dispatcher.errors import InvalidOptionError

# Longer than any ISO 8601 time with microseconds and an offset; more is not a time.
MAX_TIME_TEXT = 64
EXAMPLE = "2026-11-24T09:00:00+00:00"


def to_utc(value: object, field: str, *, assume_utc: bool = True) -> dt.datetime:
    """``value`` (a datetime) in UTC, or InvalidOptionError naming ``field``.

    A time without an offset is read as UTC when ``assume_utc``; otherwise it is
    refused, for times where guessing the zone would send hours early or late.
    """
    if not isinstance(value, dt.datetime):
        raise InvalidOptionError(f"{field} must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        if not assume_utc:
            raise InvalidOptionError(
                f"{field} must be timezone-aware (e.g. {EXAMPLE}); "
                f"got {value.isoformat()} with no offset"
            )
        return value.replace(tzinfo=dt.UTC)
    try:
        return value.astimezone(dt.UTC)
    except OverflowError:
        raise InvalidOptionError(
            f"{field} {value.isoformat()} is out of range: it has no time in UTC (years 1 to 9999)"
        ) from None


def parse_time(text: str, field: str, *, assume_utc: bool = True) -> dt.datetime:
    """An ISO 8601 date or time (``2026-11-24``, ``2026-11-24T09:00:00+01:00``, ``...Z``)
    in UTC, or InvalidOptionError naming ``field``; see ``to_utc`` for ``assume_utc``."""
    stripped = text.strip()
    try:
        if len(stripped) > MAX_TIME_TEXT:
            raise ValueError(stripped)
        parsed = dt.datetime.fromisoformat(stripped)
    except ValueError:
        shown = stripped if len(stripped) <= 40 else stripped[:40] + "..."
        raise InvalidOptionError(
            f"{field} must be an ISO 8601 date or time like {EXAMPLE} or 2026-11-24, got {shown!r}"
        ) from None
    return to_utc(parsed, field, assume_utc=assume_utc)


def utcnow() -> dt.datetime:
    """The current time, timezone-aware UTC."""
    return dt.datetime.now(dt.UTC)
