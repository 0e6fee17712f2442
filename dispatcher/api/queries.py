"""The API's side of job listings: opaque cursors, job id checks, a job's status.

The listing itself is ``Dispatcher.list_jobs_page`` (shared with the CLI).
Pagination is by cursor, newest first: the cursor is opaque to clients, a
version tag and the last job id seen, base64url-encoded.
"""

from __future__ import annotations

import base64
import binascii
import re

from dispatcher.persistence.db import Database
from dispatcher.persistence.reads.jobs import has_pending

_CURSOR_VERSION = "j1:"
JOB_ID = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")
"""What ``store.new_job_id`` makes: 26 Crockford base32 characters."""


class InvalidCursorError(ValueError):
    """A cursor this API did not hand out."""


def is_job_id(value: str) -> bool:
    """Whether ``value`` could be a job id (anything else cannot exist)."""
    return bool(JOB_ID.match(value))


def encode_cursor(job_id: str) -> str:
    """The cursor that continues a listing after ``job_id``."""
    return base64.urlsafe_b64encode((_CURSOR_VERSION + job_id).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    """The job id a cursor continues after; InvalidCursorError for anything else."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidCursorError("the cursor is not one this API gave out") from None
    job_id = raw.removeprefix(_CURSOR_VERSION)
    if not raw.startswith(_CURSOR_VERSION) or not is_job_id(job_id):
        raise InvalidCursorError("the cursor is not one this API gave out")
    return job_id


def job_status(db: Database, job_id: str) -> str:
    """``in_progress`` while any recipient of the job is pending, else ``completed``."""
    with db.transaction() as session:
        busy = has_pending(session, job_id)
    return "in_progress" if busy else "completed"
