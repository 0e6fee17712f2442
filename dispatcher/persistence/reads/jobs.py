"""Small reads about one job that the entry points need beside the service's views."""

from __future__ import annotations

from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from dispatcher.domain.statuses import PENDING_STATUSES
from dispatcher.persistence.models import Recipient


def has_pending(session: Session, job_id: str) -> bool:
    """Whether any recipient of the job is still pending (one index probe)."""
    pending = [str(s) for s in PENDING_STATUSES]
    return bool(
        session.execute(
            select(exists().where(Recipient.job_id == job_id, Recipient.stored_status.in_(pending)))
        ).scalar_one()
    )
