"""Dispatch control: the pause and the circuit breaker, in one database row.

Every claim reads the row in its own transaction (on PostgreSQL in the claiming
statement itself, ``store.claim_if_open``; otherwise, and whenever dispatch is not
plainly open, ``Controls.gate``), so a pause committed by one worker stops every
worker's next claim, on every host, and survives restarts. These functions take
the caller's session and never commit: the service owns the transactions.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable
from typing import Any

from dispatcher.config import Settings
from dispatcher.domain.statuses import BreakerState, PauseReason
from dispatcher.domain.times import utcnow
from dispatcher.gateway.protocol import Outcome, RecipientOutcome
from dispatcher.persistence import store
from dispatcher.persistence.db import Session
from dispatcher.persistence.models import DispatchControl

log = logging.getLogger(__name__)

UNPAUSED: dict[str, object] = {
    "paused": False,
    "pause_reason": None,
    "pause_detail": None,
    "paused_at": None,
    "paused_by": None,
}


class Controls:
    """The pause and breaker rules, applied inside the service's transactions."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def gate(self, session: Session, now: dt.datetime) -> tuple[bool, dt.datetime | None] | None:
        """May a batch be claimed now? None: no; (probe, retry_at): yes, maybe as the probe.

        Read in the claim's own transaction, so a pause committed by one worker
        stops every other worker's next claim.
        """
        control = store.get_control(session)
        if control.paused:
            return None
        state = BreakerState(control.breaker_state)
        if state is BreakerState.CLOSED:
            return False, None
        retry_at = control.breaker_retry_at
        if retry_at is not None and retry_at > now:
            return None
        # The probe's turn (or a probe whose worker died, its lease expired): exactly
        # one claimer wins this compare-and-set and sends one batch.
        won = store.take_probe(
            session,
            state=state,
            now=now,
            lease_until=now + dt.timedelta(seconds=self.settings.submitting_timeout_s),
        )
        return (True, retry_at) if won else None

    def update_breaker(
        self, session: Session, now: dt.datetime, *, probe: bool, all_transient: bool
    ) -> bool:
        """Count whole-submission transient failures; True while the breaker is open.

        A success only writes when there is a count to reset, so the control row
        is not a hot spot that every worker updates on every attempt.
        """
        if not probe and not all_transient:
            # One statement that matches (and so locks and writes) the row only when
            # there is a count to reset: the row is not a lock every worker takes on
            # every attempt. The dispatcher folds it into the reply's own statement
            # (``store.record_reply``).
            store.reset_failures(session)
            return False
        control = store.get_control(session)
        if probe:
            if all_transient:
                trips = control.breaker_trips + 1
                self.open_breaker(session, now, trips=trips)
                log.warning("breaker probe failed; dispatch stays stopped (trip %d)", trips)
                return True
            store.update_control(
                session,
                values={
                    "breaker_state": BreakerState.CLOSED,
                    "breaker_failures": 0,
                    "breaker_trips": 0,
                    "breaker_retry_at": None,
                },
            )
            log.warning("breaker probe succeeded; dispatch resumes")
            return False
        store.count_breaker_failure(session)
        control = store.get_control(session)
        if BreakerState(control.breaker_state) is not BreakerState.CLOSED:
            return True
        if control.breaker_failures >= self.settings.breaker_threshold:
            self.open_breaker(session, now, trips=1)
            log.error(
                "gateway outage: %d submissions in a row failed transiently; dispatch "
                "stops and probes in %g s",
                control.breaker_failures,
                self.settings.breaker_probe_s,
            )
            return True
        return False

    def open_breaker(self, session: Session, now: dt.datetime, *, trips: int) -> None:
        wait_s = min(
            self.settings.breaker_probe_max_s,
            self.settings.breaker_probe_s * 2.0 ** min(trips - 1, 30),
        )
        store.open_breaker(
            session, trips=trips, now=now, retry_at=now + dt.timedelta(seconds=wait_s)
        )

    def pause_for(
        self, session: Session, outcomes: Iterable[RecipientOutcome], worker: str
    ) -> None:
        """Pause dispatch when the reply says every other submission would fail too."""
        kinds = {o.outcome for o in outcomes}
        if Outcome.LOGIN_INVALID in kinds:
            reason, detail = (
                PauseReason.LOGIN_INVALID,
                "the gateway refused the credentials (LOGIN_INVALID); fix "
                "DISPATCHER_GATEWAY_USERNAME/PASSWORD, then `dispatcher resume`",
            )
        elif Outcome.NO_CREDIT in kinds:
            reason, detail = (
                PauseReason.NO_CREDIT,
                "the account is out of credit (INSUFFICIENT_CREDIT); resumes when a balance "
                f"check finds more than {self.settings.credit_resume_threshold:g}",
            )
        else:
            return
        self.set_pause(session, reason=reason, detail=detail, actor=worker)

    def set_pause(self, session: Session, *, reason: PauseReason, detail: str, actor: str) -> bool:
        # A credentials pause outranks the others (``store.set_pause``).
        paused = store.set_pause(
            session,
            values={
                "paused": True,
                "pause_reason": str(reason),
                "pause_detail": detail[:500],
                "paused_at": utcnow(),
                "paused_by": actor[:200],
            },
        )
        if paused:
            level = logging.WARNING if reason is PauseReason.MANUAL else logging.ERROR
            log.log(level, "dispatch paused (%s) by %s: %s", reason, actor, detail)
        return paused


def control_view(c: DispatchControl) -> dict[str, Any]:
    """The control row as JSON-ready data for the CLI, the API and the dashboard."""
    return {
        "paused": c.paused,
        "pause_reason": c.pause_reason,
        "pause_detail": c.pause_detail,
        "paused_at": c.paused_at.isoformat() if c.paused_at else None,
        "paused_by": c.paused_by,
        "breaker_state": c.breaker_state,
        "breaker_failures": c.breaker_failures,
        "breaker_opened_at": c.breaker_opened_at.isoformat() if c.breaker_opened_at else None,
        "breaker_retry_at": c.breaker_retry_at.isoformat() if c.breaker_retry_at else None,
        "last_balance": c.last_balance,
        "credit_checked_at": c.credit_checked_at.isoformat() if c.credit_checked_at else None,
    }
