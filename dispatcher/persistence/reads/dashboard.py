"""Read queries of the dashboard's pages, each in its own read-only transaction.

Every query is answered from an index, whatever the size
of the tables: recipients by ``(number, created_at)``, ``gateway_message_id``,
``job_id`` and ``(status, updated_at)``; jobs by primary key and ``reference``;
status events by ``(recipient_id, at)``; attempts and operator actions by
primary key and ``target``. Counts come from the rollups (``dispatcher.persistence.reads.stats``),
never from counting the big tables, except within one job or one filtered list.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from sqlalchemy import select

from dispatcher.domain.numbers import normalise
from dispatcher.errors import InvalidNumberError
from dispatcher.persistence import store
from dispatcher.persistence.db import Database
from dispatcher.persistence.models import Attempt, Job, OperatorAction, Recipient, StatusEvent

T = TypeVar("T")

PAGE_SIZE = 50
JOB_PAGE_SIZE = 100
MAX_PAGE = 10_000
"""Deeper pages are refused: an offset that far is a scan, and nobody reads that far."""


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a listing, and whether another follows."""

    items: list[T]
    page: int
    more: bool


def _paged(rows: list[T], page: int, size: int) -> Page[T]:
    return Page(items=rows[:size], page=page, more=len(rows) > size)


# --- search --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SearchResult:
    """What a search found: jobs (by id or reference) and recipients (by number or ID)."""

    query: str
    number: str | None
    """The query as international digits, when it reads as a phone number."""
    jobs: list[Job] = field(default_factory=list)
    recipients: Page[Recipient] = field(default_factory=lambda: Page([], 1, more=False))


def search(db: Database, query: str, *, region: str, page: int = 1) -> SearchResult:
    """Jobs and recipients matching ``query``: a job id, a reference, a gateway message
    ID, or a number in any format (normalised as at enqueue)."""
    text = query.strip()
    try:
        number: str | None = normalise(text, region)
    except InvalidNumberError:
        number = None
    if not text:
        return SearchResult(query=text, number=None)
    offset = (page - 1) * PAGE_SIZE
    with db.transaction() as session:
        jobs: dict[str, Job] = {}
        by_id = store.get_job(session, job_id=text.upper())
        if by_id is not None:
            jobs[by_id.id] = by_id
        for job in session.execute(
            select(Job).where(Job.reference == text).order_by(Job.id.desc()).limit(PAGE_SIZE)
        ).scalars():
            jobs.setdefault(job.id, job)
        # A gateway ID may look like a phone number (long digits), so both are asked.
        # Each side is its own index scan; the union is ordered newest first.
        by_number: list[Recipient] = []
        if number is not None:
            by_number = list(
                session.execute(
                    select(Recipient)
                    .where(Recipient.number == number)
                    .order_by(Recipient.created_at.desc(), Recipient.id.desc())
                    .offset(offset)
                    .limit(PAGE_SIZE + 1)
                ).scalars()
            )
        by_gateway_id = list(
            session.execute(
                select(Recipient)
                .where(Recipient.gateway_message_id == text)
                .order_by(Recipient.id.desc())
                .offset(offset)
                .limit(PAGE_SIZE + 1)
            ).scalars()
        )
    merged = {r.id: r for r in by_number + by_gateway_id}
    rows = sorted(merged.values(), key=lambda r: (r.created_at, r.id), reverse=True)
    more = len(by_number) > PAGE_SIZE or len(by_gateway_id) > PAGE_SIZE
    return SearchResult(
        query=text,
        number=number,
        jobs=list(jobs.values()),
        recipients=Page(items=rows[:PAGE_SIZE], page=page, more=more or len(rows) > PAGE_SIZE),
    )


# --- the job page --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RecipientDetail:
    """A recipient with its history and the attempts that carried it."""

    recipient: Recipient
    events: list[StatusEvent]
    attempt_ids: list[int]


@dataclass(frozen=True, slots=True)
class JobPage:
    """Everything the job page shows."""

    job: Job
    counts: dict[str, int]
    recipients: Page[RecipientDetail]
    attempts: list[Attempt]
    """The attempts that carried the recipients on this page, oldest first."""
    actions: list[OperatorAction]
    """Operator actions on this job, newest first."""

    @property
    def accepted(self) -> int:
        """Recipients the dispatcher accepted at enqueue (not refused as non-numbers)."""
        return self.job.recipient_count

    @property
    def estimated_credits(self) -> int:
        """Parts times accepted recipients: what the job costs if every one is sent."""
        return self.job.parts * self.job.recipient_count

    @property
    def pending(self) -> bool:
        """True while any recipient may still change by itself."""
        return any(self.counts.get(s, 0) for s in ("queued", "submitting", "retry_wait"))


