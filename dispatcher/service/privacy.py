"""Privacy: the retention purge and the erasure of one number, on request.

- ``purge`` removes the text and the numbers of finished jobs older than
  ``DISPATCHER_RETENTION_DAYS``, in batches of jobs per transaction; counts,
  statuses, gateway IDs, error codes and times stay. ``RetentionSchedule`` runs it
  from the sweeper at most every ``DISPATCHER_RETENTION_CHECK_INTERVAL_S``.
- ``erase`` removes one person's number everywhere, on request.

Both removals are idempotent and audited in ``operator_actions`` with counts only,
never the number itself (see ``erase``). Each function owns its transactions.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, replace

from dispatcher.config import Settings
from dispatcher.domain.numbers import normalise
from dispatcher.domain.statuses import WAITING_STATUSES, RecipientStatus
from dispatcher.domain.times import utcnow
from dispatcher.errors import ConflictError, InvalidOptionError
from dispatcher.persistence import store
from dispatcher.persistence.db import Database, Session

log = logging.getLogger(__name__)

PURGE_JOBS_PER_TRANSACTION = 500
PURGE_BATCHES_PER_SWEEP = 20
"""A sweep purges at most this many batches and leaves the rest to the next sweep,
so a first purge of a long history never holds up the sweeper's other work."""
ERASE_RECIPIENTS_PER_TRANSACTION = 500
RETENTION_ACTOR = "retention"

_S = RecipientStatus


# --- removing numbers from stored text ---------------------------------------------------

_REPLY_LINE = re.compile(r"^(\s*)([^,\r\n]*)(,\s*(?:ID|ERR):.*)$", re.DOTALL)


def _replace_all(text: str | None, numbers: Iterable[str], marker: str) -> str | None:
    if text is None:
        return None
    for number in sorted(numbers, key=len, reverse=True):
        if len(number) >= store.MIN_SCRUB_LENGTH:
            text = text.replace(number, marker)
    return text


def scrub_attempt(
    attempt: store.AttemptText, targets: frozenset[str] | None, marker: str
) -> store.AttemptText | None:
    """``attempt`` with the numbers ``targets`` (every number, if None) replaced by
    ``marker`` in its numbers, request and raw reply; None if it names none of them."""

    def hit(value: str) -> bool:
        value = value.strip()
        if value in store.NUMBER_MARKERS or not value:
            return False
        digits = re.sub(r"\D", "", value)
        return targets is None or value in targets or digits in targets

    items = attempt.numbers.split(",") if attempt.numbers else []
    named = {item.strip() for item in items if hit(item)}
    numbers = ",".join(marker if hit(item) else item for item in items)

    request = attempt.request
    if request is not None:
        try:
            form = json.loads(request)
        except ValueError:
            form = None
        if isinstance(form, dict) and isinstance(form.get("to"), str):
            sent = form["to"].split(",")
            named |= {n.strip() for n in sent if hit(n)}
            form["to"] = ",".join(marker if hit(n) else n for n in sent)
            request = json.dumps(form)
    raw_reply = attempt.raw_reply
    if raw_reply is not None:
        lines = []
        for text_line in raw_reply.splitlines(keepends=True):
            match = _REPLY_LINE.match(text_line)
            if match and hit(match.group(2)):
                named.add(match.group(2).strip())
                text_line = match.group(1) + marker + match.group(3)
            lines.append(text_line)
        raw_reply = "".join(lines)
    known = named | (targets or set())
    # Anything else that quotes a number verbatim: an error page echoing the request.
    request = _replace_all(request, known, marker)
    raw_reply = _replace_all(raw_reply, known, marker)
    error = _replace_all(attempt.error, known, marker)
    changed = replace(attempt, numbers=numbers, request=request, raw_reply=raw_reply, error=error)
    return None if changed == attempt else changed


