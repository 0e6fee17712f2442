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
        """JSON-ready: counts, a sample of each group (each recipient by its number, as
        its job's producer knows it), the reasons in words, and the oldest age."""
        everyone = [*self.going, *(c for group in self.held.values() for c in group)]
        oldest = min((c.changed_at for c in everyone), default=None)
        return {
            "would_retry": len(self.going),
            "jobs": sorted({c.job_id for c in self.going}),
            "sample": [self._listed(c) for c in self.going[:SAMPLE]],
            "oldest_age_s": self._age(oldest) if oldest is not None else None,
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

    def _age(self, since: dt.datetime) -> float:
        return round(max((self.now - since).total_seconds(), 0.0), 1)

    def _listed(self, c: store.RetryCandidate) -> dict[str, Any]:
        return {
            "number": c.number,
            "job_id": c.job_id,
            "status": c.status,
            "error_code": c.error_code,
            "changed_at": c.changed_at.isoformat(),
            "age_s": self._age(c.changed_at),
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
    lock: bool = False,
) -> RetryPlan:
    """Judge every recipient ``selection`` holds by the retry rules; ``lock`` holds them
    for a retry that will carry the plan out (``store.retry_candidates``)."""
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
    for candidate in store.retry_candidates(session, selection=selection, lock=lock):
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


@dataclass
class Carried:
    """What a retry moved: how many, of which jobs, and the batches made per lane (to
    wake workers for)."""

    moved: int = 0
    jobs: set[str] = field(default_factory=set)
    batches: dict[Priority, int] = field(default_factory=lambda: defaultdict(int))


def carry_out(
    session: Session,
    going: Sequence[store.RetryCandidate],
    *,
    now: dt.datetime,
    actor: str,
    valid_for_s: float | None,
    named_code: str | None,
) -> Carried:
    """Queue ``going`` (locked by the plan) again in new batches of their jobs' lanes.

    Each recipient keeps its attempt count, and the retry limit counts from it
    (``attempts_base``); each new batch numbers its attempts after the highest its
    recipients have used, spent or not (their count, and their batch's), so the
    history's attempt numbers keep increasing. The batch is valid until ``valid_for_s``
    from now when given, else as long as the recipient's validity was (``expires_at``,
    which ``RetryRules`` checked is still ahead)."""
    by_job: dict[str, list[store.RetryCandidate]] = defaultdict(list)
    for candidate in going:
        by_job[candidate.job_id].append(candidate)
    carried = Carried()
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
                    attempts=max(max(c.attempts, c.batch_attempts) for c in group),
                )
                carried.batches[lane] += 1
                for status in {c.status for c in group}:
                    moved = store.requeue_for_retry(
                        session,
                        ids=[c.id for c in group if c.status == status],
                        from_status=RecipientStatus(status),
                        batch_id=batch_id,
                        at=now,
                        actor=actor,
                        cause=_cause(status, named_code, valid_for_s),
                    )
                    carried.moved += moved
                    if moved:
                        carried.jobs.add(job_id)
    return carried


def _cause(status: str, named_code: str | None, valid_for_s: float | None) -> str:
    """What a retried recipient's history says: what it was, and what the operator
    asked for beyond the defaults."""
    asked = []
    if named_code is not None:
        asked.append(f"code {named_code} named")
    if valid_for_s is not None:
        asked.append(f"valid for {valid_for_s:g} s")
    return f"operator retry (was {status}{'; ' if asked else ''}{', '.join(asked)})"
