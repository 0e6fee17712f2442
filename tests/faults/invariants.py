"""The pipeline's guarantees after a fault, checked over the database and the ledger.

``support.pipeline.check_invariants`` holds the ledger to exactly the ``sent`` recipients,
which is right when every reply arrived. Under faults the gateway may accept a
submission whose reply is lost (a hang, a drop, a truncated reply, a worker killed
mid-call): those recipients are ``unknown`` and may be in the ledger, once. This
check allows exactly that and nothing more.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from dispatcher.domain.statuses import FINAL_STATUSES, AttemptOutcome, RecipientStatus
from dispatcher.persistence.db import Database
from dispatcher.persistence.models import Attempt, Job, Recipient, StatusEvent
from support.integrity import assert_references_whole


@dataclass
class Outcome:
    """What the run came to, for the test's own assertions."""

    by_status: Counter[str] = field(default_factory=Counter)
    by_code: Counter[str | None] = field(default_factory=Counter)
    unknown_batches: set[int] = field(default_factory=set)
    unknown_in_ledger: int = 0
    attempts: int = 0
    attempts_by_outcome: Counter[str] = field(default_factory=Counter)


def check_fault_invariants(
    db: Database,
    ledger: Iterable[Mapping[str, Any]],
    *,
    allow_pending: bool = False,
    allow_unknown: bool = True,
    max_http_requests: int | None = None,
) -> Outcome:
    """Assert the guarantees that must survive any fault, and return the counts.

    - every recipient is final (unless ``allow_pending``);
    - no (number, text) was accepted twice by the gateway;
    - every attempt row was completed: none left ``in_flight``, none without
      ``finished_at``;
    - every ``sent`` recipient is in the ledger with the message ID the gateway
      gave it, and every ledger entry belongs to a ``sent`` recipient or, when
      ``allow_unknown``, to an ``unknown`` one (the gateway took it, the reply
      was lost); so nothing the gateway accepted is unaccounted for;
    - an ``unknown`` recipient was never submitted again after the attempt that
      made it unknown;
    - the gateway saw no more submissions than there are attempt rows
      (``max_http_requests``: the simulator's count), so every HTTP call is audited.
    """
    with db.transaction() as session:
        recipients: list[tuple[Recipient, str]] = [
            (r, t)
            for r, t in session.execute(
                select(Recipient, Job.text).join(Job, Job.id == Recipient.job_id)
            )
        ]
        attempts = list(session.scalars(select(Attempt).order_by(Attempt.id)))
        assert_references_whole(session)
        unknown_events = list(
            session.scalars(
                select(StatusEvent).where(StatusEvent.to_status == RecipientStatus.UNKNOWN)
            )
        )
    outcome = Outcome(attempts=len(attempts))
    outcome.attempts_by_outcome.update(a.outcome for a in attempts)
    for recipient, _ in recipients:
        outcome.by_status[recipient.status] += 1
        outcome.by_code[recipient.error_code] += 1
        if recipient.status == RecipientStatus.UNKNOWN and recipient.batch_id is not None:
            outcome.unknown_batches.add(recipient.batch_id)

    if not allow_pending:
        pending = [
            (r.number, r.status)
            for r, _ in recipients
            if RecipientStatus(r.status) not in FINAL_STATUSES
        ]
        assert not pending, f"{len(pending)} recipients not final: {pending[:20]}"
    if not allow_unknown:
        assert not outcome.by_status[RecipientStatus.UNKNOWN], (
            f"unexpected unknown recipients: {dict(outcome.by_status)}"
        )

    entries = list(ledger)
    accepted = Counter((e["number"], e["text"]) for e in entries)
    twice = {key: n for key, n in accepted.items() if n > 1}
    assert not twice, f"accepted more than once by the gateway: {twice}"

    open_attempts = [a.id for a in attempts if a.outcome == AttemptOutcome.IN_FLIGHT]
    assert not open_attempts, f"attempts still in flight: {open_attempts}"
    unfinished = [a.id for a in attempts if a.finished_at is None]
    assert not unfinished, f"attempts without finished_at: {unfinished}"

    by_key: dict[tuple[str, str], Recipient] = {}
    for recipient, text in recipients:
        by_key[(recipient.number, text)] = recipient
    ids_by_key = {(e["number"], e["text"]): e["message_id"] for e in entries}
    for recipient, text in recipients:
        if recipient.status != RecipientStatus.SENT:
            continue
        key = (recipient.number, text)
        assert key in ids_by_key, f"sent recipient {recipient.number} is not in the ledger"
        assert recipient.gateway_message_id == ids_by_key[key], (
            f"{recipient.number}: stored ID {recipient.gateway_message_id!r}, "
            f"gateway gave {ids_by_key[key]!r}"
        )
    allowed = {RecipientStatus.SENT} | ({RecipientStatus.UNKNOWN} if allow_unknown else set())
    stray = []
    for key in ids_by_key:
        owner = by_key.get(key)
        if owner is None or RecipientStatus(owner.status) not in allowed:
            stray.append((key[0], owner.status if owner else None))
        elif owner.status == RecipientStatus.UNKNOWN:
            outcome.unknown_in_ledger += 1
    assert not stray, f"the gateway accepted recipients the database does not call sent: {stray}"

    _check_unknown_not_resubmitted(recipients, attempts, unknown_events)
    if max_http_requests is not None:
        assert max_http_requests <= len(attempts), (
            f"the gateway saw {max_http_requests} submissions but only {len(attempts)} "
            "attempts are on record"
        )
    return outcome


def _check_unknown_not_resubmitted(
    recipients: list[tuple[Recipient, str]],
    attempts: list[Attempt],
    unknown_events: list[StatusEvent],
) -> None:
    became_unknown: dict[int, int] = {}
    for event in unknown_events:
        if event.attempt_id is not None:
            became_unknown[event.recipient_id] = max(
                became_unknown.get(event.recipient_id, 0), event.attempt_id
            )
    submitted: dict[tuple[str, str], list[int]] = defaultdict(list)
    for attempt in attempts:
        for num in attempt.numbers.split(","):
            submitted[(attempt.job_id, num)].append(attempt.id)
    for recipient, _ in recipients:
        if recipient.status != RecipientStatus.UNKNOWN:
            continue
        last = became_unknown.get(recipient.id)
        assert last is not None, f"unknown recipient {recipient.number} names no attempt"
        later = [a for a in submitted[(recipient.job_id, recipient.number)] if a > last]
        assert not later, (
            f"unknown recipient {recipient.number} was submitted again by attempts {later}"
        )
