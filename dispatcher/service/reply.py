"""Recording the gateway's reply: the attempt and every recipient's outcome, together.

The third step of the commit order (``dispatcher.service.dispatch``): the reply is
written, attempt and recipients, in one transaction, retried while the database
is away and logged meanwhile so no accepted gateway ID is lost. Its values are
fitted to their columns first (``dispatcher.persistence.columns``), and a write the
database refuses all the same is made recipient by recipient
(``dispatcher.persistence.salvage``) rather than left to the sweeper. Each
outcome's status follows the outcome policy (docs/design.md, "Outcome policy").
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import NamedTuple

from dispatcher.domain.backoff import RetryPolicy
from dispatcher.domain.statuses import AttemptOutcome, RecipientStatus
from dispatcher.domain.times import utcnow
from dispatcher.gateway.client import Submission
from dispatcher.gateway.protocol import Outcome, RecipientOutcome
from dispatcher.persistence import columns, salvage, store
from dispatcher.persistence.db import Database, DBAPIError, Session
from dispatcher.service.claim import Claim
from dispatcher.service.control import Controls

log = logging.getLogger(__name__)

# How long a worker keeps trying to write a reply while the database is away
# before giving up and leaving the batch to the sweeper (as `unknown`).
RECORD_RETRY_BUDGET_S = 300.0

_S = RecipientStatus


class _GroupKey(NamedTuple):
    """Recipients of one reply that are written with one statement."""

    status: RecipientStatus
    message_id: str | None
    error_code: str | None
    cause: str
    spent: bool


def _attempt_outcome(outcomes: Sequence[RecipientOutcome]) -> AttemptOutcome:
    kinds = {o.outcome for o in outcomes}
    if kinds == {Outcome.ACCEPTED}:
        return AttemptOutcome.ACCEPTED
    if Outcome.ACCEPTED in kinds:
        return AttemptOutcome.PARTIAL
    if Outcome.AMBIGUOUS in kinds:
        return AttemptOutcome.AMBIGUOUS
    if kinds <= {Outcome.TRANSIENT, Outcome.NO_CREDIT}:
        return AttemptOutcome.TRANSIENT
    return AttemptOutcome.REJECTED


class ReplyRecorder:
    """Writes replies; one per process, shared by its threads."""

    def __init__(self, db: Database, controls: Controls, policy: RetryPolicy) -> None:
        self.db = db
        self.controls = controls
        self.policy = policy

    def record(
        self,
        claim: Claim,
        submission: Submission,
        *,
        worker: str,
        budget_s: float = RECORD_RETRY_BUDGET_S,
    ) -> None:
        """Write the attempt's result and every recipient's, retrying while the DB is away
        for up to ``budget_s``.

        A write the database refuses for good (not one it cannot take now) is made
        again recipient by recipient (``dispatcher.persistence.salvage``), never given
        up: the batch left ``submitting`` would have the sweeper call every recipient
        lost.
        """
        deadline = time.monotonic() + budget_s
        delay_s = 0.5
        careful = False
        while True:
            try:
                if careful:
                    self._record_carefully(claim, submission, worker)
                else:
                    self._record_once(claim, submission, worker)
                return
            except (DBAPIError, UnicodeEncodeError) as exc:
                away = isinstance(exc, DBAPIError) and salvage.database_away(exc)
                if not away and not careful:
                    log.warning(
                        "attempt %s: the database refused the reply's write (%s); "
                        "recording it recipient by recipient",
                        claim.attempt_id,
                        salvage.refusal(exc),
                    )
                    careful = True
                    continue
                if not away or time.monotonic() >= deadline:
                    log.error(
                        "giving up recording attempt %s; the sweeper will mark batch %s unknown. "
                        "Gateway reply kept here: %s",
                        claim.attempt_id,
                        claim.batch_id,
                        _outcome_summary(submission),
                    )
                    raise
                log.warning(
                    "database unavailable recording attempt %s (%s); retrying in %.1f s. "
                    "Gateway reply so far: %s",
                    claim.attempt_id,
                    type(exc).__name__,
                    delay_s,
                    _outcome_summary(submission),
                )
                time.sleep(delay_s)
                delay_s = min(delay_s * 2, 10.0)

    def _record_once(self, claim: Claim, submission: Submission, worker: str) -> None:
        with self.db.transaction() as session:
            write = self._prepare_reply(session, claim, submission, worker)
            moved = self._write(session, write)
        self._after_record(claim, submission, write, moved)

    @staticmethod
    def _write(session: Session, write: salvage.ReplyWrite) -> int:
        return store.record_reply(
            session,
            attempt_id=write.attempt_id,
            batch_id=write.batch_id,
            attempt=write.attempt,
            groups=write.groups,
            at=write.at,
            actor=write.actor,
            reset_breaker_failures=write.reset_breaker_failures,
        )

    def record_many(self, replies: Sequence[tuple[Claim, Submission, str]]) -> None:
        """Write several replies in one transaction (``dispatcher.service.completer``),
        in batch order so two writers lock batches alike; raises as the database does,
        and then nothing of them is written."""
        ordered = sorted(replies, key=lambda reply: reply[0].batch_id)
        done: list[tuple[Claim, Submission, salvage.ReplyWrite, int]] = []
        with self.db.transaction() as session:
            for claim, submission, worker in ordered:
                write = self._prepare_reply(session, claim, submission, worker)
                done.append((claim, submission, write, self._write(session, write)))
        # Committed: whatever happens now must not send the caller to write them again
        # one by one (the breaker's count would move twice).
        for claim, submission, write, moved in done:
            try:
                self._after_record(claim, submission, write, moved)
            except Exception:
                log.exception("attempt %s recorded; logging its outcome failed", claim.attempt_id)

    def _record_carefully(self, claim: Claim, submission: Submission, worker: str) -> None:
        with self.db.transaction() as session:
            write = self._prepare_reply(session, claim, submission, worker)
            result = salvage.record_reply(session, write)
        result.log(
            attempt_id=claim.attempt_id,
            job_id=claim.job_id,
            numbers={r.id: r.number for r in claim.recipients},
        )
        self._after_record(claim, submission, write, result.moved)

    def _prepare_reply(
        self, session: Session, claim: Claim, submission: Submission, worker: str
    ) -> salvage.ReplyWrite:
        """The breaker and pause steps of a reply, then its writes with values fitted
        to their columns (``dispatcher.persistence.columns``), grouped by outcome."""
        now = utcnow()
        by_number = {r.number: r for r in claim.recipients}
        all_transient = all(o.outcome is Outcome.TRANSIENT for o in submission.outcomes)
        # A healthy reply (the common case) resets the breaker's count inside
        # the reply's own statement; a probe or an outage goes the long way.
        healthy = not claim.probe and not all_transient
        outage = not healthy and self.controls.update_breaker(
            session, now, probe=claim.probe, all_transient=all_transient
        )
        self.controls.pause_for(session, submission.outcomes, worker)
        groups: dict[_GroupKey, list[int]] = defaultdict(list)
        retry_at: dt.datetime | None = None
        for outcome in submission.outcomes:
            recipient = by_number[outcome.number]
            made = recipient.attempts + 1
            # The retry limit counts from the operator's latest retry (domain.retries).
            allowance = made - recipient.attempts_base
            if outcome.outcome is Outcome.TRANSIENT and outage:
                # The breaker holds the work; an outage must not use up attempts.
                status = _S.RETRY_WAIT
                cause = f"{outcome.error_code}; gateway outage, breaker open, no attempt spent"
                spent = False
                retry_at = retry_at or now
            else:
                status, cause = self._status_for(outcome, made, allowance)
                spent = status is not _S.QUEUED
                if status is _S.RETRY_WAIT and retry_at is None:
                    retry_at = now + dt.timedelta(seconds=self.policy.delay_s(allowance))
            key = _GroupKey(
                status,
                outcome.gateway_message_id,
                columns.fit_code(outcome.error_code),
                columns.fit_cause(cause),
                spent,
            )
            groups[key].append(recipient.id)
        return salvage.ReplyWrite(
            attempt_id=claim.attempt_id,
            batch_id=claim.batch_id,
            attempt=columns.fit_attempt(
                {
                    "finished_at": now,
                    "host": submission.host,
                    "http_status": submission.http_status,
                    "raw_reply": submission.raw_reply,
                    "latency_ms": submission.latency_ms,
                    "outcome": str(_attempt_outcome(submission.outcomes)),
                    "error": submission.error,
                }
            ),
            groups={
                store.OutcomeGroup(
                    *key, next_attempt_at=retry_at if key.status is _S.RETRY_WAIT else None
                ): ids
                for key, ids in groups.items()
            },
            at=now,
            actor=columns.fit_actor(worker),
            reset_breaker_failures=healthy,
        )

    def _after_record(
        self, claim: Claim, submission: Submission, write: salvage.ReplyWrite, moved: int
    ) -> None:
        if moved != write.given:
            log.warning(
                "attempt %s: %d of %d recipients had left `submitting` before the "
                "reply was recorded; the reply stays on the attempt row",
                claim.attempt_id,
                write.given - moved,
                write.given,
            )
        _log_outcomes(claim, submission)

    def _status_for(
        self, outcome: RecipientOutcome, made: int, allowance: int
    ) -> tuple[RecipientStatus, str]:
        code = outcome.error_code
        # After an operator's retry the count goes on; the limit counts from the retry.
        limit = self.policy.max_attempts
        of_limit = (
            f"{made} of {limit}"
            if made == allowance
            else f"{made} ({allowance} of {limit} since the operator's retry)"
        )
        match outcome.outcome:
            case Outcome.ACCEPTED:
                return _S.SENT, f"accepted as {outcome.gateway_message_id}"
            case Outcome.TRANSIENT:
                if self.policy.exhausted(allowance):
                    return _S.FAILED, f"{code}; gave up after attempt {of_limit}"
                return _S.RETRY_WAIT, f"{code}; attempt {of_limit}"
            case Outcome.NO_CREDIT:
                return _S.QUEUED, f"{code}; waits for credit, no attempt spent"
            case Outcome.AMBIGUOUS:
                return _S.UNKNOWN, f"{code}; the gateway may have sent it, not resubmitted"
            case Outcome.REJECTED | Outcome.LOGIN_INVALID | Outcome.REQUEST_INVALID:
                return _S.FAILED, f"{code}; permanent"
        raise AssertionError(outcome.outcome)  # pragma: no cover


def _log_outcomes(claim: Claim, submission: Submission) -> None:
    request_errors = [o for o in submission.outcomes if o.outcome is Outcome.REQUEST_INVALID]
    if request_errors:
        log.error(
            "gateway says our request was wrong: job %s attempt %s got %s; "
            "recipients failed, not retried",
            claim.job_id,
            claim.attempt_id,
            sorted({o.error_code or "?" for o in request_errors}),
        )
    if any(o.outcome is Outcome.LOGIN_INVALID for o in submission.outcomes):
        log.error("gateway refused the credentials (LOGIN_INVALID) on attempt %s", claim.attempt_id)


def _outcome_summary(submission: Submission) -> str:
    parts = [
        f"{o.number}={o.outcome}:{o.gateway_message_id or o.error_code}"
        for o in submission.outcomes
    ]
    return f"host={submission.host} http={submission.http_status} " + ", ".join(parts)
