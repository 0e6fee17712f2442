"""Queries and updates on the audit database.

Every function takes the session keyword-only and never commits: the service
layer owns transactions, so one state change is one commit. Writes are set-based
(one statement per group of recipients, history rows by ``INSERT ... SELECT``)
because a batch holds up to 100 recipients and a job up to many thousands.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import json
import os
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple, TypeVar, cast

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Select,
    Table,
    any_,
    bindparam,
    case,
    exists,
    func,
    insert,
    literal,
    null,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import QueryableAttribute, Session
from sqlalchemy.sql.elements import TextClause

from dispatcher.domain.statuses import AttemptOutcome, BatchStatus, BreakerState, RecipientStatus
from dispatcher.domain.storable import check_storable, unstorable
from dispatcher.domain.tenancy import Viewer
from dispatcher.domain.times import utcnow
from dispatcher.persistence import columns
from dispatcher.persistence.models import (
    CONTROL_ROW_ID,
    Attempt,
    Batch,
    DispatchControl,
    Job,
    OperatorAction,
    Recipient,
    StatusEvent,
    WebhookDelivery,
)

_R = TypeVar("_R")
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
WORKER_LOST = "WORKER_LOST"
"""The error code of recipients whose worker never reported back."""


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


# --- writes at enqueue -------------------------------------------------------------


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
) -> list[int]:
    """Insert ``count`` queued batches for a job and return their ids in order.

    ``due_at`` is when they are first claimable (a ``send_at`` in the future keeps
    them waiting), ``lane`` their claim order, ``expires_at`` when they stop being
    worth sending; ``now`` (default ``due_at``) stamps the rows.
    """
    if count == 0:
        return []
    stamp = now or due_at
    rows = [
        {
            "job_id": job_id,
            "status": BatchStatus.QUEUED,
            "due_at": due_at,
            "attempts": 0,
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
    if len(rows) >= COPY_MIN_ROWS and session.get_bind().dialect.name == "postgresql":
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
    ``refused`` as (number, detail) failed with INVALID_NUMBER) and each one's first
    status event, the same rows the separate inserts write.

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
            "rows": _json_rows(("number", "accepted", "detail"), rows),
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
            actor, attempt_id)
        SELECT id, :job_id, :now, NULL, status, COALESCE(error_detail, 'enqueued'), :actor,
            NULL
        FROM added ORDER BY id
        """  # noqa: S608
    )


# --- history -----------------------------------------------------------------------


def record_transitions(
    session: Session,
    *,
    where: ColumnElement[bool],
    to_status: RecipientStatus | None,
    at: dt.datetime,
    cause: str | ColumnElement[Any],
    actor: str,
    attempt_id: int | None = None,
) -> None:
    """Append a status event for every recipient matching ``where``.

    Called just before the update that changes their status, so ``from_status``
    is read from the rows as they are. ``to_status=None`` records each row's
    current status as its first one (at enqueue), with no previous status.
    """
    from_known = to_status is not None
    cause_expr = cause if not isinstance(cause, str) else literal(cause)
    source = select(
        Recipient.id,
        Recipient.job_id,
        literal(at, type_=StatusEvent.at.type),
        Recipient.status if from_known else null(),
        literal(str(to_status)) if to_status is not None else Recipient.status,
        cause_expr,
        literal(actor),
        literal(attempt_id, type_=StatusEvent.attempt_id.type),
    ).where(where)
    session.execute(
        insert(StatusEvent).from_select(
            [
                StatusEvent.recipient_id,
                StatusEvent.job_id,
                StatusEvent.at,
                StatusEvent.from_status,
                StatusEvent.to_status,
                StatusEvent.cause,
                StatusEvent.actor,
                StatusEvent.attempt_id,
            ],
            source,
        )
    )


def _id_in(session: Session, ids: Collection[int]) -> ColumnElement[bool]:
    """``id IN ids``; on PostgreSQL as ``= ANY(array)``, one parameter instead of one
    per id (a batch has up to 100), which is cheaper to render, bind and plan."""
    if session.get_bind().dialect.name == "postgresql":
        return Recipient.id == any_(bindparam("ids", list(ids), type_=ARRAY(BigInteger)))
    return Recipient.id.in_(list(ids))


def status_recheck(statuses: Iterable[str]) -> ColumnElement[bool]:
    """``status IN statuses`` for rows already found by id or batch, kept off the status index.

    Right after a large job is enqueued the planner's statistics still say that
    few rows are ``queued``, so it would intersect the id (or batch) lookup with a
    scan of the (status, updated_at) index over the whole new backlog, on every
    claim and every reply: measured at 20,000 index entries read to check 100
    rows. ``status || ''`` is the same test, which no index serves, so the few
    rows found by the selective condition are just rechecked.
    """
    return (Recipient.status + "").in_([str(s) for s in statuses])


