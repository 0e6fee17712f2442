"""The sweeper: the repairs and chores every worker runs now and then.

A sweep closes batches whose worker died mid-call as ``unknown`` (never a resend),
fails retries past their age, expires what outlived its validity, checks the
balance while paused for credit, queues and wakes webhook deliveries, wakes
workers for due work whose wake-up was lost, and purges what retention allows
(docs/design.md, "Guarantees"). Each step owns its transaction.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable

from dispatcher.config import Settings
from dispatcher.domain.statuses import PauseReason, RecipientStatus
from dispatcher.domain.times import utcnow
from dispatcher.errors import ConfigurationError, GatewayError
from dispatcher.gateway.client import GatewayClient
from dispatcher.persistence import store
from dispatcher.persistence.db import Database
from dispatcher.service.claim import expiry_cause
from dispatcher.service.control import UNPAUSED
from dispatcher.service.privacy import RetentionSchedule
from dispatcher.service.wake import Wakes
from dispatcher.service.webhooks import Webhooks

log = logging.getLogger(__name__)

_S = RecipientStatus


class Sweeper:
    """One sweep at a time per caller; safe to run in every worker at once."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        *,
        client: Callable[[], GatewayClient],
        webhooks: Webhooks,
        retention: RetentionSchedule,
        wakes: Wakes,
    ) -> None:
        self.settings = settings
        self.db = db
        self.client = client
        self.webhooks = webhooks
        self.retention = retention
        self.wakes = wakes

    def sweep(self) -> dict[str, int]:
        """One sweep: close abandoned batches as unknown, fail retries past their age,
        check credit while paused for it, wake workers for due work, and purge what is
        past ``DISPATCHER_RETENTION_DAYS`` (at most every retention check interval)."""
        abandoned = self._close_abandoned()
        too_old = self._fail_overdue_retries()
        expired = self._expire_overdue()
        self._check_credit()
        self.webhooks.release_stale()
        webhooks = self.webhooks.queue_finished()
        woken = self.wakes.due()
        if self.webhooks.count_due():
            # Deliveries have their own queue, served paused or not.
            woken += self.wakes.webhooks()
        # Last: the purge is the one step that can wait for the next sweep.
        purged = self.retention.maybe_purge()
        return {
            "abandoned_recipients": abandoned,
            "overdue_failed": too_old,
            "expired_recipients": expired,
            "webhooks_queued": webhooks,
            "woken": woken,
            "purged_jobs": purged,
        }

    def _close_abandoned(self) -> int:
        now = utcnow()
        older_than = now - dt.timedelta(seconds=self.settings.submitting_timeout_s)
        abandoned = 0
        with self.db.transaction() as session:
            for batch_id in store.stale_submitting_batches(session, older_than=older_than):
                abandoned += store.abandon_batch(
                    session,
                    batch_id=batch_id,
                    now=now,
                    cause=(
                        f"no result within {self.settings.submitting_timeout_s:g} s of the "
                        "claim: the worker died mid-call; the gateway may have sent it"
                    ),
                )
        if abandoned:
            log.warning("sweeper marked %d recipients unknown after a lost worker", abandoned)
        return abandoned

    def _fail_overdue_retries(self) -> int:
        now = utcnow()
        cutoff = now - dt.timedelta(seconds=self.settings.max_retry_age_s)
        with self.db.transaction() as session:
            ids = store.overdue_retries(session, created_before=cutoff)
            if not ids:
                return 0
            batches = store.batches_of(session, recipient_ids=ids)
            failed = store.transition(
                session,
                ids=ids,
                from_statuses=[_S.RETRY_WAIT],
                to_status=_S.FAILED,
                at=now,
                cause=f"still failing {self.settings.max_retry_age_s:g} s after it was due; "
                "gave up (DISPATCHER_MAX_RETRY_AGE_S)",
                actor="sweeper",
                values={"error_code": "RETRY_AGE_EXCEEDED", "next_attempt_at": None},
            )
            for batch_id in batches:
                store.settle_batch_if_idle(session, batch_id=batch_id, now=now)
        if failed:
            log.warning("sweeper failed %d recipients past the maximum retry age", failed)
        return failed

    def _expire_overdue(self) -> int:
        """Expire queued batches (due, scheduled or waiting to retry) past their validity,
        so nothing stale is sent and the recipients show why, paused or not."""
        now = utcnow()
        expired = 0
        with self.db.transaction() as session:
            for batch_id, expires_at in store.expired_batches(session, now=now):
                expired += store.expire_batch(
                    session,
                    batch_id=batch_id,
                    now=now,
                    cause=expiry_cause(expires_at),
                    actor="sweeper",
                )
        if expired:
            log.warning("sweeper expired %d recipients past their validity", expired)
        return expired

    def _check_credit(self) -> None:
        """While paused for credit, ask the gateway's balance now and then; resume above
        the threshold. One sweeper asks at a time (compare-and-set on the check time)."""
        now = utcnow()
        due_before = now - dt.timedelta(seconds=self.settings.credit_check_interval_s)
        with self.db.transaction() as session:
            control = store.get_control(session)
            if not control.paused or control.pause_reason != PauseReason.NO_CREDIT:
                return
            mine = store.claim_credit_check(session, now=now, due_before=due_before)
        if not mine:
            return
        try:
            balance = self.client().balance()
        except (GatewayError, ConfigurationError) as exc:
            log.warning("credit check failed: %s", exc)
            return
        with self.db.transaction() as session:
            store.update_control(session, values={"last_balance": balance})
        if balance > self.settings.credit_resume_threshold:
            log.warning("balance %g is above the threshold; resuming dispatch", balance)
            with self.db.transaction() as session:
                store.end_pause_for(session, PauseReason.NO_CREDIT, values=UNPAUSED)
