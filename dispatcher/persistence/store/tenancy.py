"""A viewer's share of the jobs: any selection narrowed to what an API key may see
(``dispatcher.domain.tenancy``)."""

from __future__ import annotations

import dataclasses
from typing import TypeVar

from dispatcher.domain.filters import JobFilter
from dispatcher.domain.tenancy import Viewer
from dispatcher.persistence.store.audit import AuditSelection
from dispatcher.persistence.store.operator import RecipientFilter

_S = TypeVar("_S", JobFilter, RecipientFilter, AuditSelection)


def visible_to(viewer: Viewer, selection: _S) -> _S:
    """``selection`` narrowed to the jobs ``viewer`` may see."""
    if viewer.sees_all:
        return selection
    narrowed: _S = dataclasses.replace(selection, owner_key_id=viewer.owner_key_id)
    return narrowed
