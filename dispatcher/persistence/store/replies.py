"""Recording a gateway reply: each recipient's outcome with its status event, the
attempt's result, the batch requeued at its earliest retry or done, and the
breaker's count of failures reset.

On PostgreSQL a reply is one statement; elsewhere one update and one insert per
group of recipients that end alike. A reply the database refuses to write whole is
written recipient by recipient by ``dispatcher.persistence.salvage``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Mapping, Sequence
from typing import Any, NamedTuple

from sqlalchemy import (
    ColumnElement,
    String,
    case,
    exists,
    func,
    literal,
    select,
    text,
    type_coerce,
    update,
)
from sqlalchemy.orm import Session

from dispatcher.domain.statuses import WAITING_STATUSES, BatchStatus, RecipientStatus
from dispatcher.persistence import dialect
from dispatcher.persistence.models import CONTROL_ROW_ID, Attempt, Batch, Recipient
from dispatcher.persistence.store._common import WORKER_LOST, json_rows
from dispatcher.persistence.store.attempts import complete_attempt
from dispatcher.persistence.store.control import reset_failures
from dispatcher.persistence.store.transitions import status_recheck, transition


def settle_batch(
    session: Session,
    *,
    batch_id: int,
    now: dt.datetime,
    only_if_queued: bool = False,
    after_attempt: int | None = None,
) -> None:
    """After an attempt: requeue the batch at its earliest retry, or mark it done.

    One statement: the count and the earliest retry time are subqueries of the update.
    ``only_if_queued`` leaves it alone if a worker has claimed it meanwhile (a
    compare-and-set, so even a claim that commits while this waits is kept).
    ``after_attempt`` (a reply's attempt id) leaves it alone while another attempt
    holds it in flight: a reply written again after its first commit went through
    unacknowledged must not requeue the batch its next attempt is sending.
    """
    waiting = (Recipient.batch_id == batch_id) & status_recheck(WAITING_STATUSES)
    count = select(func.count()).where(waiting).scalar_subquery()
    next_at = select(func.min(Recipient.next_attempt_at)).where(waiting).scalar_subquery()
    stamp = literal(now, type_=Batch.due_at.type)
    where: list[ColumnElement[bool]] = [Batch.id == batch_id]
    if only_if_queued:
        where.append(Batch.status == str(BatchStatus.QUEUED))
    if after_attempt is not None:
        made = select(Attempt.attempt_no).where(Attempt.id == after_attempt).scalar_subquery()
        where.append((Batch.status != str(BatchStatus.SUBMITTING)) | (Batch.attempts == made))
    session.execute(
        update(Batch)
        .where(*where)
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


def record_guard(attempt_id: int) -> ColumnElement[bool]:
    """Which recipients a reply of attempt ``attempt_id`` may still move: those its
    batch still holds in flight under that attempt, and those the sweeper marked
    ``unknown`` as WORKER_LOST while the reply could not be written (it replaces that
    guess, but nothing else).

    In flight means stored waiting (or ``submitting``, as written before the claim was
    kept per submission) in a batch that is ``submitting`` for this very attempt."""
    in_flight = exists().where(
        Attempt.id == attempt_id,
        Batch.id == Attempt.batch_id,
        Batch.id == Recipient.batch_id,
        Batch.status == str(BatchStatus.SUBMITTING),
        Batch.attempts == Attempt.attempt_no,
    )
    stored = type_coerce(Recipient.stored_status, String)
    return (stored.in_(_IN_FLIGHT) & in_flight) | (
        (stored == str(RecipientStatus.UNKNOWN)) & (Recipient.error_code == WORKER_LOST)
    )


_IN_FLIGHT = [str(s) for s in (*WAITING_STATUSES, RecipientStatus.SUBMITTING)]


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
    if dialect.is_postgresql(session):
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
            "rows": json_rows(_RESULT_COLUMNS, rows),
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
    settle_batch(session, batch_id=batch_id, now=at, after_attempt=attempt_id)
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
        guard=record_guard(attempt_id),
        batches="in_flight",
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
    guessed = (Recipient.stored_status == str(RecipientStatus.UNKNOWN)) & (Recipient.attempts > 0)
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
    held AS (
        -- The batch first, as the sweeper's abandon locks it before its recipients:
        -- the two never wait on each other in opposite orders.
        SELECT b.id FROM batches b JOIN attempts a ON a.id = :attempt_id
        WHERE b.id = :batch_id AND b.status = 'submitting' AND b.attempts = a.attempt_no
        FOR UPDATE OF b
    ),
    locked AS (
        -- Every recipient the reply names that it might move, locked, then read as it
        -- stands: one the sweeper abandoned while held waited for the batch reads
        -- unknown here (the lock returns the row's newest version), not queued as this
        -- statement's snapshot still has it. The held subquery runs first.
        SELECT r.id, r.status, r.error_code FROM recipients r
        WHERE r.batch_id = :batch_id AND r.id = ANY (ARRAY(SELECT id FROM result))
            AND (r.status || '') IN ('queued', 'retry_wait', 'submitting', 'unknown')
            AND (SELECT count(*) FROM held) >= 0
        FOR UPDATE OF r
    ),
    current AS (
        SELECT id, CASE WHEN status = 'unknown' THEN 'unknown' ELSE 'submitting' END AS status
        FROM locked
        WHERE (status IN ('queued', 'retry_wait', 'submitting') AND EXISTS (SELECT 1 FROM held))
            OR (status = 'unknown' AND error_code = :worker_lost)
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
            g.next_attempt_at, g.error_code
    ),
    events AS (
        INSERT INTO status_events (recipient_id, job_id, at, from_status, to_status, cause,
            actor, attempt_id, error_code)
        SELECT id, job_id, :now, from_status, to_status, cause, :actor, :attempt_id, error_code
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
            -- Not while another attempt holds it (see settle_batch's after_attempt).
            AND (batches.status <> 'submitting' OR EXISTS (SELECT 1 FROM held))
    ),
    breaker AS (
        UPDATE dispatch_control SET breaker_failures = 0, updated_at = :now
        WHERE :reset_breaker AND id = :control_id AND breaker_failures > 0
    )
    SELECT count(*) FROM moved
    """
)
