"""Page cursors: opaque to clients, the last row's sort key to the dispatcher.

Every listing pages by keyset, never by OFFSET: a page continues after
the sort key of the previous page's last row, so reaching a page costs an index
seek however deep it is, and a row written meanwhile neither repeats nor skips
one. The key travels as a cursor: a tag naming the listing and its version, then
the key's parts, base64url-encoded without padding (``j1:<job id>`` for the
API's job list). A cursor of one listing is refused by another, and anything
not made here is an InvalidCursorError, which every entry point answers as a
400 ``invalid_cursor`` (``dispatcher.errors.ANSWERS``).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt

from dispatcher.errors import InvalidCursorError

MAX_CURSOR_LENGTH = 200
"""Longer than any cursor made here; more is not one, and is not decoded."""
_SEPARATOR = ","
_MAX_ROW_ID = 2**63 - 1
_NOT_OURS = "the cursor is not one this dispatcher gave out"


def encode(tag: str, *key: str) -> str:
    """The cursor continuing listing ``tag`` after the row whose sort key is ``key``."""
    text = f"{tag}:{_SEPARATOR.join(key)}"
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode(tag: str, cursor: str, *, parts: int) -> list[str]:
    """The ``parts`` parts of the key in a cursor of listing ``tag``; InvalidCursorError
    for anything else."""
    if len(cursor) > MAX_CURSOR_LENGTH:
        raise InvalidCursorError(_NOT_OURS)
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidCursorError(_NOT_OURS) from None
    prefix = f"{tag}:"
    key = raw.removeprefix(prefix).split(_SEPARATOR)
    if not raw.startswith(prefix) or len(key) != parts:
        raise InvalidCursorError(_NOT_OURS)
    return key


def encode_id(tag: str, row_id: int) -> str:
    """The cursor of a listing sorted by a row id alone."""
    return encode(tag, str(row_id))


def decode_id(tag: str, cursor: str) -> int:
    """The row id in a cursor made by ``encode_id``."""
    [part] = decode(tag, cursor, parts=1)
    return _row_id(part)


def encode_time_id(tag: str, at: dt.datetime, row_id: int) -> str:
    """The cursor of a listing sorted by a time, ties broken by the row id."""
    return encode(tag, at.astimezone(dt.UTC).isoformat(), str(row_id))


def decode_time_id(tag: str, cursor: str) -> tuple[dt.datetime, int]:
    """The (time in UTC, row id) in a cursor made by ``encode_time_id``."""
    at_text, id_text = decode(tag, cursor, parts=2)
    try:
        at = dt.datetime.fromisoformat(at_text)
    except ValueError:
        raise InvalidCursorError(_NOT_OURS) from None
    if at.utcoffset() != dt.timedelta(0):
        raise InvalidCursorError(_NOT_OURS)
    return at, _row_id(id_text)


def _row_id(text: str) -> int:
    # ASCII digits only: int() would take other scripts' digits, signs and spaces.
    if not (text.isascii() and text.isdigit()) or len(text) > len(str(_MAX_ROW_ID)):
        raise InvalidCursorError(_NOT_OURS)
    row_id = int(text)
    if row_id > _MAX_ROW_ID:
        raise InvalidCursorError(_NOT_OURS)
    return row_id
