"""Who may see which jobs: a producer key its own, an operator every one (docs/design.md section 3).

A key without the ``operate`` scope sees and acts on only the jobs it enqueued
(``jobs.owner_key_id``); another key's job is answered exactly as a job that does
not exist. Operators (keys with ``operate``, the dashboard, the CLI and Python)
see every job.

Routes only say who is asking (a Viewer); the service narrows each selection
with ``store.visible_to``, and the store turns the selection's ``owner_key_id`` into
one condition on the job (``store.owned_by``). The check is therefore part of
the query that looks the job up, so another key's job costs the same one lookup
as a missing one and no count includes it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Viewer:
    """Who is asking, as far as which jobs it may see goes."""

    owner_key_id: int | None
    """Only the jobs this API key enqueued; None: every job (an operator)."""

    @property
    def sees_all(self) -> bool:
        """Whether every job is visible (an operator)."""
        return self.owner_key_id is None


EVERY_JOB = Viewer(owner_key_id=None)
"""Operators: keys with the ``operate`` scope, the dashboard, the CLI and Python."""


def own_jobs(key_id: int) -> Viewer:
    """A producer key, which sees only the jobs it enqueued."""
    return Viewer(owner_key_id=key_id)