def transition(
    session: Session,
    *,
    ids: Collection[int],
    from_statuses: Iterable[RecipientStatus],
    to_status: RecipientStatus,
    at: dt.datetime,
    cause: str,
    actor: str,
    attempt_id: int | None = None,
    values: dict[str, Any] | None = None,
    guard: ColumnElement[bool] | None = None,
) -> int:
    """Move recipients ``ids`` that are in one of ``from_statuses`` to ``to_status``.

    Records one status event per recipient moved; returns how many moved. The
    status condition (and ``guard``, if given) makes it a compare-and-set: a
    recipient something else has moved meanwhile is left alone.
    """
    if not ids:
        return 0
    allowed = [str(s) for s in from_statuses]
    where = _id_in(session, ids) & status_recheck(allowed)
    if guard is not None:
        where = where & guard
    record_transitions(
        session,
        where=where,
        to_status=to_status,
        at=at,
        cause=cause,
        actor=actor,
        attempt_id=attempt_id,
    )
    result = session.execute(
        update(Recipient)
        .where(where)
        .values(status=str(to_status), updated_at=at, **(values or {}))
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


# --- claiming ----------------------------------------------------------------------


def due_batches(now: dt.datetime) -> Select[int]:
    """Ids of queued batches due at ``now``, oldest due first."""
    return (
        select(Batch.id)
        .where(Batch.status == BatchStatus.QUEUED, Batch.due_at <= now)
        .order_by(Batch.due_at, Batch.id)
    )


def skip_locked(session: Session, query: Select[_R]) -> Select[_R]:
    """``query`` with ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so concurrent workers
    pass over rows another is taking; SQLite's ``BEGIN IMMEDIATE`` already admits
    one writer at a time and has no row locks."""
    if session.get_bind().dialect.name == "postgresql":
        return query.with_for_update(skip_locked=True)
    return query


_Claimable = TypeVar("_Claimable", Batch, WebhookDelivery)


def oldest_due_query(
    model: type[_Claimable],
    *,
    now: dt.datetime,
    queued: str,
    where: Sequence[ColumnElement[bool]] = (),
) -> Select[int]:
    """The id of the oldest row of ``model`` due at ``now`` (and matching ``where``)."""
    return (
        select(model.id)
        .where(model.status == queued, model.due_at <= now, *where)
        .order_by(model.due_at, model.id)
        .limit(1)
    )


def claim_oldest_due(
    session: Session,
    model: type[_Claimable],
    *,
    now: dt.datetime,
    queued: str,
    claimed: str,
    where: Sequence[ColumnElement[bool]] = (),
    **values: Any,
) -> _Claimable | None:
    """Claim the oldest row of ``model`` due at ``now``: ``queued`` to ``claimed``.

    The update re-checks the status, so two claimers can never both win, whatever
    the database; ``values`` are set along with the claim; ``where`` narrows the
    rows considered (one lane of batches).
    """
    query = oldest_due_query(model, now=now, queued=queued, where=where)
    row_id = session.execute(skip_locked(session, query)).scalar_one_or_none()
    if row_id is None:
        return None
    return session.execute(
        update(model)
        .where(model.id == row_id, model.status == queued)
        .values(
            status=claimed,
            claimed_at=now,
            attempts=model.attempts + 1,
            updated_at=now,
            **values,
        )
        .returning(model)
        .execution_options(synchronize_session=False)
    ).scalar_one_or_none()


ALL_LANES = (0, 1, 2)


def claim_next_batch(
    session: Session, *, now: dt.datetime, worker: str, lanes: Sequence[int] = ALL_LANES
) -> Batch | None:
    """Claim the oldest due batch of the first lane that has one: ``queued`` to ``submitting``.

    Lanes are probed in the order given (high first), one index probe each on
    ``(lane, due_at) WHERE status = 'queued'``, so due work in a higher lane always
    goes first, and batches scheduled for later never stand in the way.
    """
    for lane in lanes:
        batch = claim_oldest_due(
            session,
            Batch,
            now=now,
            queued=BatchStatus.QUEUED,
            claimed=BatchStatus.SUBMITTING,
            where=(Batch.lane == lane,),
            claimed_by=worker,
        )
        if batch is not None:
            return batch
    return None


@dataclass(frozen=True, slots=True)
class PendingRecipient:
    """A recipient about to be submitted."""

    id: int
    number: str
    attempts: int
    status: str = RecipientStatus.QUEUED
    """Its status when claimed (``queued`` or ``retry_wait``): the history's from-status."""


_WAITING = (RecipientStatus.QUEUED, RecipientStatus.RETRY_WAIT)


def sendable_recipients(session: Session, *, batch_id: int) -> list[PendingRecipient]:
    """The recipients of a batch still waiting to be sent, in insertion order."""
    rows = session.execute(
        select(Recipient.id, Recipient.number, Recipient.attempts, Recipient.status)
        .where(Recipient.batch_id == batch_id, status_recheck(_WAITING))
        .order_by(Recipient.id)
    )
    return [PendingRecipient(r.id, r.number, r.attempts, r.status) for r in rows]


@dataclass(frozen=True, slots=True)
class ClaimedBatch:
    """A batch just claimed, with its job's message and its recipients still to send."""

    id: int
    job_id: str
    attempts: int
    """Attempts including this one: this attempt's number."""
    expires_at: dt.datetime | None
    text: str
    sender: str | None
    kind: str
    maxconcat: int
    reference: str | None
    recipients: list[PendingRecipient]
    more_due: bool = True
    """Another batch of the claimed lanes was due when this one was claimed (True
    when the claim could not tell): the caller claims again, or may stop."""


class Gated:
    """``claim_if_open``'s answer when the control row asks for the careful path."""


GATED = Gated()


def claim_batch(
    session: Session, *, now: dt.datetime, worker: str, lanes: Sequence[int] = ALL_LANES
) -> ClaimedBatch | None:
    """Claim the oldest due batch (``claim_next_batch``) and read what sending it needs.

    The caller has checked the dispatch control row; any database.
    """
    batch = claim_next_batch(session, now=now, worker=worker, lanes=lanes)
    if batch is None:
        return None
    job = session.get(Job, batch.job_id)
    assert job is not None
    return ClaimedBatch(
        id=batch.id,
        job_id=job.id,
        attempts=batch.attempts,
        expires_at=batch.expires_at,
        text=job.text,
        sender=job.sender,
        kind=job.kind,
        maxconcat=job.maxconcat,
        reference=job.reference,
        recipients=sendable_recipients(session, batch_id=batch.id),
    )


def claim_if_open(
    session: Session, *, now: dt.datetime, worker: str, lanes: Sequence[int] = ALL_LANES
) -> ClaimedBatch | Gated | None:
    """On PostgreSQL, claim the oldest due batch in one statement if dispatch is open.

    One round trip reads the control row, claims the batch (``SKIP LOCKED``), reads
    its job, and locks and reads its recipients still to send. The control row is
    read by the same statement that claims, so a pause or an open breaker committed
    before it is honoured exactly as by the separate read it replaces. Returns None
    when nothing is due, and ``GATED`` when dispatch is paused, the breaker is not
    closed or the control row is missing: then the caller takes the careful path
    (``Controls.gate``, then ``claim_batch``), which handles the probe. On other
    databases it returns ``GATED`` at once, without a statement.
    """
    if session.get_bind().dialect.name != "postgresql":
        return GATED
    rows = session.execute(
        _claim_statement(tuple(lanes)),
        {"now": now, "worker": worker, "control_id": CONTROL_ROW_ID},
    ).all()
    if not rows or rows[0].paused or rows[0].breaker_state != BreakerState.CLOSED:
        return GATED
    head = rows[0]
    if head.batch_id is None:
        return None
    return ClaimedBatch(
        id=head.batch_id,
        job_id=head.job_id,
        attempts=head.attempts,
        expires_at=head.expires_at,
        text=head.text,
        sender=head.sender,
        kind=head.kind,
        maxconcat=head.maxconcat,
        reference=head.reference,
        recipients=[
            PendingRecipient(r.recipient_id, r.number, r.recipient_attempts, r.recipient_status)
            for r in rows
            if r.recipient_id is not None
        ],
        more_due=bool(head.more_due),
    )


@functools.cache
def _claim_statement(lanes: tuple[int, ...]) -> TextClause:
    # One scalar subquery per lane, high first, under COALESCE: PostgreSQL runs
    # each as an InitPlan only when the ones before it found nothing, so a lower
    # lane's row is never locked while a higher lane has work (UNION ALL would
    # do the same, but refuses FOR UPDATE). Statuses are literals so the partial
    # (lane, due_at) WHERE status = 'queued' index serves every plan, generic or not.
    # ``status || ''`` keeps the claim's update on the primary key and the
    # recipients' lookup on the batch index, whatever the statistics say (see
    # ``status_recheck``). Only ints are formatted in (S608).
    probes = ",\n".join(
        f"""(SELECT id FROM batches
             WHERE status = 'queued' AND lane = {int(lane)} AND due_at <= :now
             ORDER BY due_at, id LIMIT 1 FOR UPDATE SKIP LOCKED)"""  # noqa: S608
        for lane in lanes
    )
    # Whether anything else was due: a task that claimed the last due batch stops
    # after it instead of making an empty claim to find out. Rows other workers
    # are claiming still count (no SKIP LOCKED), which only costs that empty claim.
    others = " OR ".join(
        f"""EXISTS (SELECT 1 FROM batches
             WHERE status = 'queued' AND lane = {int(lane)} AND due_at <= :now
                AND id <> (SELECT id FROM picked))"""  # noqa: S608
        for lane in lanes
    )
    return text(
        f"""
        WITH ctl AS (
            SELECT paused, breaker_state FROM dispatch_control WHERE id = :control_id
        ),
        picked AS (
            SELECT COALESCE({probes}, NULL) AS id
            WHERE EXISTS (SELECT 1 FROM ctl WHERE NOT paused AND breaker_state = 'closed')
        ),
        claimed AS (
            UPDATE batches SET status = 'submitting', claimed_at = :now,
                claimed_by = :worker, attempts = batches.attempts + 1, updated_at = :now
            WHERE batches.id = (SELECT id FROM picked) AND (batches.status || '') = 'queued'
            RETURNING batches.id, batches.job_id, batches.attempts, batches.expires_at
        ),
        waiting AS (
            SELECT r.id, r.number, r.attempts, r.status FROM recipients r
            WHERE r.batch_id = (SELECT id FROM claimed)
                AND (r.status || '') IN ('queued', 'retry_wait')
            FOR UPDATE
        )
        SELECT ctl.paused, ctl.breaker_state,
            CASE WHEN c.id IS NULL THEN false ELSE ({others}) END AS more_due,
            c.id AS batch_id, c.job_id, c.attempts, c.expires_at,
            j.text, j.sender, j.kind, j.maxconcat, j.reference,
            w.id AS recipient_id, w.number, w.attempts AS recipient_attempts,
            w.status AS recipient_status
        FROM ctl
        LEFT JOIN claimed c ON true
        LEFT JOIN jobs j ON j.id = c.job_id
        LEFT JOIN waiting w ON true
        ORDER BY w.id
        """  # noqa: S608
    )


def start_attempt(
    session: Session,
    *,
    batch: ClaimedBatch,
    request: str,
    now: dt.datetime,
    cause: str,
    actor: str,
) -> int:
    """Write the in-flight attempt row for a claimed batch and move its recipients to
    ``submitting`` with one status event each; returns the attempt's id.

    On PostgreSQL in one statement; the recipients were locked by the claim, so
    the from-statuses read then are still theirs.
    """
    recipients = batch.recipients
    numbers = ",".join(r.number for r in recipients)
    values = {
        "batch_id": batch.id,
        "job_id": batch.job_id,
        "attempt_no": batch.attempts,
        "numbers": numbers,
        "request": request,
        "now": now,
        "worker": actor,
    }
    if session.get_bind().dialect.name == "postgresql":
        return int(
            session.execute(
                _START_ATTEMPT,
                values
                | {
                    "in_flight": str(AttemptOutcome.IN_FLIGHT),
                    "ids": _json_rows(
                        ("id", "status"), [(r.id, r.status) for r in batch.recipients]
                    ),
                    "to_status": str(RecipientStatus.SUBMITTING),
                    "cause": cause,
                },
            ).scalar_one()
        )
    attempt_id = insert_attempt(
        session,
        attempt=Attempt(
            batch_id=batch.id,
            job_id=batch.job_id,
            attempt_no=batch.attempts,
            numbers=numbers,
            request=request,
            started_at=now,
            worker=actor,
        ),
    )
    transition(
        session,
        ids=[r.id for r in batch.recipients],
        from_statuses=_WAITING,
        to_status=RecipientStatus.SUBMITTING,
        at=now,
        cause=cause,
        actor=actor,
        attempt_id=attempt_id,
    )
    return attempt_id


_START_ATTEMPT = text(
    """
    WITH claimed AS (
        SELECT * FROM json_to_recordset(CAST(:ids AS json)) AS f (id bigint, status text)
    ),
    attempt AS (
        INSERT INTO attempts (batch_id, job_id, attempt_no, numbers, request, started_at,
            outcome, worker)
        VALUES (:batch_id, :job_id, :attempt_no, :numbers, :request, :now, :in_flight, :worker)
        RETURNING id
    ),
    moved AS (
        UPDATE recipients SET status = :to_status, updated_at = :now
        WHERE batch_id = :batch_id AND id = ANY (ARRAY(SELECT id FROM claimed))
            AND (status || '') IN ('queued', 'retry_wait')
        RETURNING id, job_id
    ),
    events AS (
        INSERT INTO status_events (recipient_id, job_id, at, from_status, to_status, cause,
            actor, attempt_id)
        SELECT m.id, m.job_id, :now, f.status, :to_status, :cause, :worker, a.id
        FROM moved m JOIN claimed f ON f.id = m.id CROSS JOIN attempt a
    )
    SELECT id FROM attempt
    """
)


def insert_attempt(session: Session, *, attempt: Attempt) -> int:
    """Add an attempt row and return its id."""
    session.add(attempt)
    session.flush()
    return attempt.id


def complete_attempt(session: Session, *, attempt_id: int, values: dict[str, Any]) -> None:
    """Fill in an attempt row's result."""
    session.execute(
        update(Attempt)
        .where(Attempt.id == attempt_id)
        .values(**values)
        .execution_options(synchronize_session=False)
    )


def settle_batch(session: Session, *, batch_id: int, now: dt.datetime) -> None:
    """After an attempt: requeue the batch at its earliest retry, or mark it done.

    One statement: the count and the earliest retry time are subqueries of the update.
    """
    waiting = (Recipient.batch_id == batch_id) & status_recheck(_WAITING)
    count = select(func.count()).where(waiting).scalar_subquery()
    next_at = select(func.min(Recipient.next_attempt_at)).where(waiting).scalar_subquery()
    stamp = literal(now, type_=Batch.due_at.type)
    session.execute(
        update(Batch)
        .where(Batch.id == batch_id)
        .values(
            updated_at=now,
            claimed_at=None,
            status=case((count > 0, str(BatchStatus.QUEUED)), else_=str(BatchStatus.DONE)),
            due_at=case((count > 0, func.coalesce(next_at, stamp)), else_=Batch.due_at),
        )
        .execution_options(synchronize_session=False)
    )


class OutcomeGroup(NamedTuple):
    """Recipients of one reply that end alike: written by one statement on SQLite."""

    status: RecipientStatus
    message_id: str | None
    error_code: str | None
    cause: str
    spent: bool
    """The attempt counts against the recipient's maximum."""
    next_attempt_at: dt.datetime | None


RECORDABLE = (RecipientStatus.SUBMITTING, RecipientStatus.UNKNOWN)


def record_guard() -> ColumnElement[bool]:
    """Which recipients a reply may still move: those ``submitting``, and those the
    sweeper marked ``unknown`` as WORKER_LOST while the reply could not be written (it
    replaces that guess, but nothing else)."""
    return (Recipient.status == str(RecipientStatus.SUBMITTING)) | (
        Recipient.error_code == WORKER_LOST
    )


def record_reply(
    session: Session,
    *,
    attempt_id: int,
    batch_id: int,
    attempt: dict[str, Any],
    groups: Mapping[OutcomeGroup, Sequence[int]],
    at: dt.datetime,
    actor: str,
    reset_breaker_failures: bool,
) -> int:
    """Write a reply: the attempt's result (``attempt``: Attempt columns), every
    recipient's outcome with one status event each, the batch settled, and with
    ``reset_breaker_failures`` the breaker's count zeroed if it is not already.

    Returns how many recipients moved: fewer than given when some had left
    ``submitting`` meanwhile (``record_guard``). On PostgreSQL it is one statement
    (per-row values travel as arrays); elsewhere one update and one insert per group.
    """
    if session.get_bind().dialect.name == "postgresql":
        rows = [
            (
                rid,
                str(k.status),
                k.error_code,
                k.message_id,
                k.cause,
                int(k.spent),
                k.next_attempt_at.isoformat() if k.next_attempt_at else None,
            )
            for k, ids in groups.items()
            for rid in ids
        ]
        params = {
            "rows": _json_rows(_RESULT_COLUMNS, rows),
            "now": at,
            "actor": actor,
            "attempt_id": attempt_id,
            "batch_id": batch_id,
            "worker_lost": WORKER_LOST,
            "reset_breaker": reset_breaker_failures,
            "control_id": CONTROL_ROW_ID,
        }
        attempt_params = {f"attempt_{k}": attempt.get(k) for k in _ATTEMPT_RESULT}
        return int(session.execute(_RECORD_REPLY, params | attempt_params).scalar_one())
    if reset_breaker_failures:
        reset_failures(session)
    complete_attempt(session, attempt_id=attempt_id, values=attempt)
    moved = 0
    for key, ids in groups.items():
        moved += record_outcome(
            session, ids=ids, group=key, attempt_id=attempt_id, at=at, actor=actor
        )
    settle_batch(session, batch_id=batch_id, now=at)
    return moved


def record_outcome(
    session: Session,
    *,
    ids: Collection[int],
    group: OutcomeGroup,
    attempt_id: int,
    at: dt.datetime,
    actor: str,
) -> int:
    """Write one outcome of a reply for recipients ``ids`` (``record_reply``'s step
    per group outside PostgreSQL, and the careful path's per recipient); returns how
    many moved (``record_guard``)."""
    values: dict[str, object] = {
        "error_code": group.error_code,
        "next_attempt_at": group.next_attempt_at,
        "attempts": _attempts_after(spent=group.spent),
    }
    if group.message_id is not None:
        values["gateway_message_id"] = group.message_id
    return transition(
        session,
        ids=ids,
        from_statuses=RECORDABLE,
        guard=record_guard(),
        to_status=group.status,
        at=at,
        cause=group.cause,
        actor=actor,
        attempt_id=attempt_id,
        values=values,
    )


def _attempts_after(*, spent: bool) -> ColumnElement[int]:
    """A recipient's attempt count once a reply is recorded.

    The sweeper counted the attempt when it guessed WORKER_LOST (``abandon_batch``);
    a late reply of that attempt replaces the guess, so it must not count it again,
    and takes the count back when the reply says nothing was spent. ``record_guard``
    lets only such recipients be ``unknown`` here; ``_RECORD_REPLY`` does the same.
    """
    counted = Recipient.attempts + int(spent)
    guessed = (Recipient.status == str(RecipientStatus.UNKNOWN)) & (Recipient.attempts > 0)
    return case((guessed, counted - 1), else_=counted)


_RESULT_COLUMNS = (
    "id",
    "status",
    "error_code",
    "message_id",
    "cause",
    "spent",
    "next_attempt_at",
)


def _json_rows(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Rows as one JSON array of objects, for ``json_to_recordset``: one parameter
    that is quick to build, where psycopg dumps an array parameter element by element
    in Python (a sixth of a dispatch thread's CPU with seven arrays per reply)."""
    return json.dumps([dict(zip(columns, row, strict=True)) for row in rows])


_ATTEMPT_RESULT = (
    "finished_at",
    "host",
    "http_status",
    "raw_reply",
    "latency_ms",
    "outcome",
    "error",
)


# The rows are locked before they are read for their from-status, so a sweeper
# that marked them unknown a moment ago is seen as such in the history. The batch
# condition gives the planner an index it always takes, even before the first
# ANALYZE of a freshly filled table (it chose a sequential scan for the ids alone).
_RECORD_REPLY = text(
    """
    WITH result AS (
        SELECT * FROM json_to_recordset(CAST(:rows AS json)) AS g (
            id bigint, status text, error_code text, message_id text, cause text,
            spent int, next_attempt_at timestamptz
        )
    ),
    current AS (
        SELECT r.id, r.status FROM recipients r
        WHERE r.batch_id = :batch_id AND r.id = ANY (ARRAY(SELECT id FROM result))
            AND (r.status || '') IN ('submitting', 'unknown')
            AND ((r.status || '') = 'submitting' OR r.error_code = :worker_lost)
        FOR UPDATE
    ),
    moved AS (
        UPDATE recipients r SET status = g.status, updated_at = :now,
            error_code = g.error_code, next_attempt_at = g.next_attempt_at,
            attempts = r.attempts + g.spent
                - CASE WHEN c.status = 'unknown' AND r.attempts > 0 THEN 1 ELSE 0 END,
            gateway_message_id = COALESCE(g.message_id, r.gateway_message_id)
        FROM result g, current c
        WHERE r.id = g.id AND c.id = g.id
        RETURNING r.id, r.job_id, c.status AS from_status, g.status AS to_status, g.cause,
            g.next_attempt_at
    ),
    events AS (
        INSERT INTO status_events (recipient_id, job_id, at, from_status, to_status, cause,
            actor, attempt_id)
        SELECT id, job_id, :now, from_status, to_status, cause, :actor, :attempt_id
        FROM moved
    ),
    attempt AS (
        UPDATE attempts SET finished_at = :attempt_finished_at, host = :attempt_host,
            http_status = :attempt_http_status, raw_reply = :attempt_raw_reply,
            latency_ms = :attempt_latency_ms, outcome = :attempt_outcome,
            error = :attempt_error
        WHERE id = :attempt_id
    ),
    waiting AS (
        -- What settle_batch counts, seen before this statement's own changes:
        -- the recipients it moved to a waiting status, plus the batch's others.
        SELECT count(*) AS n, min(next_attempt_at) AS next_at FROM (
            SELECT next_attempt_at FROM moved WHERE to_status IN ('queued', 'retry_wait')
            UNION ALL
            SELECT next_attempt_at FROM recipients
            WHERE batch_id = :batch_id AND (status || '') IN ('queued', 'retry_wait')
                AND id NOT IN (SELECT id FROM moved)
        ) AS w
    ),
    settled AS (
        UPDATE batches SET updated_at = :now, claimed_at = NULL,
            status = CASE WHEN waiting.n > 0 THEN 'queued' ELSE 'done' END,
            due_at = CASE WHEN waiting.n > 0 THEN COALESCE(waiting.next_at, :now)
                ELSE batches.due_at END
        FROM waiting
        WHERE batches.id = :batch_id
    ),
    breaker AS (
        UPDATE dispatch_control SET breaker_failures = 0, updated_at = :now
        WHERE :reset_breaker AND id = :control_id AND breaker_failures > 0
    )
    SELECT count(*) FROM moved
    """
)


# --- sweeping ----------------------------------------------------------------------


def stale_submitting_batches(
    session: Session, *, older_than: dt.datetime, limit: int = 100
) -> list[int]:
    """Batches claimed before ``older_than`` and never completed (locked, on PostgreSQL)."""
    query = (
        select(Batch.id)
        .where(Batch.status == BatchStatus.SUBMITTING, Batch.claimed_at < older_than)
        .order_by(Batch.claimed_at)
        .limit(limit)
    )
    return list(session.execute(skip_locked(session, query)).scalars())


def abandon_batch(session: Session, *, batch_id: int, now: dt.datetime, cause: str) -> int:
    """Close a dead worker's batch: its in-flight attempt abandoned, recipients unknown.

    The recipients' attempt counts include the abandoned call: it may have reached
    the gateway. A late reply of it replaces this guess without counting it twice
    (``record_outcome``)."""
    moved = session.execute(
        update(Batch)
        .where(Batch.id == batch_id, Batch.status == BatchStatus.SUBMITTING)
        .values(status=BatchStatus.DONE, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    if not moved.rowcount:  # type: ignore[attr-defined]
        return 0
    in_flight = list(
        session.execute(
            select(Attempt.id).where(
                Attempt.batch_id == batch_id, Attempt.outcome == AttemptOutcome.IN_FLIGHT
            )
        ).scalars()
    )
    for attempt_id in in_flight:
        complete_attempt(
            session,
            attempt_id=attempt_id,
            values=columns.fit_attempt(
                {"outcome": AttemptOutcome.ABANDONED, "finished_at": now, "error": cause}
            ),
        )
    ids = list(
        session.execute(
            select(Recipient.id).where(
                Recipient.batch_id == batch_id, Recipient.status == RecipientStatus.SUBMITTING
            )
        ).scalars()
    )
    return transition(
        session,
        ids=ids,
        from_statuses=[RecipientStatus.SUBMITTING],
        to_status=RecipientStatus.UNKNOWN,
        at=now,
        cause=columns.fit_cause(cause),
        actor="sweeper",
        attempt_id=in_flight[-1] if in_flight else None,
        values=columns.fit(Recipient, {"error_code": WORKER_LOST, "error_detail": cause})
        | {"attempts": Recipient.attempts + 1},
    )


def count_due(session: Session, *, now: dt.datetime) -> tuple[int, dt.datetime | None]:
    """How many queued batches are due, and the oldest due time among them."""
    row = session.execute(
        select(func.count(), func.min(Batch.due_at)).where(
            Batch.status == BatchStatus.QUEUED, Batch.due_at <= now
        )
    ).one()
    return int(row[0]), row[1]


def count_due_by_lane(session: Session, *, now: dt.datetime) -> dict[int, int]:
    """How many queued batches are due, per lane."""
    rows = session.execute(
        select(Batch.lane, func.count())
        .where(Batch.status == BatchStatus.QUEUED, Batch.due_at <= now)
        .group_by(Batch.lane)
    )
    return {int(lane): int(n) for lane, n in rows}


def expired_batches(
    session: Session, *, now: dt.datetime, limit: int = 100
) -> list[tuple[int, dt.datetime]]:
    """(id, expiry) of queued batches (due, scheduled or retrying) whose expiry has passed."""
    query = (
        select(Batch)
        .where(
            Batch.status == BatchStatus.QUEUED,
            Batch.expires_at.is_not(None),
            Batch.expires_at <= now,
        )
        .order_by(Batch.expires_at)
        .limit(limit)
    )
    batches = session.execute(skip_locked(session, query)).scalars()
    return [(b.id, b.expires_at) for b in batches if b.expires_at is not None]


def expire_batch(
    session: Session, *, batch_id: int, now: dt.datetime, cause: str, actor: str
) -> int:
    """End a batch whose validity has passed: its unsent recipients ``expired``, it done."""
    ids = [r.id for r in sendable_recipients(session, batch_id=batch_id)]
    moved = transition(
        session,
        ids=ids,
        from_statuses=[RecipientStatus.QUEUED, RecipientStatus.RETRY_WAIT],
        to_status=RecipientStatus.EXPIRED,
        at=now,
        cause=cause,
        actor=actor,
        values={"error_code": "EXPIRED", "error_detail": cause[:500], "next_attempt_at": None},
    )
    settle_batch(session, batch_id=batch_id, now=now)
    return moved


# --- reading -----------------------------------------------------------------------


def owned_by(owner_key_id: int | None) -> list[ColumnElement[bool]]:
    """The condition that limits jobs to those one API key enqueued (none: every job).

    The one place a producer key's view of the jobs is drawn (``dispatcher.tenancy``):
    every selection with an ``owner_key_id`` goes through it.
    """
    if owner_key_id is None:
        return []
    return [Job.owner_key_id == owner_key_id]


def get_job(session: Session, *, job_id: str, owner_key_id: int | None = None) -> Job | None:
    """The job with this id, or None; with ``owner_key_id``, None for another key's job."""
    if unstorable(job_id) is not None:
        return None  # No job has an id the database cannot even hold.
    if owner_key_id is None:
        return session.get(Job, job_id)
    return session.execute(
        select(Job).where(Job.id == job_id, *owned_by(owner_key_id))
    ).scalar_one_or_none()


def job_recipients(session: Session, *, job_id: str) -> list[Recipient]:
    """A job's recipients in insertion order."""
    return list(
        session.execute(
            select(Recipient).where(Recipient.job_id == job_id).order_by(Recipient.id)
        ).scalars()
    )


def job_attempts(session: Session, *, job_id: str) -> list[Attempt]:
    """A job's attempts, oldest first."""
    return list(
        session.execute(
            select(Attempt).where(Attempt.job_id == job_id).order_by(Attempt.id)
        ).scalars()
    )


def job_events(session: Session, *, job_id: str) -> list[StatusEvent]:
    """A job's status history, oldest first."""
    return list(
        session.execute(
            select(StatusEvent).where(StatusEvent.job_id == job_id).order_by(StatusEvent.id)
        ).scalars()
    )


@dataclass(frozen=True, slots=True)
class JobFilter:
    """Which jobs a listing holds; every field narrows it."""

    status: RecipientStatus | None = None
    """Jobs with at least one recipient in this status."""
    number: str | None = None
    """Jobs with a recipient of this number (international digits)."""
    reference: str | None = None
    """Jobs with exactly this producer reference."""
    since: dt.datetime | None = None
    """Created at or after."""
    until: dt.datetime | None = None
    """Created before."""
    owner_key_id: int | None = None
    """Jobs enqueued by this API key (``dispatcher.tenancy``); None: any."""

    def __post_init__(self) -> None:
        # No row can hold such a value: refused here as the mistake it is, not as a
        # driver error from inside the query.
        for name in ("number", "reference"):
            value = getattr(self, name)
            if value is not None:
                check_storable(value, name)


def list_jobs(
    session: Session, *, selection: JobFilter, limit: int, after: str | None = None
) -> tuple[list[Job], bool]:
    """A page of jobs, newest first, with ids below ``after``; and whether more follow.

    Job ids are time-ordered and unique, so "ids below the last one seen"
    continues a listing exactly, even while new jobs arrive at its head.
    """
    query = select(Job).where(*owned_by(selection.owner_key_id))
    query = query.order_by(Job.id.desc()).limit(limit + 1)
    if after is not None:
        query = query.where(Job.id < after)
    if selection.reference is not None:
        query = query.where(Job.reference == selection.reference)
    if selection.since is not None:
        query = query.where(Job.created_at >= selection.since)
    if selection.until is not None:
        query = query.where(Job.created_at < selection.until)
    conditions = [Recipient.job_id == Job.id]
    if selection.number is not None:
        conditions.append(Recipient.number == selection.number)
    if selection.status is not None:
        conditions.append(Recipient.status == str(selection.status))
    if len(conditions) > 1:
        query = query.where(exists().where(*conditions))
    rows = list(session.execute(query).scalars())
    return rows[:limit], len(rows) > limit


def status_counts(
    session: Session, *, job_ids: Sequence[str] | None = None
) -> dict[str, dict[str, int]]:
    """Recipients per status, per job (all jobs when ``job_ids`` is None)."""
    query = select(Recipient.job_id, Recipient.status, func.count()).group_by(
        Recipient.job_id, Recipient.status
    )
    if job_ids is not None:
        query = query.where(Recipient.job_id.in_(list(job_ids)))
    counts: dict[str, dict[str, int]] = {}
    for job_id, status, n in session.execute(query):
        counts.setdefault(job_id, {})[status] = int(n)
    return counts


def totals(session: Session, *, job_ids: Sequence[str] | None = None) -> dict[str, Any]:
    """Recipients per status and per error code, and attempts, over some or all jobs."""
    by_status = select(Recipient.status, func.count()).group_by(Recipient.status)
    by_code = (
        select(Recipient.error_code, func.count())
        .where(Recipient.error_code.is_not(None))
        .group_by(Recipient.error_code)
    )
    attempts = select(func.count(), func.avg(Attempt.latency_ms))
    by_outcome = select(Attempt.outcome, func.count()).group_by(Attempt.outcome)
    if job_ids is not None:
        ids = list(job_ids)
        by_status = by_status.where(Recipient.job_id.in_(ids))
        by_code = by_code.where(Recipient.job_id.in_(ids))
        attempts = attempts.where(Attempt.job_id.in_(ids))
        by_outcome = by_outcome.where(Attempt.job_id.in_(ids))
    attempt_row = session.execute(attempts).one()
    return {
        "by_status": {s: int(n) for s, n in session.execute(by_status)},
        "by_error_code": {c: int(n) for c, n in session.execute(by_code)},
        "attempts": int(attempt_row[0]),
        "attempts_by_outcome": {o: int(n) for o, n in session.execute(by_outcome)},
        "mean_latency_ms": float(attempt_row[1]) if attempt_row[1] is not None else None,
    }


def sample_message_ids(
    session: Session, *, job_ids: Sequence[str] | None = None, limit: int = 5
) -> list[tuple[str, str]]:
    """A few (number, gateway message ID) pairs of sent recipients."""
    query = (
        select(Recipient.number, Recipient.gateway_message_id)
        .where(Recipient.gateway_message_id.is_not(None))
        .order_by(Recipient.id)
        .limit(limit)
    )
    if job_ids is not None:
        query = query.where(Recipient.job_id.in_(list(job_ids)))
    return [(n, str(m)) for n, m in session.execute(query)]


# --- dispatch control --------------------------------------------------------------


def get_control(session: Session) -> DispatchControl:
    """The dispatch control row, created if missing (a wiped table must not crash workers)."""
    row = session.get(DispatchControl, CONTROL_ROW_ID, populate_existing=True)
    if row is not None:
        return row
    dialect = session.get_bind().dialect.name
    values = {
        "id": CONTROL_ROW_ID,
        "paused": False,
        "breaker_state": str(BreakerState.CLOSED),
        "breaker_failures": 0,
        "breaker_trips": 0,
        "updated_at": utcnow(),
    }
    if dialect == "postgresql":
        session.execute(pg_insert(DispatchControl).values(values).on_conflict_do_nothing())
    else:
        session.execute(sqlite_insert(DispatchControl).values(values).on_conflict_do_nothing())
    row = session.get(DispatchControl, CONTROL_ROW_ID, populate_existing=True)
    assert row is not None
    return row


def update_control(
    session: Session, *, values: dict[str, Any], where: ColumnElement[bool] | None = None
) -> bool:
    """Update the control row if ``where`` holds (compare-and-set); True if it did."""
    get_control(session)
    query = update(DispatchControl).where(DispatchControl.id == CONTROL_ROW_ID)
    if where is not None:
        query = query.where(where)
    result = session.execute(
        query.values(updated_at=utcnow(), **values).execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def reset_failures(session: Session) -> None:
    """Zero the breaker's count of failures in a row, if it is not zero already.

    No read first and no row created: a missing or zero count is left as it is.
    """
    session.execute(
        update(DispatchControl)
        .where(DispatchControl.id == CONTROL_ROW_ID, DispatchControl.breaker_failures > 0)
        .values(breaker_failures=0, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )


def count_in_flight(session: Session) -> int:
    """Batches currently claimed (their HTTP call running, or their worker dead)."""
    return int(
        session.execute(
            select(func.count()).where(Batch.status == BatchStatus.SUBMITTING)
        ).scalar_one()
    )


def overdue_retries(
    session: Session, *, created_before: dt.datetime, limit: int = 1000
) -> list[int]:
    """Recipients still waiting to retry whose job became due before ``created_before``.

    A scheduled job's age counts from its send time, not from when it was queued: a
    job queued days ahead must not fail on its first transient error at its time.
    """
    return list(
        session.execute(
            select(Recipient.id)
            .join(Job, Job.id == Recipient.job_id)
            .where(
                Recipient.status == RecipientStatus.RETRY_WAIT,
                func.coalesce(Job.send_at, Recipient.created_at) < created_before,
            )
            .limit(limit)
        ).scalars()
    )


def batches_of(session: Session, *, recipient_ids: Collection[int]) -> list[int]:
    """The distinct batches holding these recipients."""
    rows = session.execute(
        select(Recipient.batch_id)
        .where(Recipient.id.in_(list(recipient_ids)), Recipient.batch_id.is_not(None))
        .distinct()
    ).scalars()
    return [batch_id for batch_id in rows if batch_id is not None]


def job_by_idempotency_key(session: Session, *, created_by: str, key: str) -> Job | None:
    """The job a key holder made with this idempotency key, or None."""
    return session.execute(
        select(Job).where(Job.created_by == created_by, Job.idempotency_key == key)
    ).scalar_one_or_none()


# --- operator selections and audit ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class RecipientFilter:
    """Which recipients an operator action applies to."""

    job_id: str | None = None
    statuses: list[str] | None = None
    error_code: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    numbers: list[str] | None = None
    retryable_only: bool = False
    """Leave out numbers refused at enqueue (never submitted, not phone numbers) and
    numbers removed by retention or erasure."""
    owner_key_id: int | None = None
    """Recipients of jobs enqueued by this API key (``dispatcher.tenancy``); None: any."""

    def __post_init__(self) -> None:
        # No row can hold such a value: refused here as the mistake it is, not as a
        # driver error from inside the query.
        for name, value in (("job_id", self.job_id), ("error_code", self.error_code)):
            if value is not None:
                check_storable(value, name)
        for number in self.numbers or ():
            check_storable(number, "a number")

    def only(self, status: str) -> RecipientFilter:
        """The same selection narrowed to one status."""
        return replace(self, statuses=[status])

    def conditions(self) -> list[ColumnElement[bool]]:
        """The WHERE clauses of this selection."""
        where: list[ColumnElement[bool]] = []
        if self.job_id is not None:
            where.append(Recipient.job_id == self.job_id)
        if self.statuses is not None:
            where.append(Recipient.status.in_(self.statuses))
        if self.error_code is not None:
            where.append(Recipient.error_code == self.error_code)
        if self.since is not None:
            where.append(Recipient.updated_at >= self.since)
        if self.until is not None:
            where.append(Recipient.updated_at < self.until)
        if self.numbers is not None:
            where.append(Recipient.number.in_(self.numbers))
        if self.retryable_only:
            # Never submitted (refused at enqueue), or their number is gone (purged,
            # erased): there is nothing to send them to.
            where.append(Recipient.batch_id.is_not(None))
            where.append(Recipient.number.not_in(sorted(NUMBER_MARKERS)))
        if self.owner_key_id is not None:
            where.append(Recipient.job_id.in_(select(Job.id).where(*owned_by(self.owner_key_id))))
        return where

    def describe(self) -> dict[str, Any]:
        """JSON-ready parameters for the audit row."""
        return {
            "job_id": self.job_id,
            "statuses": self.statuses,
            "error_code": self.error_code,
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
            "numbers": len(self.numbers) if self.numbers is not None else None,
        }


def count_recipients(session: Session, *, selection: RecipientFilter) -> int:
    """How many recipients a selection holds."""
    return int(session.execute(select(func.count()).where(*selection.conditions())).scalar_one())


def select_recipients(
    session: Session, *, selection: RecipientFilter
) -> list[tuple[int, str, str]]:
    """(id, job id, status) of the recipients a selection holds, in id order."""
    rows = session.execute(
        select(Recipient.id, Recipient.job_id, Recipient.status)
        .where(*selection.conditions())
        .order_by(Recipient.id)
    )
    return [(r[0], r[1], r[2]) for r in rows]


def settle_batch_if_idle(session: Session, *, batch_id: int, now: dt.datetime) -> None:
    """``settle_batch`` for a batch no worker holds (one that is queued)."""
    status = session.execute(select(Batch.status).where(Batch.id == batch_id)).scalar_one()
    if status == BatchStatus.QUEUED:
        settle_batch(session, batch_id=batch_id, now=now)


def record_action(
    session: Session,
    *,
    actor: str,
    action: str,
    target: str | None,
    detail: dict[str, Any],
    affected: int,
) -> None:
    """Append an operator action to the audit."""
    session.add(
        OperatorAction(
            at=utcnow(),
            actor=actor[:200],
            action=action,
            target=target,
            detail=json.dumps(detail, default=str),
            affected=affected,
        )
    )


def operator_actions(session: Session, *, limit: int = 100) -> list[OperatorAction]:
    """The newest operator actions."""
    return list(
        session.execute(
            select(OperatorAction).order_by(OperatorAction.id.desc()).limit(limit)
        ).scalars()
    )


# --- audit export, retention and erasure ----------------------------------------------

PURGED = "purged"
"""What replaces a number once retention has removed it."""
AnySelect = Select[*tuple[Any, ...]]
KeyColumn = ColumnElement[Any] | QueryableAttribute[Any]
"""A column of a keyset: a model attribute or an expression."""
ERASED = "erased"
"""What replaces a number erased on its owner's request."""
NUMBER_MARKERS = frozenset({PURGED, ERASED})
MIN_SCRUB_LENGTH = 5
"""Shorter stored inputs (a refused ``12``) are not numbers anyone owns, and replacing
them inside free text would mangle attempt counts and codes."""


def keyset_after(key: Sequence[KeyColumn], values: Sequence[Any]) -> ColumnElement[bool]:
    """Rows strictly after ``values`` in the order of ``key``.

    Written as ``k0 >= v0 AND (k0 > v0 OR (k0 = v0 AND ...))`` rather than a row
    comparison, so an index whose first column is ``k0`` bounds the scan on every
    database.
    """
    head, rest = key[0], key[1:]
    after: ColumnElement[bool] = head > values[0]
    if not rest:
        return after
    tie: ColumnElement[bool] = head == values[0]
    bound: ColumnElement[bool] = head >= values[0]
    return bound & (after | (tie & keyset_after(rest, values[1:])))


@dataclass(frozen=True, slots=True)
class AuditSelection:
    """What an audit export holds: a time range, a number, a job, or several."""

    since: dt.datetime | None = None
    until: dt.datetime | None = None
    number: str | None = None
    job_id: str | None = None
    owner_key_id: int | None = None
    """Rows of jobs enqueued by this API key (``dispatcher.tenancy``); None: any."""


def audit_events_query(
    selection: AuditSelection,
) -> tuple[AnySelect, list[KeyColumn]]:
    """The status events of a selection with their recipient, job and attempt, and the
    key that pages them.

    Per number, it walks ``recipients(number, created_at)`` and each recipient's
    events together; per job, the job's events; per range, ``status_events(at)``.
    """
    query: AnySelect = (
        select(
            StatusEvent.at.label("at"),
            Job.id.label("job_id"),
            Job.reference.label("reference"),
            Job.created_by.label("created_by"),
            Recipient.id.label("recipient_id"),
            Recipient.number.label("number"),
            StatusEvent.from_status.label("from_status"),
            StatusEvent.to_status.label("to_status"),
            StatusEvent.cause.label("cause"),
            StatusEvent.actor.label("actor"),
            StatusEvent.attempt_id.label("attempt_id"),
            Attempt.attempt_no.label("attempt_no"),
            Attempt.host.label("host"),
            Attempt.http_status.label("http_status"),
            Recipient.status.label("current_status"),
            Recipient.gateway_message_id.label("gateway_message_id"),
            Recipient.error_code.label("error_code"),
            Recipient.attempts.label("attempts"),
            StatusEvent.id.label("event_id"),
            Recipient.created_at.label("recipient_created_at"),
        )
        .select_from(StatusEvent)
        .join(Recipient, Recipient.id == StatusEvent.recipient_id)
        .join(Job, Job.id == StatusEvent.job_id)
        .outerjoin(Attempt, Attempt.id == StatusEvent.attempt_id)
        .where(*owned_by(selection.owner_key_id))
    )
    key: list[KeyColumn]
    if selection.number is not None:
        query = query.where(Recipient.number == selection.number)
        if selection.until is not None:
            # Nothing happens to a recipient before it exists.
            query = query.where(Recipient.created_at < selection.until)
        key = [Recipient.created_at, Recipient.id, StatusEvent.id]
    elif selection.job_id is not None:
        key = [StatusEvent.id]
    else:
        key = [StatusEvent.at, StatusEvent.id]
    if selection.job_id is not None:
        query = query.where(StatusEvent.job_id == selection.job_id)
    if selection.since is not None:
        query = query.where(StatusEvent.at >= selection.since)
    if selection.until is not None:
        query = query.where(StatusEvent.at < selection.until)
    return query, key


def audit_recipients_query(
    selection: AuditSelection,
) -> tuple[AnySelect, list[KeyColumn]]:
    """The recipients of a selection (jobs created in its range) with their job, and the
    key that pages them: per number ``recipients(number, created_at)``, per job its
    recipients, per range ``jobs(created_at)`` and each job's recipients."""
    query: AnySelect = select(
        Recipient.created_at.label("created_at"),
        Job.id.label("job_id"),
        Job.reference.label("reference"),
        Job.created_by.label("created_by"),
        Recipient.id.label("recipient_id"),
        Recipient.number.label("number"),
        Recipient.status.label("status"),
        Recipient.gateway_message_id.label("gateway_message_id"),
        Recipient.error_code.label("error_code"),
        Recipient.error_detail.label("error_detail"),
        Recipient.attempts.label("attempts"),
        Recipient.next_attempt_at.label("next_attempt_at"),
        Recipient.updated_at.label("updated_at"),
        Job.purged_at.label("purged_at"),
        Job.created_at.label("job_created_at"),
    ).join(Job, Job.id == Recipient.job_id)
    query = query.where(*owned_by(selection.owner_key_id))
    key: list[KeyColumn]
    created: KeyColumn = Recipient.created_at
    if selection.number is not None:
        query = query.where(Recipient.number == selection.number)
        key = [Recipient.created_at, Recipient.id]
    elif selection.job_id is not None:
        key = [Recipient.id]
    else:
        created = Job.created_at
        key = [Job.created_at, Job.id, Recipient.id]
    if selection.job_id is not None:
        query = query.where(Recipient.job_id == selection.job_id)
    if selection.since is not None:
        query = query.where(created >= selection.since)
    if selection.until is not None:
        query = query.where(created < selection.until)
    return query, key


def keyset_page(
    session: Session,
    *,
    query: AnySelect,
    key: Sequence[KeyColumn],
    after: Sequence[Any] | None,
    limit: int,
) -> list[Any]:
    """One page of ``query`` in the order of ``key``, strictly after ``after``.

    Each row ends with the values of ``key``, to pass back as ``after`` for the next page.
    """
    if after is not None:
        query = query.where(keyset_after(key, after))
    query = query.add_columns(*(column.label(f"_key{i}") for i, column in enumerate(key)))
    return list(session.execute(query.order_by(*key).limit(limit)))


def _pending_recipient_of_job() -> ColumnElement[bool]:
    pending = [str(s) for s in RecipientStatus if not s.is_final]
    return exists().where(Recipient.job_id == Job.id, Recipient.status.in_(pending))


def purgeable_jobs(
    session: Session,
    *,
    created_before: dt.datetime,
    after: tuple[dt.datetime, str] | None,
    limit: int,
) -> list[tuple[str, dt.datetime]]:
    """(id, created_at) of unpurged jobs created before ``created_before`` whose
    recipients are all final, oldest first (locked, skipping those another purger has)."""
    query = (
        select(Job.id, Job.created_at)
        .where(
            Job.created_at < created_before,
            Job.purged_at.is_(None),
            ~_pending_recipient_of_job(),
        )
        .order_by(Job.created_at, Job.id)
        .limit(limit)
    )
    if after is not None:
        query = query.where(keyset_after([Job.created_at, Job.id], after))
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True, of=Job)
    return [(row[0], row[1]) for row in session.execute(query)]


def count_purgeable(session: Session, *, created_before: dt.datetime) -> tuple[int, int]:
    """How many jobs, and recipients of them, a purge at this cutoff would touch."""
    jobs = (
        select(Job.id)
        .where(
            Job.created_at < created_before,
            Job.purged_at.is_(None),
            ~_pending_recipient_of_job(),
        )
        .subquery()
    )
    n_jobs = session.execute(select(func.count()).select_from(jobs)).scalar_one()
    n_recipients = session.execute(
        select(func.count()).select_from(Recipient).where(Recipient.job_id.in_(select(jobs.c.id)))
    ).scalar_one()
    return int(n_jobs), int(n_recipients)


def _names_own_number(column: KeyColumn) -> ColumnElement[bool]:
    return (func.length(Recipient.number) >= MIN_SCRUB_LENGTH) & column.contains(
        Recipient.number, autoescape=False
    )


def events_naming_their_number(
    session: Session, *, recipients: ColumnElement[bool]
) -> list[tuple[int, str, str]]:
    """(event id, cause, number) of the events of ``recipients`` whose cause quotes
    the recipient's own number."""
    rows = session.execute(
        select(StatusEvent.id, StatusEvent.cause, Recipient.number)
        .join(Recipient, Recipient.id == StatusEvent.recipient_id)
        .where(recipients, _names_own_number(StatusEvent.cause))
    )
    return [(r[0], r[1], r[2]) for r in rows]


def details_naming_their_number(
    session: Session, *, recipients: ColumnElement[bool]
) -> list[tuple[int, str, str]]:
    """(recipient id, error detail, number) of ``recipients`` whose detail quotes it."""
    rows = session.execute(
        select(Recipient.id, Recipient.error_detail, Recipient.number).where(
            recipients, _names_own_number(Recipient.error_detail)
        )
    )
    return [(r[0], r[1] or "", r[2]) for r in rows]


def set_event_causes(session: Session, *, causes: dict[int, str]) -> None:
    """Rewrite some events' causes (the history keeps its rows and times)."""
    if causes:
        session.execute(
            update(StatusEvent),
            [{"id": event_id, "cause": cause} for event_id, cause in causes.items()],
        )


def set_error_details(session: Session, *, details: dict[int, str]) -> None:
    """Rewrite some recipients' error details."""
    if details:
        session.execute(
            update(Recipient),
            [{"id": rid, "error_detail": detail} for rid, detail in details.items()],
        )


@dataclass(frozen=True, slots=True)
class AttemptText:
    """The fields of an attempt that can name numbers."""

    id: int
    numbers: str
    request: str | None
    raw_reply: str | None
    error: str | None


def attempt_texts(session: Session, *, job_ids: Collection[str]) -> list[AttemptText]:
    """The number-bearing fields of these jobs' attempts."""
    rows = session.execute(
        select(Attempt.id, Attempt.numbers, Attempt.request, Attempt.raw_reply, Attempt.error)
        .where(Attempt.job_id.in_(list(job_ids)))
        .order_by(Attempt.id)
    )
    return [AttemptText(r[0], r[1], r[2], r[3], r[4]) for r in rows]


def set_attempt_texts(session: Session, *, rows: Sequence[AttemptText]) -> None:
    """Write back attempts' number-bearing fields."""
    if rows:
        session.execute(
            update(Attempt),
            [
                {
                    "id": r.id,
                    "numbers": r.numbers,
                    "request": r.request,
                    "raw_reply": r.raw_reply,
                    "error": r.error,
                }
                for r in rows
            ],
        )


def replace_numbers(session: Session, *, recipients: ColumnElement[bool], marker: str) -> int:
    """Replace the number of every recipient matching ``recipients`` by ``marker``."""
    result = session.execute(
        update(Recipient)
        .where(recipients, Recipient.number.not_in(list(NUMBER_MARKERS)))
        .values(number=marker)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def remove_job_texts(session: Session, *, job_ids: Collection[str], now: dt.datetime) -> int:
    """Empty these jobs' texts (and the request digest, which a short text would not
    protect) and stamp ``purged_at``; the counts and everything else stay."""
    if not job_ids:
        return 0
    result = session.execute(
        update(Job)
        .where(Job.id.in_(list(job_ids)))
        .values(text="", request_hash=None, purged_at=func.coalesce(Job.purged_at, now))
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def recipients_with_number(
    session: Session, *, number: str, limit: int
) -> list[tuple[int, str, str]]:
    """(id, job id, status) of up to ``limit`` recipients with this number, locked.

    The lock makes a concurrent claim wait for the erasure (and then find the rows
    cancelled), or the erasure wait for the claim (and then see them submitting), so
    a number is never scrubbed from a batch on its way to the gateway.
    """
    rows = session.execute(
        select(Recipient.id, Recipient.job_id, Recipient.status)
        .where(Recipient.number == number)
        .order_by(Recipient.created_at, Recipient.id)
        .limit(limit)
        .with_for_update()
    )
    return [(r[0], r[1], r[2]) for r in rows]


def count_with_number(session: Session, *, number: str) -> dict[str, int]:
    """Recipients with this number, per status."""
    rows = session.execute(
        select(Recipient.status, func.count())
        .where(Recipient.number == number)
        .group_by(Recipient.status)
    )
    return {status: int(n) for status, n in rows}


def jobs_only_to(session: Session, *, job_ids: Collection[str], number: str) -> list[str]:
    """Those of ``job_ids`` whose every recipient has this number."""
    if not job_ids:
        return []
    # Recipients erased or purged before belong to nobody any more.
    other = exists().where(
        Recipient.job_id == Job.id, Recipient.number.not_in([number, *NUMBER_MARKERS])
    )
    return list(session.execute(select(Job.id).where(Job.id.in_(list(job_ids)), ~other)).scalars())


def cancel_waiting(
    session: Session, *, ids: Collection[int], at: dt.datetime, cause: str, actor: str
) -> int:
    """Cancel those of ``ids`` still waiting to be sent (``queued``, ``retry_wait``), and
    settle their batches if no worker holds them; returns how many were cancelled."""
    if not ids:
        return 0
    waiting = [RecipientStatus.QUEUED, RecipientStatus.RETRY_WAIT]
    batches = batches_of(session, recipient_ids=ids)
    moved = transition(
        session,
        ids=ids,
        from_statuses=waiting,
        to_status=RecipientStatus.CANCELLED,
        at=at,
        cause=cause,
        actor=actor,
        values={"next_attempt_at": None},
    )
    for batch_id in batches:
        settle_batch_if_idle(session, batch_id=batch_id, now=at)
    return moved


_S = TypeVar("_S", JobFilter, RecipientFilter, AuditSelection)


def visible_to(viewer: Viewer, selection: _S) -> _S:
    """``selection`` narrowed to the jobs ``viewer`` may see."""
    if viewer.sees_all:
        return selection
    narrowed: _S = dataclasses.replace(selection, owner_key_id=viewer.owner_key_id)
    return narrowed
