"""An operator's retry: which recipients of a selection go again and why the rest stay
(``dispatcher.domain.retries``), as a plan to show (a dry run, the dashboard's
confirmation page) or to carry out, audited.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from dispatcher.domain.lanes import Priority, check_priority
from dispatcher.domain.numbers import chunk
from dispatcher.domain.retries import HeldBack, RetryRules
from dispatcher.domain.statuses import PauseReason, RecipientStatus
from dispatcher.gateway import protocol
from dispatcher.persistence import store
from dispatcher.persistence.db import Session

SAMPLE = 20
"""Recipients listed per group in a plan (the counts are whole)."""


@dataclass
class RetryPlan:
    """What a retry would queue again, and what it leaves with the reason."""

    now: dt.datetime
    going: list[store.RetryCandidate] = field(default_factory=list)
    held: dict[HeldBack, list[store.RetryCandidate]] = field(
        default_factory=lambda: defaultdict(list)
    )

    @property
    def unconfirmed_unknown(self) -> int:
        """``unknown`` recipients that would go if confirmed."""
        return len(self.held.get(HeldBack.UNCONFIRMED, []))

    def describe(self) -> dict[str, Any]:
        """JSON-ready: counts, a sample of each group, the reasons in words."""
        return {
            "would_retry": len(self.going),
            "jobs": sorted({c.job_id for c in self.going}),
            "sample": [self._listed(c) for c in self.going[:SAMPLE]],
            "held_back": {
                str(reason): {
                    "count": len(members),
                    "why": reason.explain(),
                    "sample": [self._listed(c) for c in members[:SAMPLE]],
                }
                for reason, members in self.held.items()
                if members
            },
        }

    def _listed(self, c: store.RetryCandidate) -> dict[str, Any]:
        return {
            "id": c.id,
            "job_id": c.job_id,
            "status": c.status,
            "error_code": c.error_code,
            "changed_at": c.changed_at,
            "age_s": round(max((self.now - c.changed_at).total_seconds(), 0.0), 1),
            "attempts": c.attempts,
        }


def plan(
    session: Session,
    *,
    selection: store.RecipientFilter,
    now: dt.datetime,
    named_code: str | None,
    confirm_unknown: bool,
    new_validity: bool,
) -> RetryPlan:
    """Judge every recipient ``selection`` holds by the retry rules."""
    control = store.get_control(session)
    rules = RetryRules(
        now=now,
        named_code=named_code,
        confirm_unknown=confirm_unknown,
        new_validity=new_validity,
        resumed_at=store.last_resume_at(session),
        credentials_paused=control.pause_reason == PauseReason.LOGIN_INVALID,
    )
    result = RetryPlan(now=now)
    for candidate in store.retry_candidates(session, selection=selection):
        reason = rules.verdict(
            status=candidate.status,
            error_code=candidate.error_code,
            changed_at=candidate.changed_at,
            expires_at=candidate.expires_at,
        )
        if reason is None:
            result.going.append(candidate)
        else:
            result.held[reason].append(candidate)
    return result


def carry_out(
    session: Session,
    going: Sequence[store.RetryCandidate],
    *,
    now: dt.datetime,
    actor: str,
    valid_for_s: float | None,
) -> tuple[int, dict[Priority, int]]:
    """Queue ``going`` again in new batches of their jobs' lanes; how many moved, and
    the batches made per lane (to wake workers for).

    Each recipient keeps its attempt count, and the retry limit counts from it
    (``attempts_base``); each new batch starts its attempt numbers after the highest
    count it carries, so the history's attempt numbers keep increasing. The batch is
    valid until ``valid_for_s`` from now when given, else as long as the recipient's
    validity was (``expires_at``, which ``RetryRules`` checked is still ahead)."""
    by_job: dict[str, list[store.RetryCandidate]] = defaultdict(list)
    for candidate in going:
        by_job[candidate.job_id].append(candidate)
    moved = 0
    batches: dict[Priority, int] = defaultdict(int)
    renewed = now + dt.timedelta(seconds=valid_for_s) if valid_for_s is not None else None
    for job_id, members in by_job.items():
        job = store.get_job(session, job_id=job_id)
        lane = check_priority(job.priority if job else Priority.NORMAL)
        groups: dict[dt.datetime | None, list[store.RetryCandidate]] = defaultdict(list)
        for member in members:
            groups[renewed or member.expires_at].append(member)
        for expires_at, same_validity in groups.items():
            for group in chunk(same_validity, protocol.MAX_RECIPIENTS_PER_SUBMISSION):
                [batch_id] = store.insert_batches(
                    session,
                    job_id=job_id,
                    count=1,
                    due_at=now,
                    lane=lane.lane,
                    expires_at=expires_at,
                    attempts=max(c.attempts for c in group),
                )
                batches[lane] += 1
                for status in {c.status for c in group}:
                    moved += store.requeue_for_retry(
                        session,
                        ids=[c.id for c in group if c.status == status],
                        from_status=RecipientStatus(status),
                        batch_id=batch_id,
                        at=now,
                        actor=actor,
                    )
    return moved, batches
