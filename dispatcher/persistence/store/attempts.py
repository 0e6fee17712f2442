"""The attempt row of a claimed batch: written as in flight before the HTTP call, and
completed after it (docs/design.md, section 3, guarantees 2 and 3).

The claim is recorded per submission: this one row lists the recipients the call
carries, with the status each had; no recipient row is written at the claim, and
readers show those recipients as ``submitting`` through their batch.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from sqlalchemy import insert, update
from sqlalchemy.orm import Session

from dispatcher.domain.statuses import AttemptOutcome
from dispatcher.persistence.models import Attempt
from dispatcher.persistence.store.claims import ClaimedBatch, PendingRecipient


def claimed_json(recipients: list[PendingRecipient]) -> str:
    """``Attempt.claimed``: each recipient's id and the status it had, in submission order."""
    return json.dumps([[r.id, str(r.status)] for r in recipients], separators=(",", ":"))


def request_json(batch: ClaimedBatch, gateway_type: int) -> str:
    """``Attempt.request``: the form sent, without the message text or the password.

    The claim's statement on PostgreSQL builds the same text in SQL (``claims``);
    non-ASCII stays as it is, as PostgreSQL's ``to_json`` leaves it."""
    form = {
        "to": ",".join(r.number for r in batch.recipients),
        "from": batch.sender,
        "maxconcat": batch.maxconcat,
        "type": gateway_type,
        "usercontext": batch.reference,
    }
    return json.dumps(form, ensure_ascii=False)


def start_attempt(
    session: Session,
    *,
    batch: ClaimedBatch,
    request: str,
    now: dt.datetime,
    actor: str,
) -> int:
    """Write the in-flight attempt row of a claimed batch; returns the attempt's id."""
    return int(
        session.execute(
            insert(Attempt)
            .values(
                batch_id=batch.id,
                job_id=batch.job_id,
                attempt_no=batch.attempts,
                numbers=",".join(r.number for r in batch.recipients),
                claimed=claimed_json(batch.recipients),
                request=request,
                started_at=now,
                outcome=AttemptOutcome.IN_FLIGHT,
                worker=actor,
            )
            .returning(Attempt.id)
        ).scalar_one()
    )


def complete_attempt(session: Session, *, attempt_id: int, values: dict[str, Any]) -> None:
    """Fill in an attempt row's result."""
    session.execute(
        update(Attempt)
        .where(Attempt.id == attempt_id)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
