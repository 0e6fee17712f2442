"""Statuses and states as ``str`` enums, their groups, and the transitions allowed.

Every status a row can hold is named here once, with the groups the rest of the
package asks about (final, pending) and the one table of the moves a recipient
may make (docs/design.md section 3). The database stores them as plain strings.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping


class RecipientStatus(enum.StrEnum):
    """Where one recipient of a job stands."""

    QUEUED = "queued"
    SUBMITTING = "submitting"
    RETRY_WAIT = "retry_wait"
    SENT = "sent"
    FAILED = "failed"
    UNKNOWN = "unknown"
    CANCELLED = "cancelled"
    EXPIRED = "expired"

    @property
    def is_final(self) -> bool:
        """True once nothing automatic will change this recipient again."""
        return self in FINAL_STATUSES


FINAL_STATUSES = frozenset(
    {
        RecipientStatus.SENT,
        RecipientStatus.FAILED,
        RecipientStatus.UNKNOWN,
        RecipientStatus.CANCELLED,
        RecipientStatus.EXPIRED,
    }
)
PENDING_STATUSES = frozenset(set(RecipientStatus) - FINAL_STATUSES)
RETRYABLE_STATUSES = (RecipientStatus.FAILED, RecipientStatus.UNKNOWN)
"""What an operator's explicit, audited retry may send again (``unknown`` only with
the risk of a double send confirmed)."""
WAITING_STATUSES = (RecipientStatus.QUEUED, RecipientStatus.RETRY_WAIT)

JOB_IN_PROGRESS = "in_progress"
JOB_UNRESOLVED = "unresolved"
JOB_COMPLETED = "completed"


def job_state(counts: Mapping[str, int]) -> str:
    """A job's overall status from its recipients counted per status:
    ``in_progress`` while any may still change by itself; ``unresolved`` once none may
    but some are ``unknown``, waiting for an operator to settle or retry them (the
    gateway may or may not have sent them); ``completed`` when every one has an
    outcome."""
    if any(counts.get(str(s), 0) for s in PENDING_STATUSES):
        return JOB_IN_PROGRESS
    if counts.get(str(RecipientStatus.UNKNOWN), 0):
        return JOB_UNRESOLVED
    return JOB_COMPLETED


"""Recipients still to be sent: what a claim takes, what keeps a batch queued, what a
cancel or an expiry may end. (``submitting`` is pending but not waiting: its call runs.)"""

_S = RecipientStatus
RECIPIENT_TRANSITIONS: dict[RecipientStatus, frozenset[RecipientStatus]] = {
    _S.QUEUED: frozenset({_S.SUBMITTING, _S.CANCELLED, _S.EXPIRED, _S.FAILED}),
    _S.SUBMITTING: frozenset({_S.SENT, _S.FAILED, _S.UNKNOWN, _S.RETRY_WAIT, _S.QUEUED}),
    _S.RETRY_WAIT: frozenset({_S.SUBMITTING, _S.CANCELLED, _S.EXPIRED, _S.FAILED}),
    # Only an operator's explicit, audited retry leaves a final failure state...
    _S.FAILED: frozenset({_S.QUEUED}),
    # ...or an operator's settling of an `unknown` one as `sent` or `failed` from the
    # gateway's own records (dispatcher.service.settle), also audited...
    # ...except that the real reply of the very attempt the sweeper gave up on
    # (WORKER_LOST) replaces its guess when it arrives late: the gateway's answer
    # is the truth, and an accepted ID must not be lost. A late reply that is itself
    # ambiguous leaves the recipient unknown, with the reply's cause in place of the
    # guess's.
    _S.UNKNOWN: frozenset({_S.QUEUED, _S.SENT, _S.FAILED, _S.RETRY_WAIT, _S.UNKNOWN}),
    _S.SENT: frozenset(),
    _S.CANCELLED: frozenset(),
    _S.EXPIRED: frozenset(),
}


def can_transition(old: RecipientStatus, new: RecipientStatus) -> bool:
    """Whether a recipient may move from ``old`` to ``new``."""
    return new in RECIPIENT_TRANSITIONS[old]


def check_transitions(olds: Iterable[RecipientStatus], new: RecipientStatus) -> None:
    """Refuse a status change the table above does not allow, from any of ``olds``.

    The store's one function that moves recipients calls it before any SQL is
    built, so a move the design forbids (say ``sent`` back to ``queued``) is a bug
    caught at once, never a row rewritten (docs/design.md section 3).
    """
    forbidden = sorted(str(old) for old in olds if not can_transition(old, new))
    if forbidden:
        raise ValueError(f"recipients may not move from {', '.join(forbidden)} to {new}")


class BatchStatus(enum.StrEnum):
    """Where one batch (the recipients of one submission) stands."""

    QUEUED = "queued"
    """Waiting for ``due_at``: a first send, or a retry after a transient failure."""
    SUBMITTING = "submitting"
    """Claimed by a worker; its HTTP call is in flight or the worker died in it."""
    DONE = "done"
    """Every recipient of the batch is final."""


class AttemptOutcome(enum.StrEnum):
    """How one HTTP attempt ended, as a whole."""

    IN_FLIGHT = "in_flight"
    ACCEPTED = "accepted"
    PARTIAL = "partial"
    TRANSIENT = "transient"
    REJECTED = "rejected"
    AMBIGUOUS = "ambiguous"
    ABANDONED = "abandoned"
    """The worker never came back; the sweeper closed it as unknown."""


class PauseReason(enum.StrEnum):
    """Why dispatch is paused."""

    MANUAL = "manual"
    """An operator paused it."""
    LOGIN_INVALID = "login_invalid"
    """The gateway refused the credentials; only an operator resumes."""
    NO_CREDIT = "no_credit"
    """The account is empty; a balance above the threshold, or an operator, resumes."""


class BreakerState(enum.StrEnum):
    """The circuit breaker that stops dispatch during a gateway outage."""

    CLOSED = "closed"
    """Normal: batches are claimed as they fall due."""
    OPEN = "open"
    """An outage: nothing is claimed until ``breaker_retry_at``."""
    PROBING = "probing"
    """One batch is out as a probe; its result closes or reopens the breaker."""


class Scope(enum.StrEnum):
    """What an API key may do."""

    SEND = "send"
    """Enqueue jobs (the producer API and the drop-in endpoint)."""
    READ = "read"
    """Read jobs, recipients and attempts."""
    OPERATE = "operate"
    """Retry, cancel, pause and resume; the dashboard."""
    BALANCE = "balance"
    """Read the gateway account's balance (the drop-in ``getbalance.aspx``)."""


class DeliveryStatus(enum.StrEnum):
    """Where a completion webhook stands."""

    QUEUED = "queued"
    SENDING = "sending"
    DELIVERED = "delivered"
    FAILED = "failed"
