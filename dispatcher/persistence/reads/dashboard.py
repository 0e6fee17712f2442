"""Read queries of the dashboard's pages, each in its own read-only transaction.

Every query is answered from an index, whatever the size
of the tables: recipients by ``(number, created_at)``, ``gateway_message_id``,
``job_id`` and ``(status, updated_at)``; jobs by primary key and ``reference``;
status events by ``(recipient_id, at)``; attempts and operator actions by
primary key and ``target``. Counts come from the rollups (``dispatcher.persistence.reads.stats``),
never from counting the big tables, except within one job or one filtered list.

Listings page by keyset, never by OFFSET (which reads and drops every row before
the page): each page continues after the sort key of the last row shown, handed
out as an opaque cursor (``dispatcher.domain.cursors``), so a deep page costs
what the first does. Every sort key ends in the row id, so rows whose times tie
are neither repeated nor skipped. A cursor that is not one of the listing's is
an InvalidCursorError.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from sqlalchemy import ColumnElement, and_, or_, select
from sqlalchemy.orm import InstrumentedAttribute

from dispatcher.domain import cursors
from dispatcher.domain.numbers import normalise
from dispatcher.domain.statuses import (
    PENDING_STATUSES,
    AttemptOutcome,
    RecipientStatus,
    job_state,
)
from dispatcher.errors import InvalidNumberError
from dispatcher.persistence import store
from dispatcher.persistence.db import Database
from dispatcher.persistence.models import Attempt, Job, OperatorAction, Recipient, StatusEvent
from dispatcher.persistence.shown import (
    ImpliedEvent,
    claim_event,
    claimed_statuses,
    closes_claim,
    creation_event,
    creation_implied,
    status_is,
)

T = TypeVar("T")

PAGE_SIZE = 50
JOB_PAGE_SIZE = 100

# Each listing's cursor tag, so that a cursor of one listing is refused by another.
SEARCH_CURSOR = "s1"
"""Recipients found by a search, newest first: ``(created_at, id)``."""
JOB_RECIPIENTS_CURSOR = "r1"
"""A job's recipients, in the order they were given: ``id``."""
RECIPIENT_LIST_CURSOR = "l1"
"""A list of recipients in one status, most recently changed first: ``(updated_at, id)``."""
ACTIONS_CURSOR = "a1"
"""Operator actions, newest first: ``id``."""


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a listing: its rows, whether it is the first, and the cursor of the
    page after it."""

    items: list[T]
    first: bool
    next: str | None = None
    """The cursor continuing after this page's last row; None on the last page."""

    @property
    def more(self) -> bool:
        """Whether another page follows."""
        return self.next is not None


def _page(rows: list[T], size: int, *, first: bool, cursor_of: Callable[[T], str]) -> Page[T]:
    """The first ``size`` of ``rows`` (read one past a page, to tell whether another
    follows), with the cursor continuing after the last one shown."""
    shown = rows[:size]
    return Page(items=shown, first=first, next=cursor_of(shown[-1]) if len(rows) > size else None)


def _time_id_key(tag: str, after: str | None) -> tuple[dt.datetime, int] | None:
    """The ``(time, id)`` a cursor of listing ``tag`` continues after; None for the first
    page."""
    return cursors.decode_time_id(tag, after) if after else None


def _newer_first_after(
    at: InstrumentedAttribute[dt.datetime],
    row_id: InstrumentedAttribute[int],
    key: tuple[dt.datetime, int],
) -> ColumnElement[bool]:
    """Rows after ``key`` in ``(at, id)`` descending order. ``at <= key`` on its own is
    what an index on the time seeks to; the rest breaks a tie by the id."""
    key_at, key_id = key
    return and_(at <= key_at, or_(at < key_at, row_id < key_id))


# --- search --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SearchResult:
    """What a search found: jobs (by id or reference) and recipients (by number or ID)."""

    query: str
    number: str | None
    """The query as international digits, when it reads as a phone number."""
    jobs: list[Job] = field(default_factory=list)
    recipients: Page[Recipient] = field(default_factory=lambda: Page([], first=True))


