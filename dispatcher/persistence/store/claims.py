"""Claiming due batches: ``queued`` to ``submitting``, oldest due first, lane by lane.

A claim is committed before its batch's HTTP call, so a duplicate wake-up finds the
batch taken (docs/design.md, section 3, guarantee 2). The claim's update re-checks
the status, so two claimers never both win, whatever the database; on PostgreSQL
``claim_if_open`` also reads the dispatch control row and the batch's recipients in
the same statement.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, Select, func, select, text, update
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import TextClause

from dispatcher.domain.lanes import LANE_NUMBERS
from dispatcher.domain.message import Kind
from dispatcher.domain.statuses import WAITING_STATUSES, BatchStatus, BreakerState, RecipientStatus
from dispatcher.persistence import dialect
from dispatcher.persistence.models import CONTROL_ROW_ID, Batch, Job, Recipient, WebhookDelivery
from dispatcher.persistence.store.transitions import status_recheck


def due_batches(now: dt.datetime) -> Select[int]:
    """Ids of queued batches due at ``now``, oldest due first."""
    return (
        select(Batch.id)
        .where(Batch.status == BatchStatus.QUEUED, Batch.due_at <= now)
        .order_by(Batch.due_at, Batch.id)
    )


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
    row_id = session.execute(dialect.skip_locked(session, query)).scalar_one_or_none()
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


ALL_LANES = LANE_NUMBERS


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
    attempts_base: int = 0
    """``attempts`` at an operator's latest retry: the retry limit counts from here."""


def sendable_recipients(session: Session, *, batch_id: int) -> list[PendingRecipient]:
    """The recipients of a batch still waiting to be sent, in insertion order."""
    rows = session.execute(
        select(
            Recipient.id,
            Recipient.number,
            Recipient.attempts,
            Recipient.stored_status,
            Recipient.attempts_base,
        )
        .where(Recipient.batch_id == batch_id, status_recheck(WAITING_STATUSES))
        .order_by(Recipient.id)
    )
    return [PendingRecipient(*r) for r in rows]


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
    attempt_id: int | None = None
    """The in-flight attempt row the claim's own statement wrote (PostgreSQL, when
    the batch is unexpired with recipients to send); None: the caller writes it."""


class Gated:
    """``claim_if_open``'s answer when the control row asks for the careful path."""


GATED = Gated()


class Raced:
    """``claim_if_open``'s answer when the batch it picked changed after the statement
    began: nothing was claimed, and a new statement, in a new transaction, may claim."""


RACED = Raced()


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
    session: Session,
    *,
    now: dt.datetime,
    worker: str,
    lanes: Sequence[int] = ALL_LANES,
    limit: int = 1,
) -> list[ClaimedBatch] | Gated | Raced | None:
    """On PostgreSQL, claim up to ``limit`` of the oldest due batches in one statement
    if dispatch is open, high lanes first.

    One round trip reads the control row, claims the batches (``SKIP LOCKED``), reads
    their jobs and their recipients still to send, and writes each one's in-flight
    attempt row (``attempts.start_attempt``'s row, built in SQL:
    ``ClaimedBatch.attempt_id``) unless it is expired or has nobody left to send,
    which the caller closes. The recipients are not locked: a batch's lock is what
    every change from a waiting status takes (``transitions.BatchSide``), so none can
    move them once the claim holds it; and one that committed after this statement
    began, whose recipients this statement would read as they were, has touched the
    batch, which is then left unclaimed (when no batch is left, ``RACED``: claim
    again). The control row is read by the same statement that claims, so a pause or
    an open breaker committed before it is honoured exactly as by the separate read
    it replaces. Returns None when nothing is due, and ``GATED`` when dispatch is
    paused, the breaker is not closed or the control row is missing: then the caller
    takes the careful path (``Controls.gate``, then ``claim_batch``), which handles
    the probe. On other databases it returns ``GATED`` at once, without a statement.
    """
    if not dialect.is_postgresql(session):
        return GATED
    rows = session.execute(
        _claim_statement(tuple(lanes)),
        {"now": now, "worker": worker, "control_id": CONTROL_ROW_ID, "k": max(limit, 1)},
    ).all()
    if not rows or rows[0].paused or rows[0].breaker_state != BreakerState.CLOSED:
        return GATED
    head = rows[0]
    if head.batch_id is None:
        return RACED if head.picked else None
    return [
        ClaimedBatch(
            id=row.batch_id,
            job_id=row.job_id,
            attempts=row.attempts,
            expires_at=row.expires_at,
            text=row.text,
            sender=row.sender,
            kind=row.kind,
            maxconcat=row.maxconcat,
            reference=row.reference,
            recipients=[PendingRecipient(*r) for r in json.loads(row.recipients or "[]")],
            # Batches raced away are due still: the caller looks again.
            more_due=bool(row.more_due) or row.picked > row.claimed,
            attempt_id=row.attempt_id,
        )
        for row in rows
    ]


# The gateway's ``type`` for a job's kind, as ``Kind.gateway_type`` gives it; NULL
# for a kind this code does not know, which then takes the careful path.
_GATEWAY_TYPE = (
    "CASE j.kind "
    + " ".join(f"WHEN '{kind.value}' THEN {int(kind.gateway_type)}" for kind in Kind)
    + " END"
)


