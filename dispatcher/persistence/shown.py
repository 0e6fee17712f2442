"""What readers show of a claim recorded per submission (docs/design.md section 3).

A claim writes its batch and one attempt row, no recipient row; an accepted recipient
is written once, with no status event for its creation. Readers show the recipients
as before all the same: ``Recipient.status`` reads ``submitting`` through the batch,
and a recipient's history shows its creation from its row and its move to
``submitting`` from the attempt's row, at the attempt's start, with the status it had
(``ImpliedEvent``).

The shown status is an expression over the stored one and the batch, which no index
serves: ``status_in`` adds the stored statuses that can show as the ones asked, so
an index narrows the rows and the expression only decides among them.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import ColumnElement, select

from dispatcher.domain.statuses import WAITING_STATUSES, BatchStatus, RecipientStatus
from dispatcher.persistence.models import Attempt, Batch, Recipient


def stored_as(statuses: Iterable[RecipientStatus | str]) -> list[str]:
    """The stored statuses a recipient shown in one of ``statuses`` can have."""
    wanted = {RecipientStatus(s) for s in statuses}
    stored = set(wanted)
    if RecipientStatus.SUBMITTING in wanted:
        stored.update(WAITING_STATUSES)
    return sorted(str(s) for s in stored)


def status_in(statuses: Iterable[RecipientStatus | str]) -> ColumnElement[bool]:
    """Recipients shown in one of ``statuses``.

    ``queued`` and ``submitting`` alone are found through their batches (a recipient
    stored queued is in a queued or a submitting batch): the statuses' partial index
    leaves them out, and the batches' partial indexes hold only the ones waiting or
    in flight, where a scan of every recipient ever sent would not do."""
    wanted = [str(RecipientStatus(s)) for s in statuses]
    where = Recipient.stored_status.in_(stored_as(wanted)) & Recipient.status.in_(wanted)
    for only in (BatchStatus.QUEUED, BatchStatus.SUBMITTING):
        if set(wanted) == {str(only)}:
            where = where & Recipient.batch_id.in_(select(Batch.id).where(Batch.status == only))
    return where


def status_is(status: RecipientStatus | str) -> ColumnElement[bool]:
    """Recipients shown in ``status``."""
    return status_in([status])


# --- the claim in a recipient's history -------------------------------------------


def claim_cause(attempt_no: int) -> str:
    """The cause a recipient's move to ``submitting`` shows."""
    return f"attempt {attempt_no} claimed"


def claimed_statuses(claimed: str | None) -> dict[int, RecipientStatus]:
    """``Attempt.claimed`` read back: each recipient's status before the claim."""
    if not claimed:
        return {}
    return {int(rid): RecipientStatus(status) for rid, status in json.loads(claimed)}


@dataclass(frozen=True, slots=True)
class ImpliedEvent:
    """A status change shown in a recipient's history as a status event is, but read
    from the rows that imply it instead of written as one (docs/design.md section 3):
    a claim, from its attempt's row (``Attempt.claimed``); an accepted recipient's
    creation, from its row and its job's (``Job.creation_implied``)."""

    recipient_id: int
    job_id: str
    at: dt.datetime
    from_status: RecipientStatus | None
    to_status: RecipientStatus
    cause: str
    actor: str
    attempt_id: int | None = None
    id: int | None = None
    """Status events have ids; an implied one has none."""


CREATION_CAUSE = "enqueued"
"""The cause an accepted recipient's creation shows."""


def creation_event(
    *, recipient_id: int, job_id: str, created_at: dt.datetime, created_by: str
) -> ImpliedEvent:
    """An accepted recipient's first event, as its history shows it."""
    return ImpliedEvent(
        recipient_id=recipient_id,
        job_id=job_id,
        at=created_at,
        from_status=None,
        to_status=RecipientStatus.QUEUED,
        cause=CREATION_CAUSE,
        actor=created_by,
    )


def claim_event(
    attempt: Attempt, *, recipient_id: int, job_id: str, from_status: RecipientStatus
) -> ImpliedEvent:
    """The claim of ``attempt`` as ``recipient_id``'s history shows it."""
    return ImpliedEvent(
        recipient_id=recipient_id,
        job_id=job_id,
        at=attempt.started_at,
        from_status=from_status,
        to_status=RecipientStatus.SUBMITTING,
        cause=claim_cause(attempt.attempt_no),
        actor=attempt.worker or "",
        attempt_id=attempt.id,
    )


def creation_implied(job_implied: bool | None, batch_id: int | None) -> bool:
    """Whether a recipient's first event is implied by its row: it was accepted (it has
    a batch) into a job that writes no such event."""
    return bool(job_implied) and batch_id is not None


def closes_claim(from_status: str | None, claimed: str | None) -> bool:
    """Whether a status event ends a claim kept per submission: it leaves
    ``submitting`` for an attempt whose row lists what it carried (older attempts'
    claims are status events of their own)."""
    return from_status == RecipientStatus.SUBMITTING and claimed is not None