def search(db: Database, query: str, *, region: str, after: str | None = None) -> SearchResult:
    """Jobs and recipients matching ``query``: a job id, a reference, a gateway message
    ID, or a number in any format (normalised as at enqueue); the recipients continue
    after cursor ``after``."""
    key = _time_id_key(SEARCH_CURSOR, after)
    text = query.strip()
    try:
        number: str | None = normalise(text, region)
    except InvalidNumberError:
        number = None
    if not text:
        return SearchResult(query=text, number=None)
    newest_first = (Recipient.created_at.desc(), Recipient.id.desc())
    continued = [] if key is None else [_newer_first_after(Recipient.created_at, Recipient.id, key)]
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
        # Each side is its own index scan in the same order, from the same key; the
        # union's first page is then the page of the union.
        by_number: list[Recipient] = []
        if number is not None:
            by_number = list(
                session.execute(
                    select(Recipient)
                    .where(Recipient.number == number, *continued)
                    .order_by(*newest_first)
                    .limit(PAGE_SIZE + 1)
                ).scalars()
            )
        by_gateway_id = list(
            session.execute(
                select(Recipient)
                .where(Recipient.gateway_message_id == text, *continued)
                .order_by(*newest_first)
                .limit(PAGE_SIZE + 1)
            ).scalars()
        )
    merged = {r.id: r for r in by_number + by_gateway_id}
    rows = sorted(merged.values(), key=lambda r: (r.created_at, r.id), reverse=True)
    return SearchResult(
        query=text,
        number=number,
        jobs=list(jobs.values()),
        recipients=_page(
            rows,
            PAGE_SIZE,
            first=key is None,
            cursor_of=lambda r: cursors.encode_time_id(SEARCH_CURSOR, r.created_at, r.id),
        ),
    )


# --- the job page --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RecipientDetail:
    """A recipient with its history and the attempts that carried it."""

    recipient: Recipient
    events: list[StatusEvent | ImpliedEvent]
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
        return any(self.counts.get(s, 0) for s in PENDING_STATUSES)

    @property
    def state(self) -> str:
        """The job's overall status (``job_state``): in progress, unresolved, completed."""
        return job_state(self.counts)


