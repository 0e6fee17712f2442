"""The events export's rows: every status change of a recipient, claims included.

A claim is recorded per submission, in its attempt's row (``Attempt.claimed``), and an
accepted recipient's creation in its row (``Job.creation_implied``), not as status
events per recipient (docs/design.md section 3). The export shows them all the same,
as the rows they stand for: a claim at its attempt's start, from the status the
recipient had to ``submitting``, ``attempt N claimed``, by the worker; a creation at
the recipient's, to ``queued``, ``enqueued``, by the job's creator.

- By time range or job, creations and claims come from the recipients and attempts
  of that range or job and are merged with the status events in time order.
- By number, each recipient's story is told whole, in order: its creation first, a
  claim just before the event that ended it, and a claim still in flight after the
  rest.

Each source is read a page at a time, each page in its own short transaction.
"""

from __future__ import annotations

import datetime as dt
import heapq
from collections.abc import Iterator, Mapping
from typing import Any

from dispatcher.domain.statuses import RecipientStatus
from dispatcher.persistence import store
from dispatcher.persistence.db import Database
from dispatcher.persistence.shown import (
    CREATION_CAUSE,
    claim_cause,
    claimed_statuses,
    closes_claim,
)

Row = Mapping[Any, Any]

CLAIM_PAGE_ATTEMPTS = 20
"""Attempts read per page of claims: up to 100 recipients each."""


def event_rows(db: Database, selection: store.AuditSelection, *, page_rows: int) -> Iterator[Row]:
    """The status events of ``selection`` with those rows imply among them, as export
    rows: accepted recipients' creations and claims."""
    by_number = selection.number is not None
    query, key = store.audit_events_query(selection, cut_by_time=not by_number)
    events = pages(db, query, key, page_rows=page_rows)
    creations = (
        _creation(row)
        for row in pages(db, *store.audit_creations_query(selection), page_rows=page_rows)
    )
    if by_number:
        # Recipient by recipient, as the events are paged: its creation, then its story,
        # each row, a claim as much as an event, cut by its own time.
        story = heapq.merge(
            creations,
            _claims_attached(events),
            key=lambda row: (row["recipient_created_at"], row["recipient_id"], row["_after"]),
        )
        yield from (row for row in story if _within(row["at"], selection))
        with db.transaction() as session:
            flying = session.execute(store.audit_in_flight_query(selection)).all()
        for row in flying:
            yield _in_flight_claim(row._mapping)
        return
    # Ties go to the earlier source: a creation, then a claim, precede what follows.
    yield from heapq.merge(creations, _claims(db, selection), events, key=lambda row: row["at"])


def _within(at: dt.datetime, selection: store.AuditSelection) -> bool:
    return (selection.since is None or at >= selection.since) and (
        selection.until is None or at < selection.until
    )


def _creation(row: Row) -> Row:
    return dict(row) | {
        "from_status": None,
        "to_status": RecipientStatus.QUEUED,
        "cause": CREATION_CAUSE,
        "actor": row["created_by"],
        "attempt_id": None,
        "attempt_no": None,
        "host": None,
        "http_status": None,
        "event_id": None,
        "_after": 0,
    }


def pages(
    db: Database, query: store.AnySelect, key: list[store.KeyColumn], *, page_rows: int
) -> Iterator[Row]:
    """The rows of ``query`` in the order of ``key``, read ``page_rows`` at a time."""
    after: tuple[Any, ...] | None = None
    while True:
        with db.transaction() as session:
            rows = store.keyset_page(session, query=query, key=key, after=after, limit=page_rows)
        for row in rows:
            yield row._mapping
        if len(rows) < page_rows:
            return
        after = tuple(rows[-1][-len(key) :])


def _claims_attached(events: Iterator[Row]) -> Iterator[Row]:
    for event in events:
        if closes_claim(event["from_status"], event["attempt_claimed"]):
            before = claimed_statuses(event["attempt_claimed"]).get(event["recipient_id"])
            yield dict(event) | {
                "at": event["attempt_started_at"],
                "from_status": before or RecipientStatus.QUEUED,
                "to_status": RecipientStatus.SUBMITTING,
                "cause": claim_cause(event["attempt_no"]),
                "actor": event["attempt_worker"],
                "event_id": None,
                "_after": 1,
            }
        yield dict(event) | {"_after": 1}


def _in_flight_claim(row: Row) -> Row:
    return dict(row) | {
        "to_status": RecipientStatus.SUBMITTING,
        "cause": claim_cause(row["attempt_no"]),
        "host": None,
        "http_status": None,
        "event_id": None,
    }


def _claims(db: Database, selection: store.AuditSelection) -> Iterator[Row]:
    query, key = store.audit_claims_query(selection)
    after: tuple[Any, ...] | None = None
    while True:
        with db.transaction() as session:
            attempts = store.keyset_page(
                session, query=query, key=key, after=after, limit=CLAIM_PAGE_ATTEMPTS
            )
            carried = [
                (attempt._mapping, claimed_statuses(attempt.claimed)) for attempt in attempts
            ]
            ids = {rid for _attempt, claims in carried for rid in claims}
            recipients = store.claimed_recipients(session, ids=ids) if ids else {}
        for attempt, claims in carried:
            for rid, before in claims.items():
                recipient = recipients.get(rid)
                if recipient is None:
                    continue
                yield (
                    dict(attempt)
                    | dict(recipient)
                    | {
                        "from_status": before,
                        "to_status": RecipientStatus.SUBMITTING,
                        "cause": claim_cause(attempt["attempt_no"]),
                        "event_id": None,
                    }
                )
        if len(attempts) < CLAIM_PAGE_ATTEMPTS:
            return
        after = tuple(attempts[-1][-len(key) :])
