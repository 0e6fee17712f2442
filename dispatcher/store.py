"""Queries and updates on the audit database.

Every function takes the session keyword-only and never commits: the service
layer owns transactions, so one state change is one commit. Writes are set-based
(one statement per group of recipients, history rows by ``INSERT ... SELECT``)
because a batch holds up to 100 recipients and a job up to many thousands.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Select,
    any_,
    bindparam,
    func,
    insert,
    literal,
    null,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from dispatcher.models import (
    CONTROL_ROW_ID,
    Attempt,
    AttemptOutcome,
    Batch,
    BatchStatus,
    BreakerState,
    DispatchControl,
    Job,
    OperatorAction,
    Recipient,
    RecipientStatus,
    StatusEvent,
    WebhookDelivery,
    utcnow,
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


def insert_batches(session: Session, *, job_id: str, count: int, due_at: dt.datetime) -> list[int]:
    """Insert ``count`` queued batches for a job and return their ids in order."""
    if count == 0:
        return []
    rows = [
        {
            "job_id": job_id,
            "status": BatchStatus.QUEUED,
            "due_at": due_at,
            "attempts": 0,
            "created_at": due_at,
            "updated_at": due_at,
        }
        for _ in range(count)
    ]
    result = session.execute(insert(Batch).returning(Batch.id, sort_by_parameter_order=True), rows)
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
        session.execute(insert(Recipient), list(rows))


def _copy_rows(session: Session, table: Any, rows: Sequence[dict[str, Any]]) -> None:
    """COPY ``rows`` into ``table`` in the session's transaction, with the Python-side
    column defaults an INSERT would have applied to columns the rows leave out."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row), []).append(row)
    cursor = session.connection().connection.driver_connection.cursor()  # type: ignore[union-attr]
    for keys, members in groups.items():
        defaults = {
            column.key: column.default.arg(None)
            if column.default.is_callable
            else column.default.arg
            for column in table.columns
            if column.key not in keys and not column.primary_key and column.default is not None
        }
        names = [*keys, *defaults]
        quoted = ", ".join(f'"{name}"' for name in names)
        with cursor.copy(f'COPY "{table.name}" ({quoted}) FROM STDIN') as copy:
            extra = tuple(defaults.values())
            for row in members:
                copy.write_row((*row.values(), *extra))


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


def claim_oldest_due(
    session: Session,
    model: type[_Claimable],
    *,
    now: dt.datetime,
    queued: str,
    claimed: str,
    **values: Any,
) -> _Claimable | None:
    """Claim the oldest row of ``model`` due at ``now``: ``queued`` to ``claimed``.

    The update re-checks the status, so two claimers can never both win, whatever
    the database; ``values`` are set along with the claim.
    """
    query = (
        select(model.id)
        .where(model.status == queued, model.due_at <= now)
        .order_by(model.due_at, model.id)
        .limit(1)
    )
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


def claim_next_batch(session: Session, *, now: dt.datetime, worker: str) -> Batch | None:
    """Claim the oldest due batch for ``worker``: ``queued`` to ``submitting``."""
    return claim_oldest_due(
        session,
        Batch,
        now=now,
        queued=BatchStatus.QUEUED,
        claimed=BatchStatus.SUBMITTING,
        claimed_by=worker,
    )


@dataclass(frozen=True, slots=True)
class PendingRecipient:
    """A recipient about to be submitted."""

    id: int
    number: str
    attempts: int


def sendable_recipients(session: Session, *, batch_id: int) -> list[PendingRecipient]:
    """The recipients of a batch still waiting to be sent, in insertion order."""
    rows = session.execute(
        select(Recipient.id, Recipient.number, Recipient.attempts)
        .where(
            Recipient.batch_id == batch_id,
            status_recheck([RecipientStatus.QUEUED, RecipientStatus.RETRY_WAIT]),
        )
        .order_by(Recipient.id)
    )
    return [PendingRecipient(r.id, r.number, r.attempts) for r in rows]


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
    """After an attempt: requeue the batch at its earliest retry, or mark it done."""
    waiting = session.execute(
        select(func.count(), func.min(Recipient.next_attempt_at)).where(
            Recipient.batch_id == batch_id,
            status_recheck([RecipientStatus.QUEUED, RecipientStatus.RETRY_WAIT]),
        )
    ).one()
    count, next_at = int(waiting[0]), waiting[1]
    if count:
        values: dict[str, Any] = {"status": BatchStatus.QUEUED, "due_at": next_at or now}
    else:
        values = {"status": BatchStatus.DONE}
    session.execute(
        update(Batch)
        .where(Batch.id == batch_id)
        .values(updated_at=now, claimed_at=None, **values)
        .execution_options(synchronize_session=False)
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
    """Close a dead worker's batch: its in-flight attempt abandoned, recipients unknown."""
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
            values={"outcome": AttemptOutcome.ABANDONED, "finished_at": now, "error": cause},
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
        cause=cause,
        actor="sweeper",
        attempt_id=in_flight[-1] if in_flight else None,
        values={"error_code": WORKER_LOST, "error_detail": cause[:500]},
    )


def count_due(session: Session, *, now: dt.datetime) -> tuple[int, dt.datetime | None]:
    """How many queued batches are due, and the oldest due time among them."""
    row = session.execute(
        select(func.count(), func.min(Batch.due_at)).where(
            Batch.status == BatchStatus.QUEUED, Batch.due_at <= now
        )
    ).one()
    return int(row[0]), row[1]


# --- reading -----------------------------------------------------------------------


def get_job(session: Session, *, job_id: str) -> Job | None:
    """The job with this id, or None."""
    return session.get(Job, job_id)


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


def recent_jobs(
    session: Session,
    *,
    limit: int = 20,
    number: str | None = None,
    status: RecipientStatus | None = None,
) -> list[Job]:
    """The newest jobs, optionally those with a recipient of that number or status."""
    query = select(Job).order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)
    conditions = []
    if number is not None:
        conditions.append(Recipient.number == number)
    if status is not None:
        conditions.append(Recipient.status == str(status))
    if conditions:
        query = query.where(Job.id.in_(select(Recipient.job_id).where(*conditions)))
    return list(session.execute(query).scalars())


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
    """Recipients still waiting to retry whose job was created before ``created_before``."""
    return list(
        session.execute(
            select(Recipient.id)
            .where(
                Recipient.status == RecipientStatus.RETRY_WAIT,
                Recipient.created_at < created_before,
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
    """Leave out numbers refused at enqueue (never submitted, not phone numbers)."""

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
            where.append(Recipient.batch_id.is_not(None))
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