def job_page(
    db: Database, job_id: str, *, page: int = 1, status: str | None = None
) -> JobPage | None:
    """A job with one page of its recipients (their events and attempts); None if unknown."""
    with db.transaction() as session:
        job = store.get_job(session, job_id=job_id)
        if job is None:
            return None
        counts = store.status_counts(session, job_ids=[job_id]).get(job_id, {})
        query = select(Recipient).where(Recipient.job_id == job_id)
        if status:
            query = query.where(Recipient.status == status)
        rows = list(
            session.execute(
                query.order_by(Recipient.id)
                .offset((page - 1) * JOB_PAGE_SIZE)
                .limit(JOB_PAGE_SIZE + 1)
            ).scalars()
        )
        shown = rows[:JOB_PAGE_SIZE]
        ids = [r.id for r in shown]
        events: dict[int, list[StatusEvent]] = {rid: [] for rid in ids}
        if ids:
            for event in session.execute(
                select(StatusEvent)
                .where(StatusEvent.recipient_id.in_(ids))
                .order_by(StatusEvent.recipient_id, StatusEvent.at, StatusEvent.id)
            ).scalars():
                events[event.recipient_id].append(event)
        attempt_ids = sorted(
            {e.attempt_id for es in events.values() for e in es if e.attempt_id is not None}
        )
        attempts = (
            list(
                session.execute(
                    select(Attempt).where(Attempt.id.in_(attempt_ids)).order_by(Attempt.id)
                ).scalars()
            )
            if attempt_ids
            else []
        )
        actions = list(
            session.execute(
                select(OperatorAction)
                .where(OperatorAction.target == job_id)
                .order_by(OperatorAction.id.desc())
                .limit(PAGE_SIZE)
            ).scalars()
        )
    details = [
        RecipientDetail(
            recipient=r,
            events=events[r.id],
            attempt_ids=sorted({e.attempt_id for e in events[r.id] if e.attempt_id is not None}),
        )
        for r in shown
    ]
    return JobPage(
        job=job,
        counts=counts,
        recipients=Page(items=details, page=page, more=len(rows) > JOB_PAGE_SIZE),
        attempts=attempts,
        actions=actions,
    )


# --- lists of recipients and the operator actions ------------------------------------


@dataclass(frozen=True, slots=True)
class RecipientQuery:
    """The filters of the recipient lists and of their bulk actions."""

    status: str
    error_code: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None

    def selection(self, *, retryable_only: bool = False) -> store.RecipientFilter:
        """The same recipients as the service's selection (so counts match actions)."""
        return store.RecipientFilter(
            statuses=[self.status],
            error_code=self.error_code,
            since=self.since,
            until=self.until,
            retryable_only=retryable_only,
        )


def recipients(db: Database, query: RecipientQuery, *, page: int = 1) -> Page[Recipient]:
    """Recipients in one status, filtered, most recently changed first."""
    conditions = query.selection().conditions()
    with db.transaction() as session:
        rows = list(
            session.execute(
                select(Recipient)
                .where(*conditions)
                .order_by(Recipient.updated_at.desc(), Recipient.id.desc())
                .offset((page - 1) * PAGE_SIZE)
                .limit(PAGE_SIZE + 1)
            ).scalars()
        )
    return _paged(rows, page, PAGE_SIZE)


def count(db: Database, query: RecipientQuery, *, retryable_only: bool = False) -> int:
    """How many recipients a bulk action on ``query`` would touch."""
    with db.transaction() as session:
        return store.count_recipients(
            session, selection=query.selection(retryable_only=retryable_only)
        )


def actions(db: Database, *, page: int = 1) -> Page[OperatorAction]:
    """Operator actions, newest first."""
    with db.transaction() as session:
        rows = list(
            session.execute(
                select(OperatorAction)
                .order_by(OperatorAction.id.desc())
                .offset((page - 1) * PAGE_SIZE)
                .limit(PAGE_SIZE + 1)
            ).scalars()
        )
    return _paged(rows, page, PAGE_SIZE)