@dataclass(slots=True)
class RemovalCounts:
    """How many rows a purge or an erasure changed, by table."""

    jobs: int = 0
    recipients: int = 0
    attempts: int = 0
    events: int = 0
    cancelled: int = 0

    def add(self, other: RemovalCounts) -> None:
        """Add another batch's counts to these."""
        for name, value in asdict(other).items():
            setattr(self, name, getattr(self, name) + value)


def _scrub(
    session: Session,
    *,
    recipients: store.RecipientScope,
    job_ids: Sequence[str],
    targets: frozenset[str] | None,
    marker: str,
) -> RemovalCounts:
    """Remove numbers from events, error details and attempts, then from the recipients
    themselves (last: the first steps find the text to change by the number)."""
    counts = RemovalCounts()
    causes = {
        event_id: cause.replace(number, marker)
        for event_id, cause, number in store.events_naming_their_number(
            session, recipients=recipients
        )
    }
    store.set_event_causes(session, causes=causes)
    counts.events = len(causes)
    details = {
        rid: detail.replace(number, marker)
        for rid, detail, number in store.details_naming_their_number(session, recipients=recipients)
    }
    store.set_error_details(session, details=details)
    changed = [
        scrubbed
        for attempt in store.attempt_texts(session, job_ids=job_ids)
        if (scrubbed := scrub_attempt(attempt, targets, marker)) is not None
    ]
    store.set_attempt_texts(session, rows=changed)
    counts.attempts = len(changed)
    counts.recipients = store.replace_numbers(session, recipients=recipients, marker=marker)
    return counts


# --- retention ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PurgeReport:
    """What a purge changed (or, dry, would change)."""

    cutoff: dt.datetime
    jobs: int
    recipients: int
    attempts: int = 0
    events: int = 0
    dry_run: bool = False
    complete: bool = True
    """False when it stopped at its batch limit with more to do."""


def purge(
    db: Database,
    *,
    retention_days: int,
    dry_run: bool = False,
    now: dt.datetime | None = None,
    max_batches: int | None = None,
    jobs_per_transaction: int = PURGE_JOBS_PER_TRANSACTION,
) -> PurgeReport:
    """Remove the text and numbers of finished jobs created more than ``retention_days``
    ago, ``jobs_per_transaction`` jobs per transaction, each batch audited as actor
    ``retention``. Jobs with a recipient not yet final wait. Idempotent: a purged job
    is never touched again."""
    if retention_days < 1:
        raise InvalidOptionError("retention_days must be at least 1")
    now = now or utcnow()
    cutoff = now - dt.timedelta(days=retention_days)
    if dry_run:
        with db.transaction() as session:
            jobs, recipients = store.count_purgeable(session, created_before=cutoff)
        return PurgeReport(cutoff, jobs, recipients, dry_run=True)
    total = RemovalCounts()
    after: tuple[dt.datetime, str] | None = None
    batches = 0
    complete = True
    while True:
        if max_batches is not None and batches >= max_batches:
            complete = False
            break
        with db.transaction() as session:
            found = store.purgeable_jobs(
                session, created_before=cutoff, after=after, limit=jobs_per_transaction
            )
            if not found:
                break
            job_ids = [job_id for job_id, _created in found]
            counts = _scrub(
                session,
                recipients=store.recipients_of_jobs(job_ids),
                job_ids=job_ids,
                targets=None,
                marker=store.PURGED,
            )
            counts.jobs = store.remove_job_texts(session, job_ids=job_ids, now=now)
            store.record_action(
                session,
                actor=RETENTION_ACTOR,
                action="purge",
                target=None,
                detail={"retention_days": retention_days, "cutoff": cutoff} | asdict(counts),
                affected=counts.jobs,
            )
        total.add(counts)
        batches += 1
        after = (found[-1][1], found[-1][0])
        if len(found) < jobs_per_transaction:
            break
    if total.jobs:
        log.info(
            "retention purged the text and numbers of %d jobs older than %d days",
            total.jobs,
            retention_days,
        )
    return PurgeReport(
        cutoff, total.jobs, total.recipients, total.attempts, total.events, complete=complete
    )


