"""The API's side of job listings: opaque cursors, job id checks, a job's status.

The listing itself is ``Dispatcher.list_jobs_page`` (shared with the CLI).
Pagination is by cursor, newest first: the cursor is opaque to clients, a
version tag and the last job id seen, in the encoding every listing shares
(``dispatcher.domain.cursors``).
"""

from __future__ import annotations

import re

from dispatcher.domain import cursors
from dispatcher.errors import InvalidCursorError
from dispatcher.persistence.db import Database
from dispatcher.persistence.reads.jobs import has_pending

__all__ = ["InvalidCursorError", "decode_cursor", "encode_cursor", "is_job_id", "job_status"]

_CURSOR_TAG = "j1"
JOB_ID = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")
"""What ``store.new_job_id`` makes: 26 Crockford base32 characters."""


def is_job_id(value: str) -> bool:
    """Whether ``value`` could be a job id (anything else cannot exist)."""
    return bool(JOB_ID.match(value))


def encode_cursor(job_id: str) -> str:
    """The cursor that continues a listing after ``job_id``."""
    return cursors.encode(_CURSOR_TAG, job_id)


def decode_cursor(cursor: str) -> str:
    """The job id a cursor continues after; InvalidCursorError for anything else."""
    [job_id] = cursors.decode(_CURSOR_TAG, cursor, parts=1)
    if not is_job_id(job_id):
        raise InvalidCursorError("the cursor is not one this dispatcher gave out")
    return job_id


def job_status(db: Database, job_id: str) -> str:
    """``in_progress`` while any recipient of the job is pending, else ``completed``."""
    with db.transaction() as session:
        busy = has_pending(session, job_id)
    return "in_progress" if busy else "completed"
