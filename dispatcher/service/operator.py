"""Operator actions: retry, cancel, pause and resume, each audited in operator_actions.

Only an operator's explicit retry moves a recipient out of ``failed`` or
``unknown``, and retrying an ``unknown`` one needs a confirmation, since the
gateway may have sent it already (docs/design.md, "Guarantees"). A job the
acting key may not see is answered as if it did not exist.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from dispatcher.domain.message import check_validity
from dispatcher.domain.statuses import WAITING_STATUSES, PauseReason, RecipientStatus
from dispatcher.domain.storable import check_storable
from dispatcher.domain.tenancy import EVERY_JOB, Viewer
from dispatcher.domain.times import utcnow
from dispatcher.errors import ConfirmationRequiredError, InvalidOptionError, NotFoundError
from dispatcher.persistence import store
from dispatcher.persistence.db import Database
from dispatcher.persistence.store import visible_to
from dispatcher.service import retry as retries
from dispatcher.service import views
from dispatcher.service.control import UNPAUSED, Controls
from dispatcher.service.wake import Wakes

log = logging.getLogger(__name__)

MIN_RENEWED_VALIDITY_S = 1.0

_S = RecipientStatus


@dataclass(frozen=True, slots=True)
class OperatorResult:
    """What an operator action touched."""

    affected: int
    jobs: list[str]
    plan: dict[str, Any] | None = None
    """A retry's plan (``RetryPlan.describe``): what went or would go, and what stayed
    and why."""


class OperatorActions:
    """The operator's actions on jobs and on dispatch; each owns its transaction."""

    def __init__(self, db: Database, *, controls: Controls, wakes: Wakes) -> None:
        self.db = db
        self.controls = controls
        self.wakes = wakes

    def retry(
        self,
        *,
        actor: str,
        job_id: str | None = None,
        statuses: Iterable[RecipientStatus | str] = (RecipientStatus.FAILED,),
        error_code: str | None = None,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        numbers: Iterable[str] | None = None,
        confirm_unknown: bool = False,
        valid_for_s: float | None = None,
        dry_run: bool = False,
        viewer: Viewer = EVERY_JOB,
    ) -> OperatorResult:
        """Queue again the `failed` (and, confirmed, `unknown`) recipients of a selection
        that can succeed, audited; ``dry_run`` writes nothing and only says what would
        go (``OperatorResult.plan``).

        What goes and what stays is ``dispatcher.domain.retries``: failures for good
        only when ``error_code`` names their code, `unknown` ones only with
        ``confirm_unknown`` (without it, and not a dry run, ConfirmationRequiredError
        says how many), recipients whose validity ended only with ``valid_for_s`` (a
        new validity from now). Numbers refused at enqueue are never retried. Only
        jobs ``viewer`` may see are touched or counted.
        """
        wanted = {RecipientStatus(s) for s in statuses}
        if not wanted or not wanted <= {_S.FAILED, _S.UNKNOWN}:
            raise InvalidOptionError("retry takes recipients that are failed or unknown")
        valid_for_s = check_validity(valid_for_s)
        if valid_for_s is not None and valid_for_s < MIN_RENEWED_VALIDITY_S:
            # A retry valid for less than a second would expire before any claim.
            raise InvalidOptionError(
                f"a new validity is at least {MIN_RENEWED_VALIDITY_S:g} s, got {valid_for_s:g}"
            )
        if job_id is not None:
            self._require_job(job_id, viewer)
        selection = store.RecipientFilter(
            job_id=job_id,
            statuses=[str(s) for s in wanted],
            error_code=error_code,
            since=since,
            until=until,
            numbers=list(numbers) if numbers is not None else None,
            retryable_only=True,
        )
        selection = visible_to(viewer, selection)
        now = utcnow()
        with self.db.transaction() as session:
            judged = retries.plan(
                session,
                selection=selection,
                now=now,
                named_code=error_code,
                confirm_unknown=confirm_unknown,
                new_validity=valid_for_s is not None,
                lock=not dry_run,
            )
            described = judged.describe()
            if dry_run:
                return OperatorResult(
                    affected=len(judged.going), jobs=described["jobs"], plan=described
                )
            if _S.UNKNOWN in wanted and judged.unconfirmed_unknown:
                raise ConfirmationRequiredError(
                    f"{judged.unconfirmed_unknown} recipients are `unknown`: the gateway may "
                    "already have sent them, so retrying may send them twice; confirm to go "
                    "ahead"
                )
            carried = retries.carry_out(
                session,
                judged.going,
                now=now,
                actor=actor,
                valid_for_s=valid_for_s,
                named_code=error_code,
            )
            store.record_action(
                session,
                actor=actor,
                action="retry",
                target=job_id,
                detail=selection.describe()
                | {
                    "confirm_unknown": confirm_unknown,
                    "valid_for_s": valid_for_s,
                    "held_back": {k: v["count"] for k, v in described["held_back"].items()},
                },
                affected=carried.moved,
            )
        for lane, count in carried.batches.items():
            self.wakes.wake(count, lane)
        return OperatorResult(affected=carried.moved, jobs=sorted(carried.jobs), plan=described)

    def cancel(self, job_id: str, *, actor: str, viewer: Viewer = EVERY_JOB) -> OperatorResult:
        """Cancel a job's recipients that no worker has claimed; audited.

        Recipients already `submitting` are past the point of no return and keep
        their course; final ones are left as they are. A job ``viewer`` may not see
        is NotFoundError.
        """
        self._require_job(job_id, viewer)
        selection = visible_to(viewer, store.RecipientFilter(job_id=job_id))
        return self.cancel_matching(selection, actor=actor)

    def cancel_matching(self, selection: store.RecipientFilter, *, actor: str) -> OperatorResult:
        """Cancel the waiting (`queued`, `retry_wait`) recipients of ``selection``; audited.

        ``selection.statuses`` narrows the waiting statuses further; any other status
        in it is ignored, so nothing claimed or final is ever cancelled.
        """
        waiting = [str(s) for s in WAITING_STATUSES]
        statuses = [s for s in selection.statuses or waiting if s in waiting]
        now = utcnow()
        with self.db.transaction() as session:
            rows = store.select_recipients(session, selection=replace(selection, statuses=statuses))
            ids = [rid for rid, _job, _status in rows]
            moved = store.cancel_waiting(
                session, ids=ids, at=now, cause=f"cancelled by {actor}", actor=actor
            )
            store.record_action(
                session,
                actor=actor,
                action="cancel",
                target=selection.job_id,
                detail={} if selection.job_id else selection.describe(),
                affected=moved,
            )
        jobs = [selection.job_id] if selection.job_id else sorted({job for _i, job, _s in rows})
        return OperatorResult(affected=moved, jobs=jobs)

    def _require_job(self, job_id: str, viewer: Viewer) -> None:
        with self.db.transaction() as session:
            if store.get_job(session, job_id=job_id, owner_key_id=viewer.owner_key_id) is None:
                raise NotFoundError(f"no job {job_id!r}")

    def pause(self, *, actor: str, detail: str = "paused by an operator") -> dict[str, Any]:
        """Stop all claims until ``resume``; calls in flight finish and are recorded."""
        check_storable(detail, "the reason")
        with self.db.transaction() as session:
            changed = self.controls.set_pause(
                session, reason=PauseReason.MANUAL, detail=detail, actor=actor
            )
            store.record_action(
                session,
                actor=actor,
                action="pause",
                target=None,
                detail={"detail": detail},
                affected=int(changed),
            )
        return views.control(self.db)

    def resume(self, *, actor: str) -> dict[str, Any]:
        """End a pause of any reason, and wake workers for the work that waited."""
        with self.db.transaction() as session:
            was = store.get_control(session)
            reason = was.pause_reason
            store.update_control(session, values=UNPAUSED)
            store.record_action(
                session,
                actor=actor,
                action="resume",
                target=None,
                detail={"was": reason},
                affected=int(reason is not None),
            )
        if reason:
            log.warning("dispatch resumed by %s (was paused: %s)", actor, reason)
        self.wakes.due()
        return views.control(self.db)
