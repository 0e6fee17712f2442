"""What the dispatch tables' foreign keys used to check, checked after the fact.

Batches, recipients and attempts carry no foreign keys (migration 0011, docs/design.md
"Integrity without foreign keys"): their writers keep every reference whole. The
pipeline and fault invariants hold them to it after every run.
"""

from __future__ import annotations

from sqlalchemy import exists, func, select
from sqlalchemy.orm import Session

from dispatcher.persistence.models import Attempt, Batch, Job, Recipient


def dangling_references(session: Session) -> dict[str, int]:
    """How many rows name a job or batch that does not exist, by reference; empty
    when every one is whole."""
    checks = {
        "batches.job_id": select(func.count())
        .select_from(Batch)
        .where(~exists().where(Job.id == Batch.job_id)),
        "recipients.job_id": select(func.count())
        .select_from(Recipient)
        .where(~exists().where(Job.id == Recipient.job_id)),
        "recipients.batch_id": select(func.count())
        .select_from(Recipient)
        .where(
            Recipient.batch_id.is_not(None),
            ~exists().where(Batch.id == Recipient.batch_id),
        ),
        "recipients.batch_id (another job's)": select(func.count())
        .select_from(Recipient)
        .join(Batch, Batch.id == Recipient.batch_id)
        .where(Batch.job_id != Recipient.job_id),
        "attempts.batch_id": select(func.count())
        .select_from(Attempt)
        .where(~exists().where(Batch.id == Attempt.batch_id)),
        "attempts.job_id (not its batch's)": select(func.count())
        .select_from(Attempt)
        .join(Batch, Batch.id == Attempt.batch_id)
        .where(Batch.job_id != Attempt.job_id),
    }
    counts = {name: int(session.execute(query).scalar_one()) for name, query in checks.items()}
    return {name: n for name, n in counts.items() if n}


def assert_references_whole(session: Session) -> None:
    """Fail naming every reference left dangling."""
    dangling = dangling_references(session)
    assert not dangling, f"rows naming what does not exist: {dangling}"