class RetentionSchedule:
    """Runs ``purge`` from the sweeper at most once per check interval in each process
    (more often only while a long history is still being worked through)."""

    def __init__(
        self, settings: Settings, db: Database, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.settings = settings
        self.db = db
        self._clock = clock
        self._next_at = 0.0
        self._lock = threading.Lock()

    def maybe_purge(self) -> int:
        """Purge if retention is set and it is time; returns the jobs purged."""
        days = self.settings.retention_days
        if days is None:
            return 0
        with self._lock:
            if self._clock() < self._next_at:
                return 0
            report = purge(self.db, retention_days=days, max_batches=PURGE_BATCHES_PER_SWEEP)
            wait_s = 0.0 if not report.complete else self.settings.retention_check_interval_s
            self._next_at = self._clock() + wait_s
        return report.jobs


# --- erasure -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ErasePreview:
    """What erasing a number would touch."""

    number: str
    by_status: dict[str, int]

    @property
    def recipients(self) -> int:
        """Recipients with the number."""
        return sum(self.by_status.values())


def erase_preview(db: Database, number: str, *, default_region: str = "GB") -> ErasePreview:
    """The recipients a number (any format) has, per status; InvalidNumberError if it
    cannot be a phone number."""
    wanted = normalise(number, default_region)
    with db.transaction() as session:
        return ErasePreview(wanted, store.count_with_number(session, number=wanted))


def erase(db: Database, number: str, *, actor: str, default_region: str = "GB") -> RemovalCounts:
    """Remove a number (any format) everywhere: recipients, attempts and history.

    Recipients still waiting to be sent are cancelled first; the text of jobs sent
    to nobody else goes too (a bulk job's text stays: it is not this person's). It
    refuses (ConflictError) while one of them is being submitted. The audit row
    holds the actor and the counts but not the number, not even hashed: a phone
    number has so few possible values that any hash of it can be reversed by trying
    them all, and a key to stop that would have to be kept beside the data it
    protects. Whoever asked keeps their own record of the request.
    """
    wanted = normalise(number, default_region)
    total = RemovalCounts()
    now = utcnow()
    with db.transaction() as session:
        _refuse_if_submitting(store.count_with_number(session, number=wanted).get(_S.SUBMITTING, 0))
    while True:
        with db.transaction() as session:
            rows = store.recipients_with_number(
                session, number=wanted, limit=ERASE_RECIPIENTS_PER_TRANSACTION
            )
            if not rows:
                break
            _refuse_if_submitting(sum(1 for _r, _j, status in rows if status == _S.SUBMITTING))
            ids = [rid for rid, _job, _status in rows]
            job_ids = sorted({job for _rid, job, _status in rows})
            waiting = [rid for rid, _job, status in rows if status in WAITING_STATUSES]
            cancelled = store.cancel_waiting(
                session,
                ids=waiting,
                at=now,
                cause="cancelled: the number was erased on request",
                actor=actor,
            )
            if cancelled != len(waiting):
                # Raised inside the transaction, so nothing of this round is kept.
                _refuse_if_submitting(len(waiting) - cancelled)
            only_theirs = store.jobs_only_to(session, job_ids=job_ids, number=wanted)
            counts = _scrub(
                session,
                recipients=store.recipients_by_id(ids),
                job_ids=job_ids,
                targets=frozenset({wanted}),
                marker=store.ERASED,
            )
            counts.cancelled = cancelled
            counts.jobs = store.remove_job_texts(session, job_ids=only_theirs, now=now)
        total.add(counts)
    with db.transaction() as session:
        store.record_action(
            session,
            actor=actor,
            action="erase",
            target=None,
            detail=asdict(total),
            affected=total.recipients,
        )
    return total


def _refuse_if_submitting(busy: int) -> None:
    # Its HTTP call is out: the reply must find the number it was sent to.
    if busy:
        raise ConflictError(
            f"{busy} recipients with that number are being submitted right now; "
            "run erase again in a minute"
        )
