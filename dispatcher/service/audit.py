"""The audit trail's CSV export.

The retention purge and the erasure live in ``dispatcher.service.privacy``; they
are re-exported here, where the CLI and the tests have always found them.

``export_csv`` streams what happened (one row per status change, or per recipient)
to a time range, a number or a job, page by page (keyset pages, each read in its
own short transaction), so memory stays flat over millions of rows. Message text
is never in it.
"""

from __future__ import annotations

import csv
import datetime as dt
import enum
import io
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from dispatcher.domain.numbers import normalise
from dispatcher.domain.tenancy import EVERY_JOB, Viewer
from dispatcher.domain.times import to_utc
from dispatcher.errors import InvalidOptionError, NotFoundError
from dispatcher.persistence import store
from dispatcher.persistence.db import Database
from dispatcher.persistence.store import visible_to
from dispatcher.service import history
from dispatcher.service.privacy import erase as erase
from dispatcher.service.privacy import erase_preview as erase_preview
from dispatcher.service.privacy import purge as purge

EXPORT_PAGE_ROWS = 1000


class ExportKind(enum.StrEnum):
    """What one row of an export stands for."""

    EVENTS = "events"
    """One status change of one recipient: the full story, in order."""
    RECIPIENTS = "recipients"
    """One recipient as it stands now: where each SMS ended."""


EVENT_COLUMNS = (
    "at",
    "job_id",
    "reference",
    "created_by",
    "recipient_id",
    "number",
    "from_status",
    "to_status",
    "cause",
    "actor",
    "attempt_id",
    "attempt_no",
    "host",
    "http_status",
    "current_status",
    "gateway_message_id",
    "error_code",
    "attempts",
    "event_id",
)
RECIPIENT_COLUMNS = (
    "created_at",
    "job_id",
    "reference",
    "created_by",
    "recipient_id",
    "number",
    "status",
    "gateway_message_id",
    "error_code",
    "error_detail",
    "attempts",
    "next_attempt_at",
    "updated_at",
    "purged_at",
)

# Spreadsheets run a cell that starts with one of these as a formula.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"[+-]?[0-9]+(\.[0-9]+)?")


def safe_cell(value: object) -> str:
    """One CSV cell: times in ISO 8601 with their zone, text that a spreadsheet would
    run as a formula prefixed with ``'``; a plain signed number is left as it is."""
    if value is None:
        return ""
    if isinstance(value, dt.datetime):
        return value.isoformat()
    text = str(value)
    if text.startswith(_FORMULA_START) and not _PLAIN_NUMBER.fullmatch(text):
        return "'" + text
    return text


def _utc(value: dt.datetime | None, name: str) -> dt.datetime | None:
    return None if value is None else to_utc(value, name)


@dataclass(frozen=True, slots=True)
class _Plan:
    kind: ExportKind
    selection: store.AuditSelection


def _plan_export(
    db: Database,
    *,
    since: dt.datetime | None,
    until: dt.datetime | None,
    number: str | None,
    job_id: str | None,
    kind: str,
    default_region: str,
    viewer: Viewer,
) -> _Plan:
    try:
        kind_ = ExportKind(kind)
    except ValueError:
        raise InvalidOptionError(
            f"kind must be one of {', '.join(k.value for k in ExportKind)}, not {kind!r}"
        ) from None
    since, until = _utc(since, "since"), _utc(until, "until")
    if since is not None and until is not None and since >= until:
        raise InvalidOptionError("since must be before until")
    wanted = normalise(number, default_region) if number is not None else None
    if job_id is not None:
        with db.transaction() as session:
            if store.get_job(session, job_id=job_id, owner_key_id=viewer.owner_key_id) is None:
                raise NotFoundError(f"no job {job_id!r}")
    if since is None and until is None and wanted is None and job_id is None:
        raise InvalidOptionError(
            "say what to export: a time range (since, until), a number or a job"
        )
    selection = visible_to(
        viewer, store.AuditSelection(since=since, until=until, number=wanted, job_id=job_id)
    )
    return _Plan(kind_, selection)


def export_csv(
    db: Database,
    *,
    since: dt.datetime | None,
    until: dt.datetime | None,
    number: str | None = None,
    job_id: str | None = None,
    kind: str = "events",
    default_region: str = "GB",
    actor: str | None = None,
    viewer: Viewer = EVERY_JOB,
) -> Iterator[str]:
    """The audit of a time range, a number (any format) or a job, as CSV lines.

    With ``actor``, the export itself is audited in operator_actions (who, when, which
    range, job and kind; whether a number was asked, never the number itself: the
    action log must not become a second copy of what retention and erasure remove).
    Only the rows of jobs ``viewer`` may see are exported; a job it may not see is
    NotFoundError, as one that does not exist.

    ``kind="events"``: one row per status change in ``[since, until)``;
    ``kind="recipients"``: one row per recipient of the jobs created in it. Times
    carry their zone (UTC); message text is never included. Arguments are checked
    at once (InvalidOptionError, InvalidNumberError, NotFoundError), before the
    first line; the rows are then read a page at a time, each page in its own
    short transaction.
    """
    plan = _plan_export(
        db,
        since=since,
        until=until,
        number=number,
        job_id=job_id,
        kind=kind,
        default_region=default_region,
        viewer=viewer,
    )
    if actor is not None:
        with db.transaction() as session:
            store.record_action(
                session,
                actor=actor,
                action="export",
                target=job_id,
                detail={
                    "kind": kind,
                    "since": since.isoformat() if since else None,
                    "until": until.isoformat() if until else None,
                    "number_given": number is not None,
                },
                affected=0,
            )
    return _stream(db, plan)


def _stream(db: Database, plan: _Plan) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")

    def line(cells: Iterable[object]) -> str:
        buffer.seek(0)
        buffer.truncate()
        writer.writerow(cells)
        return buffer.getvalue()

    columns: tuple[str, ...]
    if plan.kind is ExportKind.EVENTS:
        columns = EVENT_COLUMNS
        rows = history.event_rows(db, plan.selection, page_rows=EXPORT_PAGE_ROWS)
    else:
        columns = RECIPIENT_COLUMNS
        query, key = store.audit_recipients_query(plan.selection)
        rows = history.pages(db, query, key, page_rows=EXPORT_PAGE_ROWS)
    yield line(columns)
    for values in rows:
        yield line(safe_cell(values[name]) for name in columns)