def job_page(
    db: Database, job_id: str, *, after: str | None = None, status: str | None = None
) -> JobPage | None:
    """A job with one page of its recipients (their events and attempts), continuing
    after cursor ``after``; None if the job is unknown."""
    after_id = cursors.decode_id(JOB_RECIPIENTS_CURSOR, after) if after else None
    with db.transaction() as session:
        job = store.get_job(session, job_id=job_id)
        if job is None:
            return None
        counts = store.status_counts(session, job_ids=[job_id]).get(job_id, {})
        query = select(Recipient).where(Recipient.job_id == job_id)
        if status:
            query = query.where(status_is(status))
        if after_id is not None:
            query = query.where(Recipient.id > after_id)
        page = _page(
            list(session.execute(query.order_by(Recipient.id).limit(JOB_PAGE_SIZE + 1)).scalars()),
            JOB_PAGE_SIZE,
            first=after_id is None,
            cursor_of=lambda r: cursors.encode_id(JOB_RECIPIENTS_CURSOR, r.id),
        )
        ids = [r.id for r in page.items]
        events: dict[int, list[StatusEvent]] = {rid: [] for rid in ids}
        if ids:
            for event in session.execute(
                select(StatusEvent)
                .where(StatusEvent.recipient_id.in_(ids))
                .order_by(StatusEvent.recipient_id, StatusEvent.at, StatusEvent.id)
            ).scalars():
                events[event.recipient_id].append(event)
        attempt_ids = {e.attempt_id for es in events.values() for e in es if e.attempt_id}
        # Recipients in flight have no event of this attempt yet: their batch's
        # in-flight attempt carries them.
        flying = {r.id: r for r in page.items if _in_flight(r)}
        carrying: ColumnElement[bool] = Attempt.id.in_(sorted(attempt_ids))
        if flying:
            carrying = carrying | (
                Attempt.batch_id.in_({r.batch_id for r in flying.values()})
                & (Attempt.outcome == AttemptOutcome.IN_FLIGHT)
            )
        attempts = (
            list(session.execute(select(Attempt).where(carrying).order_by(Attempt.id)).scalars())
            if attempt_ids or flying
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
    carriers = _Carriers.of(attempts)
    histories = {r.id: _history(job, r, events[r.id], carriers) for r in page.items}
    details = [
        RecipientDetail(
            recipient=r,
            events=histories[r.id],
            attempt_ids=sorted({e.attempt_id for e in histories[r.id] if e.attempt_id}),
        )
        for r in page.items
    ]
    return JobPage(
        job=job,
        counts=counts,
        recipients=Page(items=details, first=page.first, next=page.next),
        attempts=attempts,
        actions=actions,
    )


def _in_flight(recipient: Recipient) -> bool:
    """Shown ``submitting`` through its batch (its claim is the attempt's row)."""
    return (
        recipient.status == RecipientStatus.SUBMITTING
        and recipient.stored_status != RecipientStatus.SUBMITTING
    )


@dataclass(frozen=True, slots=True)
class _Carriers:
    """The attempts that carried a page's recipients, read once for every history."""

    by_id: dict[int, Attempt]
    before: dict[int, dict[int, RecipientStatus]]
    """Per attempt, each recipient's status before its claim (``Attempt.claimed``)."""
    in_flight: dict[int | None, Attempt]
    """Per batch, its attempt in flight."""

    @classmethod
    def of(cls, attempts: list[Attempt]) -> _Carriers:
        return cls(
            by_id={a.id: a for a in attempts},
            before={a.id: claimed_statuses(a.claimed) for a in attempts},
            # Oldest first, so a batch's newest attempt in flight is the one kept.
            in_flight={a.batch_id: a for a in attempts if a.outcome == AttemptOutcome.IN_FLIGHT},
        )


def _history(
    job: Job, recipient: Recipient, events: list[StatusEvent], carriers: _Carriers
) -> list[StatusEvent | ImpliedEvent]:
    """A recipient's status events with those its rows imply (docs/design.md section
    3): its creation first, and its claims, read from the attempts that carried it,
    each just before the event that ended it."""
    history: list[StatusEvent | ImpliedEvent] = []
    if creation_implied(job.creation_implied, recipient.batch_id):
        history.append(
            creation_event(
                recipient_id=recipient.id,
                job_id=job.id,
                created_at=recipient.created_at,
                created_by=job.created_by,
            )
        )
    for event in events:
        attempt = carriers.by_id.get(event.attempt_id) if event.attempt_id else None
        if attempt is not None and closes_claim(event.from_status, attempt.claimed):
            was = carriers.before[attempt.id].get(recipient.id, RecipientStatus.QUEUED)
            history.append(
                claim_event(
                    attempt, recipient_id=recipient.id, job_id=recipient.job_id, from_status=was
                )
            )
        history.append(event)
    flying = carriers.in_flight.get(recipient.batch_id) if _in_flight(recipient) else None
    if flying is not None:
        history.append(
            claim_event(
                flying,
                recipient_id=recipient.id,
                job_id=recipient.job_id,
                from_status=recipient.stored_status,
            )
        )
    return history


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


def recipients(db: Database, query: RecipientQuery, *, after: str | None = None) -> Page[Recipient]:
    """Recipients in one status, filtered, most recently changed first, continuing after
    cursor ``after``."""
    key = _time_id_key(RECIPIENT_LIST_CURSOR, after)
    conditions = query.selection().conditions()
    if key is not None:
        conditions.append(_newer_first_after(Recipient.updated_at, Recipient.id, key))
    with db.transaction() as session:
        rows = list(
            session.execute(
                select(Recipient)
                .where(*conditions)
                .order_by(Recipient.updated_at.desc(), Recipient.id.desc())
                .limit(PAGE_SIZE + 1)
            ).scalars()
        )
    return _page(
        rows,
        PAGE_SIZE,
        first=key is None,
        cursor_of=lambda r: cursors.encode_time_id(RECIPIENT_LIST_CURSOR, r.updated_at, r.id),
    )


def count(db: Database, query: RecipientQuery, *, retryable_only: bool = False) -> int:
    """How many recipients a bulk action on ``query`` would touch."""
    with db.transaction() as session:
        return store.count_recipients(
            session, selection=query.selection(retryable_only=retryable_only)
        )


def actions(db: Database, *, after: str | None = None) -> Page[OperatorAction]:
    """Operator actions, newest first, continuing after cursor ``after``."""
    after_id = cursors.decode_id(ACTIONS_CURSOR, after) if after else None
    query = select(OperatorAction)
    if after_id is not None:
        query = query.where(OperatorAction.id < after_id)
    with db.transaction() as session:
        rows = list(
            session.execute(query.order_by(OperatorAction.id.desc()).limit(PAGE_SIZE + 1)).scalars()
        )
    return _page(
        rows,
        PAGE_SIZE,
        first=after_id is None,
        cursor_of=lambda a: cursors.encode_id(ACTIONS_CURSOR, a.id),
    )
