"""Which recipients a purge or an erasure scrubs, said in SQL for the store.

The privacy service picks them (whole jobs past retention, or the recipients with
one number) and passes the scope back to the store's scrubbing functions without
looking inside: only persistence builds SQL (docs/design.md, "Layers").
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TypeAlias

from sqlalchemy import ColumnElement

from dispatcher.persistence.models import Recipient

RecipientScope: TypeAlias = ColumnElement[bool]
"""A condition on recipients, as ``store.events_naming_their_number``,
``store.details_naming_their_number`` and ``store.replace_numbers`` take it."""


def recipients_of_jobs(job_ids: Collection[str]) -> RecipientScope:
    """Every recipient of the jobs ``job_ids``."""
    return Recipient.job_id.in_(job_ids)


def recipients_by_id(ids: Collection[int]) -> RecipientScope:
    """The recipients ``ids``."""
    return Recipient.id.in_(ids)
