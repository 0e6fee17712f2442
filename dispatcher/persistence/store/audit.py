"""The audit export's queries: status events and recipients of a time range, a
number or a job, each with the key that pages it (``keyset``)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session

from dispatcher.domain.statuses import WAITING_STATUSES, AttemptOutcome
from dispatcher.persistence import dialect
from dispatcher.persistence.models import Attempt, Job, Recipient, StatusEvent
from dispatcher.persistence.store.jobs import owned_by
from dispatcher.persistence.store.keyset import AnySelect, KeyColumn


@dataclass(frozen=True, slots=True)
class AuditSelection:
    """What an audit export holds: a time range, a number, a job, or several."""

    since: dt.datetime | None = None
    until: dt.datetime | None = None
    number: str | None = None
    job_id: str | None = None
    owner_key_id: int | None = None
    """Rows of jobs enqueued by this API key (``dispatcher.domain.tenancy``); None: any."""


def _recipient_now() -> tuple[ColumnElement[Any], ...]:
    """The columns an events export row shows of its recipient as it stands now."""
    return (
        Recipient.status.label("current_status"),
        Recipient.gateway_message_id.label("gateway_message_id"),
        Recipient.error_code.label("error_code"),
        Recipient.attempts.label("attempts"),
    )


def audit_events_query(
    selection: AuditSelection, *, cut_by_time: bool = True
) -> tuple[AnySelect, list[KeyColumn]]:
    """The status events of a selection with their recipient, job and attempt, and the
    key that pages them.

    Per number, it walks ``recipients(number, created_at)`` and each recipient's
    events together; per job, the job's events; per range, ``status_events(at)``.
    ``cut_by_time=False`` leaves the events of the selection's time range uncut (by
    number, where a claim is shown with the event after it and is cut by its own time).
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
            *_recipient_now(),
            StatusEvent.id.label("event_id"),
            Recipient.created_at.label("recipient_created_at"),
            # What showing the claim an event ends needs (``shown.closes_claim``).
            Attempt.started_at.label("attempt_started_at"),
            Attempt.worker.label("attempt_worker"),
            Attempt.claimed.label("attempt_claimed"),
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
    if cut_by_time and selection.since is not None:
        query = query.where(StatusEvent.at >= selection.since)
    if cut_by_time and selection.until is not None:
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
    return _recipients_of(query, selection)


def _recipients_of(
    query: AnySelect, selection: AuditSelection
) -> tuple[AnySelect, list[KeyColumn]]:
    """``query`` (over recipients and their jobs) narrowed to the recipients of
    ``selection``, and the key that pages them: per number ``recipients(number,
    created_at)``, per job its recipients, per range ``jobs(created_at)`` and each
    job's recipients (a recipient is created with its job, at the same instant).
    """
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


def audit_in_flight_query(selection: AuditSelection) -> AnySelect:
    """The recipients of a selection in flight now, with the attempt carrying them:
    their claims have no status event to show them with yet (``shown.ImpliedEvent``).
    Their stored status is the one they had before the claim."""
    query: AnySelect = (
        select(
            Attempt.started_at.label("at"),
            Job.id.label("job_id"),
            Job.reference.label("reference"),
            Job.created_by.label("created_by"),
            Recipient.id.label("recipient_id"),
            Recipient.number.label("number"),
            Recipient.stored_status.label("from_status"),
            Attempt.id.label("attempt_id"),
            Attempt.attempt_no.label("attempt_no"),
            Attempt.worker.label("actor"),
            *_recipient_now(),
        )
        .select_from(Attempt)
        .join(Recipient, Recipient.batch_id == Attempt.batch_id)
        .join(Job, Job.id == Attempt.job_id)
        .where(
            Attempt.outcome == AttemptOutcome.IN_FLIGHT,
            Attempt.claimed.is_not(None),
            Recipient.stored_status.in_([str(s) for s in WAITING_STATUSES]),
            *owned_by(selection.owner_key_id),
        )
        .order_by(Attempt.started_at, Attempt.id, Recipient.id)
    )
    if selection.number is not None:
        query = query.where(Recipient.number == selection.number)
    return _attempts_of(query, selection)


def audit_claims_query(selection: AuditSelection) -> tuple[AnySelect, list[KeyColumn]]:
    """The attempts whose claims (``Attempt.claimed``) a selection by time range or job
    holds, with their job, and the key that pages them: ``attempts(started_at)`` or
    ``attempts(job_id)``. Older attempts, whose claims are status events, are left out."""
    query: AnySelect = (
        select(
            Attempt.started_at.label("at"),
            Attempt.id.label("attempt_id"),
            Attempt.attempt_no.label("attempt_no"),
            Attempt.worker.label("actor"),
            Attempt.claimed.label("claimed"),
            Attempt.host.label("host"),
            Attempt.http_status.label("http_status"),
            Job.id.label("job_id"),
            Job.reference.label("reference"),
            Job.created_by.label("created_by"),
        )
        .join(Job, Job.id == Attempt.job_id)
        .where(Attempt.claimed.is_not(None), *owned_by(selection.owner_key_id))
    )
    return _attempts_of(query, selection), [Attempt.started_at, Attempt.id]


def _attempts_of(query: AnySelect, selection: AuditSelection) -> AnySelect:
    """``query`` (over attempts) narrowed to the attempts of ``selection``'s job that
    started in its time range."""
    if selection.job_id is not None:
        query = query.where(Attempt.job_id == selection.job_id)
    if selection.since is not None:
        query = query.where(Attempt.started_at >= selection.since)
    if selection.until is not None:
        query = query.where(Attempt.started_at < selection.until)
    return query


def claimed_recipients(session: Session, *, ids: Collection[int]) -> dict[int, Any]:
    """What an export row shows of each recipient ``ids`` names, by id."""
    rows = session.execute(
        select(
            Recipient.id.label("recipient_id"),
            Recipient.number.label("number"),
            *_recipient_now(),
        ).where(dialect.id_in(session, Recipient.id, ids))
    )
    return {row.recipient_id: row._mapping for row in rows}


def audit_creations_query(selection: AuditSelection) -> tuple[AnySelect, list[KeyColumn]]:
    """The accepted recipients of a selection whose first status event is implied by
    their row (``Job.creation_implied``), with the columns of an events export row,
    and the key that pages them (``_recipients_of``)."""
    query: AnySelect = (
        select(
            Recipient.created_at.label("at"),
            Job.id.label("job_id"),
            Job.reference.label("reference"),
            Job.created_by.label("created_by"),
            Recipient.id.label("recipient_id"),
            Recipient.number.label("number"),
            *_recipient_now(),
            Recipient.created_at.label("recipient_created_at"),
        )
        .join(Job, Job.id == Recipient.job_id)
        .where(
            Job.creation_implied.is_(True),
            Recipient.batch_id.is_not(None),
            *owned_by(selection.owner_key_id),
        )
    )
    return _recipients_of(query, selection)
