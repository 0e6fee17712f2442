"""The dashboard's reads: its pages' queries (``dispatcher.persistence.reads.dashboard``)
and the overview composed from the rollups.
"""

from __future__ import annotations

from dispatcher.domain.times import utcnow
from dispatcher.persistence.db import Database
from dispatcher.persistence.reads.dashboard import (
    JOB_PAGE_SIZE,
    PAGE_SIZE,
    JobPage,
    Page,
    RecipientDetail,
    RecipientQuery,
    SearchResult,
    actions,
    count,
    job_page,
    recipients,
    search,
)
from dispatcher.service import stats

__all__ = [
    "JOB_PAGE_SIZE",
    "PAGE_SIZE",
    "JobPage",
    "Page",
    "RecipientDetail",
    "RecipientQuery",
    "SearchResult",
    "actions",
    "count",
    "job_page",
    "overview",
    "recipients",
    "search",
]


def overview(db: Database) -> stats.Overview:
    """The overview page's figures, from the rollups and a few index probes."""
    with db.transaction() as session:
        return stats.overview(session, now=utcnow())
