"""The events export's rows: every status change of a recipient, claims included.

A claim is recorded per submission, in its attempt's row (``Attempt.claimed``), not
as a status event per recipient (docs/design.md section 3). The export shows it all
the same, as the row it stands for: its attempt's start, the status the recipient
had, ``submitting``, ``attempt N claimed``, the worker.

- By time range or job, the claims come from the attempts of that range or job and
  are merged with the status events in time order.
- By number, each recipient's story is told whole, in order: a claim is shown just
  before the event that ended it, and a claim still in flight after the rest.

Each source is read a page at a time, each page in its own short transaction.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Mapping
from typing import Any

from dispatcher.domain.statuses import RecipientStatus
from dispatcher.persistence import store
from dispatcher.persistence.db import Database
from dispatcher.persistence.shown import claim_cause, claimed_statuses, closes_claim

Row = Mapping[Any, Any]

CLAIM_PAGE_ATTEMPTS = 20
"""Attempts read per page of claims: up to 100 recipients each."""


def event_rows(db: Database, selection: store.AuditSelection, *, page_rows: int) -> Iterator[Row]:
    """The status events of ``selection`` with the claims among them, as export rows."""
    events = pages(db, *store.audit_events_query(selection), page_rows=page_rows)
    if selection.number is not None:
        yield from _claims_attached(events)
        with db.transaction() as session:
            flying = session.execute(store.audit_in_flight_query(selection)).all()
        for row in flying:
            yield _in_flight_claim(row._mapping)
        return
    # Ties go to the claims (the first source): a claim precedes what it led to.
    yield from heapq.merge(_claims(db, selection), events, key=lambda row: row["at"])


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
            }
        yield event


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
