"""Writing a job at enqueue: its id, its row, its batches and recipients, and the
lookup that makes a replayed idempotency key find the job it made.

Rows go in by Core INSERTs, a large job's recipients by COPY on PostgreSQL, and a
job of at most one batch by one statement there: at enqueue the statements' own
cost, not their rows', is most of a small ``send()``.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import time
from collections.abc import Collection, Sequence
from typing import Any, cast

from sqlalchemy import Table, func, insert, select, text
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import TextClause

from dispatcher.domain.statuses import BatchStatus, RecipientStatus
from dispatcher.persistence import dialect
from dispatcher.persistence.models import Batch, Job, Recipient
from dispatcher.persistence.store._common import json_rows
from dispatcher.persistence.store.transitions import record_transitions

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_job_id() -> str:
    """A 26-character, time-ordered, unguessable job id (ULID layout).

    Time first keeps index inserts at the right-hand edge of the primary key; the
    80 random bits keep ids unguessable across many producers.
    """
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def insert_job(session: Session, *, job: Job) -> None:
    """Add a job row (the columns ``job`` was given, defaults for the rest).

    A Core INSERT rather than ``session.add``: the unit of work's flush cost more
    than the round trip for a one-recipient job, and nothing reads the object back.
    """
    given = vars(job)
    # Values as parameters, not .values(): the compiled statement is cached.
    session.execute(
        insert(Job), {c.key: given[c.key] for c in Job.__table__.columns if c.key in given}
    )


def _table(model: type[Batch | Recipient]) -> Table:
    """A model's Core table. Inserting into it skips the ORM's bulk-insert layer,
    which cost a one-recipient ``send()`` a sixth of its CPU (2.0 to 1.65 ms)."""
    return cast(Table, model.__table__)


def insert_batches(
    session: Session,
    *,
    job_id: str,
    count: int,
    due_at: dt.datetime,
    lane: int = 1,
    expires_at: dt.datetime | None = None,
    now: dt.datetime | None = None,
    attempts: int = 0,
) -> list[int]:
    """Insert ``count`` queued batches for a job and return their ids in order.

    ``due_at`` is when they are first claimable (a ``send_at`` in the future keeps
    them waiting), ``lane`` their claim order, ``expires_at`` when they stop being
    worth sending; ``now`` (default ``due_at``) stamps the rows. ``attempts``: the
    attempt number their first claim comes after (an operator's retry continues its
    recipients' count).
    """
    if count == 0:
        return []
    stamp = now or due_at
    rows = [
        {
            "job_id": job_id,
            "status": BatchStatus.QUEUED,
            "due_at": due_at,
            "attempts": attempts,
            "created_at": stamp,
            "updated_at": stamp,
            "lane": lane,
            "expires_at": expires_at,
        }
        for _ in range(count)
    ]
    table = _table(Batch)
    result = session.execute(
        insert(table).returning(table.c.id, sort_by_parameter_order=True), rows
    )
    return [row[0] for row in result]


# Below this many rows an INSERT costs no more than COPY's extra round trip.
COPY_MIN_ROWS = 50


def insert_recipients(session: Session, *, rows: Sequence[dict[str, Any]]) -> None:
    """Bulk-insert recipient rows (dicts of Recipient columns).

    On PostgreSQL a large job goes in by COPY, several times faster than a
    multi-row INSERT for tens of thousands of rows; same transaction, same rows.
    """
    if not rows:
        return
    if len(rows) >= COPY_MIN_ROWS and dialect.is_postgresql(session):
        _copy_rows(session, Recipient.__table__, rows)
    else:
        # A Core executemany takes its columns from the first row: one per shape
        # (accepted recipients and refused ones carry different columns).
        for members in _by_columns(rows).values():
            session.execute(insert(_table(Recipient)), members)


def _by_columns(rows: Sequence[dict[str, Any]]) -> dict[tuple[str, ...], list[dict[str, Any]]]:
    """Rows grouped by the columns they give, in order of first appearance."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row), []).append(row)
    return groups


def _defaults(table: Any, given: Collection[str]) -> dict[str, Any]:
    """The Python-side column defaults an ORM or Core INSERT would apply to the
    columns of ``table`` that ``given`` leaves out (for statements SQLAlchemy does
    not build: COPY, and the one-statement enqueue)."""
    return {
        column.key: column.default.arg(None) if column.default.is_callable else column.default.arg
        for column in table.columns
        if column.key not in given and not column.primary_key and column.default is not None
    }


def _copy_rows(session: Session, table: Any, rows: Sequence[dict[str, Any]]) -> None:
    """COPY ``rows`` into ``table`` in the session's transaction, with the Python-side
    column defaults an INSERT would have applied to columns the rows leave out."""
    groups = _by_columns(rows)
    cursor = session.connection().connection.driver_connection.cursor()  # type: ignore[union-attr]
    for keys, members in groups.items():
        defaults = _defaults(table, keys)
        names = [*keys, *defaults]
        quoted = ", ".join(f'"{name}"' for name in names)
        with cursor.copy(f'COPY "{table.name}" ({quoted}) FROM STDIN') as copy:
            extra = tuple(defaults.values())
            for row in members:
                copy.write_row((*row.values(), *extra))


# A job this small goes in by one statement on PostgreSQL (see ``insert_small_job``).
SMALL_JOB_MAX_ROWS = COPY_MIN_ROWS - 1


def insert_small_job(
    session: Session,
    *,
    job: Job,
    accepted: Sequence[str],
    refused: Sequence[tuple[str, str]],
    due_at: dt.datetime,
    lane: int,
    expires_at: dt.datetime | None,
    now: dt.datetime,
    actor: str,
) -> None:
    """On PostgreSQL, write a job of at most one batch in one statement: the job, its
    batch (when any number was accepted), its recipients (``accepted`` queued,
    ``refused`` as (number, detail) failed with INVALID_NUMBER) and each refused one's
    first status event, the same rows the separate inserts write.

    One round trip instead of four: most of a one-recipient ``send()`` was the
    statements' own cost, not their rows'.
    """
    table = Job.__table__
    # As insert_job: the attributes ``job`` was given, defaults for the rest.
    given = {c.key: vars(job)[c.key] for c in table.columns if c.key in vars(job)}
    given |= _defaults(table, given)
    rows: list[tuple[str, bool, str | None]] = [(number, True, None) for number in accepted]
    rows += [(number, False, detail) for number, detail in refused]
    session.execute(
        _small_job_statement(tuple(given)),
        {f"col_{k}": v for k, v in given.items()}
        | {
            "job_id": job.id,
            "rows": json_rows(("number", "accepted", "detail"), rows),
            "with_batch": bool(accepted),
            "due_at": due_at,
            "lane": lane,
            "expires_at": expires_at,
            "now": now,
            "actor": actor,
        },
    )


@functools.cache
def _small_job_statement(columns: tuple[str, ...]) -> TextClause:
    # Column names come from the model, never from input (S608). Foreign keys are
    # checked at the end of the statement, when the job and batch rows exist.
    names = ", ".join(f'"{c}"' for c in columns)
    values = ", ".join(f":col_{c}" for c in columns)
    return text(
        f"""
        WITH job AS (
            INSERT INTO jobs ({names}) VALUES ({values})
        ),
        batch AS (
            INSERT INTO batches (job_id, status, due_at, attempts, created_at, updated_at,
                lane, expires_at)
            SELECT :job_id, 'queued', :due_at, 0, :now, :now, :lane, :expires_at
            WHERE :with_batch
            RETURNING id
        ),
        given AS (
            SELECT e.ord, e.value ->> 'number' AS number,
                (e.value ->> 'accepted')::boolean AS accepted, e.value ->> 'detail' AS detail
            FROM json_array_elements(CAST(:rows AS json)) WITH ORDINALITY AS e (value, ord)
        ),
        added AS (
            INSERT INTO recipients (job_id, batch_id, number, status, error_code,
                error_detail, attempts, created_at, updated_at)
            SELECT :job_id, CASE WHEN g.accepted THEN (SELECT id FROM batch) END, g.number,
                CASE WHEN g.accepted THEN 'queued' ELSE 'failed' END,
                CASE WHEN g.accepted THEN NULL ELSE 'INVALID_NUMBER' END,
                g.detail, 0, :now, :now
            FROM given g ORDER BY g.ord
            RETURNING id, status, error_detail
        )
        INSERT INTO status_events (recipient_id, job_id, at, from_status, to_status, cause,
            actor, attempt_id, error_code)
        SELECT id, :job_id, :now, NULL, status, COALESCE(error_detail, 'refused at enqueue'),
            :actor, NULL, 'INVALID_NUMBER'
        FROM added WHERE status = 'failed' ORDER BY id
        """  # noqa: S608
    )


def job_by_idempotency_key(session: Session, *, created_by: str, key: str) -> Job | None:
    """The job a key holder made with this idempotency key, or None."""
    return session.execute(
        select(Job).where(Job.created_by == created_by, Job.idempotency_key == key)
    ).scalar_one_or_none()


def written_in_one_statement(
    target: dialect.Target, *, groups: Sequence[Sequence[str]], refused: Sequence[object]
) -> bool:
    """Whether ``write_job`` writes this job by one statement (a small job on
    PostgreSQL), which may then run as its own transaction (``Database.one_statement``)."""
    accepted = sum(len(numbers) for numbers in groups)
    small = len(groups) <= 1 and accepted + len(refused) <= SMALL_JOB_MAX_ROWS
    return small and dialect.is_postgresql(target)


def write_job(
    session: Session,
    *,
    job: Job,
    groups: Sequence[Sequence[str]],
    refused: Sequence[tuple[str, str]],
    due_at: dt.datetime,
    lane: int,
    expires_at: dt.datetime | None,
    now: dt.datetime,
    actor: str,
) -> None:
    """Write ``job``, a batch per group of accepted numbers (queued), the ``refused``
    (number, detail) pairs (failed with INVALID_NUMBER, in no batch) and each refused
    recipient's first status event, with its cause. An accepted recipient's first
    event is implied by its row (``Job.creation_implied``): it is written once.

    A small job on PostgreSQL goes in by one statement (``insert_small_job``);
    any other by separate inserts, which write the same rows.
    """
    job.creation_implied = True
    if written_in_one_statement(session, groups=groups, refused=refused):
        insert_small_job(
            session,
            job=job,
            accepted=groups[0] if groups else [],
            refused=refused,
            due_at=due_at,
            lane=lane,
            expires_at=expires_at,
            now=now,
            actor=actor,
        )
        return
    insert_job(session, job=job)
    batch_ids = insert_batches(
        session,
        job_id=job.id,
        count=len(groups),
        due_at=due_at,
        lane=lane,
        expires_at=expires_at,
        now=now,
    )
    rows: list[dict[str, object]] = []
    for batch_id, numbers in zip(batch_ids, groups, strict=True):
        rows.extend(
            {
                "job_id": job.id,
                "batch_id": batch_id,
                "number": number,
                "status": str(RecipientStatus.QUEUED),
                "attempts": 0,
                "created_at": now,
                "updated_at": now,
            }
            for number in numbers
        )
    rows.extend(
        {
            "job_id": job.id,
            "batch_id": None,
            "number": number,
            "status": str(RecipientStatus.FAILED),
            "error_code": "INVALID_NUMBER",
            "error_detail": detail,
            "attempts": 0,
            "created_at": now,
            "updated_at": now,
        }
        for number, detail in refused
    )
    insert_recipients(session, rows=rows)
    if refused:
        # A refused recipient's first event: failed, caused by its refusal.
        record_transitions(
            session,
            where=(Recipient.job_id == job.id) & Recipient.batch_id.is_(None),
            to_status=None,
            at=now,
            cause=func.coalesce(Recipient.error_detail, "refused at enqueue"),
            actor=actor,
        )