@functools.cache
def _claim_statement(lanes: tuple[int, ...]) -> TextClause:
    # One CTE per lane, high first, each taking what the lanes before it left of
    # :k (LIMIT :k minus their count, evaluated once): a lower lane's rows are never
    # locked while a higher lane fills the claim. Statuses are literals so the
    # partial (lane, due_at) WHERE status = 'queued' index serves every plan,
    # generic or not. ``status || ''`` keeps the claim's update on the primary key
    # and the recipients' lookup on the batch index, whatever the statistics say
    # (see ``status_recheck``). Only ints and the Kind enum's own values are
    # formatted in (S608).
    probes: list[str] = []
    for i, lane in enumerate(lanes):
        before = [f"(SELECT count(*) FROM lane_{j})" for j in range(i)]  # noqa: S608
        taken = " + ".join(before) or "0"
        probes.append(
            f"""lane_{i} AS (
            SELECT id FROM batches
            WHERE status = 'queued' AND lane = {int(lane)} AND due_at <= :now
                AND EXISTS (SELECT 1 FROM ctl WHERE NOT paused AND breaker_state = 'closed')
            ORDER BY due_at, id LIMIT (:k - ({taken})) FOR UPDATE SKIP LOCKED
        )"""  # noqa: S608
        )
    picked = " UNION ALL ".join(f"SELECT id FROM lane_{i}" for i in range(len(lanes)))  # noqa: S608
    # Whether anything else was due: a claimer that took the last due batches stops
    # after them instead of making an empty claim to find out. Rows other workers
    # are claiming still count (no SKIP LOCKED), which only costs that empty claim.
    others = " OR ".join(
        f"""EXISTS (SELECT 1 FROM batches
             WHERE status = 'queued' AND lane = {int(lane)} AND due_at <= :now
                AND id NOT IN (SELECT id FROM picked))"""  # noqa: S608
        for lane in lanes
    )
    return text(
        f"""
        WITH ctl AS (
            SELECT paused, breaker_state FROM dispatch_control WHERE id = :control_id
        ),
        {", ".join(probes)},
        picked AS ({picked}),
        seen AS (
            SELECT id, xmin FROM batches WHERE id IN (SELECT id FROM picked)
        ),
        claimed AS (
            UPDATE batches SET status = 'submitting', claimed_at = :now,
                claimed_by = :worker, attempts = batches.attempts + 1, updated_at = :now
            FROM seen
            WHERE batches.id = seen.id AND (batches.status || '') = 'queued'
                -- The row as this statement's snapshot has it, or the recipients read
                -- below may be older than the batch: a change from a waiting status
                -- that committed since touched it (transitions._idle_batches).
                AND batches.xmin = seen.xmin
            RETURNING batches.id, batches.job_id, batches.attempts, batches.expires_at
        ),
        waiting AS (
            SELECT r.id, r.batch_id, r.number, r.attempts, r.status, r.attempts_base
            FROM recipients r
            WHERE r.batch_id IN (SELECT id FROM claimed)
                AND (r.status || '') IN ('queued', 'retry_wait')
        ),
        carried AS (
            SELECT w.batch_id, string_agg(w.number, ',' ORDER BY w.id) AS numbers,
                '[' || string_agg('[' || w.id || ',"' || w.status || '"]', ','
                    ORDER BY w.id) || ']' AS claimed,
                -- What the caller sends, one JSON text per batch: a row per recipient
                -- would repeat the job's columns (its text too) a hundred times.
                '[' || string_agg('[' || w.id || ',' || to_json(w.number)::text || ','
                    || w.attempts || ',"' || w.status || '",' || w.attempts_base || ']', ','
                    ORDER BY w.id) || ']' AS recipients
            FROM waiting w GROUP BY w.batch_id
        ),
        started AS (
            -- The attempt row as attempts.start_attempt writes it, to the character
            -- (its JSON texts as attempts.claimed_json and request_json make them):
            -- numbers in submission (id) order, the claim's statuses, the form
            -- without the message text.
            INSERT INTO attempts (batch_id, job_id, attempt_no, numbers, claimed, request,
                started_at, outcome, worker)
            SELECT c.id, c.job_id, c.attempts, n.numbers, n.claimed,
                '{{"to": ' || to_json(n.numbers)::text
                    || ', "from": ' || COALESCE(to_json(j.sender)::text, 'null')
                    || ', "maxconcat": ' || COALESCE(j.maxconcat::text, 'null')
                    || ', "type": ' || {_GATEWAY_TYPE}
                    || ', "usercontext": ' || COALESCE(to_json(j.reference)::text, 'null')
                    || '}}',
                :now, 'in_flight', :worker
            FROM claimed c JOIN jobs j ON j.id = c.job_id
                JOIN carried n ON n.batch_id = c.id
            WHERE (c.expires_at IS NULL OR c.expires_at > :now) AND {_GATEWAY_TYPE} IS NOT NULL
            RETURNING id, batch_id
        )
        SELECT ctl.paused, ctl.breaker_state,
            (SELECT count(*) FROM picked) AS picked,
            (SELECT count(*) FROM claimed) AS claimed,
            CASE WHEN c.id IS NULL THEN false ELSE ({others}) END AS more_due,
            c.id AS batch_id, c.job_id, c.attempts, c.expires_at, s.id AS attempt_id,
            j.text, j.sender, j.kind, j.maxconcat, j.reference, n.recipients
        FROM ctl
        LEFT JOIN claimed c ON true
        LEFT JOIN jobs j ON j.id = c.job_id
        LEFT JOIN started s ON s.batch_id = c.id
        LEFT JOIN carried n ON n.batch_id = c.id
        ORDER BY c.id
        """  # noqa: S608
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
