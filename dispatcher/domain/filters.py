"""Which jobs a listing holds: a plain value the entry points build and the store reads.

It lives below the store so that an entry point can say what it wants listed
without reaching into persistence (docs/design.md section 6).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from dispatcher.domain.statuses import RecipientStatus
from dispatcher.domain.storable import check_storable


@dataclass(frozen=True, slots=True)
class JobFilter:
    """Which jobs a listing holds; every field narrows it."""

    status: RecipientStatus | None = None
    """Jobs with at least one recipient in this status."""
    number: str | None = None
    """Jobs with a recipient of this number (international digits)."""
    reference: str | None = None
    """Jobs with exactly this producer reference."""
    since: dt.datetime | None = None
    """Created at or after."""
    until: dt.datetime | None = None
    """Created before."""
    owner_key_id: int | None = None
    """Jobs enqueued by this API key (``dispatcher.domain.tenancy``); None: any."""

    def __post_init__(self) -> None:
        # No row can hold such a value: refused here as the mistake it is, not as a
        # driver error from inside the query.
        for name in ("number", "reference"):
            value = getattr(self, name)
            if value is not None:
                check_storable(value, name)
