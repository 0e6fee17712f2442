"""Operator actions on recipients: the selections they apply to, cancelling what
still waits, and the audit row each action leaves."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Collection
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

from sqlalchemy import ColumnElement, String, func, literal_column, select, type_coerce
from sqlalchemy.orm import Session

from dispatcher.domain.statuses import WAITING_STATUSES, RecipientStatus
from dispatcher.domain.storable import check_storable
from dispatcher.domain.times import utcnow
from dispatcher.persistence import dialect
from dispatcher.persistence.models import Batch, Job, OperatorAction, Recipient
from dispatcher.persistence.shown import status_in
from dispatcher.persistence.store.jobs import owned_by
from dispatcher.persistence.store.privacy import NUMBER_MARKERS
from dispatcher.persistence.store.replies import settle_batch
from dispatcher.persistence.store.transitions import transition


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
    """Recipients of jobs enqueued by this API key (``dispatcher.domain.tenancy``); None: any."""

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
            where.append(status_in(self.statuses))
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


class RetryCandidate(NamedTuple):
    """A recipient a retry's filter selected, with what decides whether it goes."""

    id: int
    job_id: str
    number: str
    status: str
    error_code: str | None
    changed_at: dt.datetime
    attempts: int
    expires_at: dt.datetime | None
    """The validity in force for it: its batch's, else its job's (a batch made by an
    earlier version's retry carried none)."""
    batch_attempts: int
    """Attempt numbers its batch has used, spent or not (a credit pause, an outage)."""


def retry_candidates(
    session: Session, *, selection: RecipientFilter, lock: bool = False
) -> list[RetryCandidate]:
    """The recipients a retry's selection holds, in id order, each with what the retry
    rules and the new batch need. ``lock``: hold them until the transaction ends, so a
    retry racing this one waits and then finds them moved (PostgreSQL rereads the rows
    it waited for; SQLite's writers are serialized already)."""
    query = (
        select(
            Recipient.id,
            Recipient.job_id,
            Recipient.number,
            Recipient.status,
            Recipient.error_code,
            Recipient.updated_at,
            Recipient.attempts,
            func.coalesce(Batch.expires_at, Job.expires_at),
            func.coalesce(Batch.attempts, 0),
        )
        .outerjoin(Batch, Batch.id == Recipient.batch_id)
        .join(Job, Job.id == Recipient.job_id)
        .where(*selection.conditions())
        .order_by(Recipient.id)
    )
    if lock and dialect.is_postgresql(session):
        query = query.with_for_update(of=Recipient)
    return [RetryCandidate(*row) for row in session.execute(query)]


def requeue_for_retry(
    session: Session,
    *,
    ids: Collection[int],
    from_status: RecipientStatus,
    batch_id: int,
    at: dt.datetime,
    actor: str,
    cause: str,
) -> int:
    """Move ``ids`` (still ``from_status``) to ``queued`` in ``batch_id``, keeping their
    attempt counts and starting the retry limit's count there (``attempts_base``);
    returns how many moved."""
    return transition(
        session,
        ids=ids,
        from_statuses=[from_status],
        to_status=RecipientStatus.QUEUED,
        at=at,
        cause=cause,
        actor=actor,
        values={
            "batch_id": batch_id,
            "attempts_base": Recipient.attempts,
            "error_code": None,
            "error_detail": None,
            "next_attempt_at": None,
            "gateway_message_id": None,
        },
    )


def settle_unknown(
    session: Session,
    *,
    ids: Collection[int],
    to_status: RecipientStatus,
    gateway_message_id: str | None,
    cause: str,
    at: dt.datetime,
    actor: str,
) -> int:
    """Move ``ids`` still ``unknown`` to ``sent`` or ``failed`` as an operator settled
    them from evidence, with ``cause`` in their history; a settled ``sent`` takes the
    gateway ID when one is known. Returns how many moved."""
    values: dict[str, Any] = {"next_attempt_at": None, "error_detail": cause[:500]}
    if to_status == RecipientStatus.SENT:
        values |= {"error_code": None, "gateway_message_id": gateway_message_id}
    return transition(
        session,
        ids=ids,
        from_statuses=[RecipientStatus.UNKNOWN],
        to_status=to_status,
        at=at,
        cause=cause,
        actor=actor,
        values=values,
    )


def unknown_since(session: Session, *, since: dt.datetime | None) -> int:
    """Recipients `unknown` now that became so after ``since`` (all of them for None);
    read from the partial index of the statuses operators list."""
    # The status as a literal, so the partial index's predicate is provable in every
    # plan: a scrape every few seconds must never scan every recipient ever written.
    where = [type_coerce(Recipient.stored_status, String) == literal_column("'unknown'")]
    if since is not None:
        where.append(Recipient.updated_at > since)
    return int(session.execute(select(func.count()).where(*where)).scalar_one())


def last_resume_at(session: Session) -> dt.datetime | None:
    """When an operator last ended a pause (a resume that found dispatch paused)."""
    return session.execute(
        select(func.max(OperatorAction.at)).where(
            OperatorAction.action == "resume", OperatorAction.affected > 0
        )
    ).scalar_one()


def settle_batch_if_idle(session: Session, *, batch_id: int, now: dt.datetime) -> None:
    """``settle_batch`` for a batch no worker holds (one that is queued)."""
    settle_batch(session, batch_id=batch_id, now=now, only_if_queued=True)


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


def batches_of(session: Session, *, recipient_ids: Collection[int]) -> list[int]:
    """The distinct batches holding these recipients."""
    rows = session.execute(
        select(Recipient.batch_id)
        .where(Recipient.id.in_(list(recipient_ids)), Recipient.batch_id.is_not(None))
        .distinct()
    ).scalars()
    return [batch_id for batch_id in rows if batch_id is not None]


def cancel_waiting(
    session: Session, *, ids: Collection[int], at: dt.datetime, cause: str, actor: str
) -> int:
    """Cancel those of ``ids`` still waiting to be sent (``queued``, ``retry_wait``), and
    settle their batches if no worker holds them; returns how many were cancelled."""
    if not ids:
        return 0
    waiting = list(WAITING_STATUSES)
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
