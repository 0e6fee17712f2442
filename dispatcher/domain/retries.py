"""What an operator's retry sends again by default, and why it leaves the rest.

A retry that resends what cannot succeed spends credit and an operator's trust for
nothing: a number the gateway cannot route fails again, a request it calls invalid
is refused again. So a retry selects, by default, only recipients that can succeed
(docs/operating.md, "Retry"):

- ``failed`` after transient errors (``GATEWAY_ERROR``, ``INTERNAL_ERROR``, HTTP 408,
  429 or 503, a refused connection, the retry-age limit): they go;
- ``failed`` for good (``INVALID_NUMBER``, ``INVALID_REQUEST``, ``NO_*``, another 3xx
  or 4xx answer, a code the gateway never documented): held back unless the
  operator names the code (``--error-code``);
- ``LOGIN_INVALID``: held back while the credentials that got it may still be in
  use, that is until an operator resumed dispatch after it failed (dispatch pauses on
  ``LOGIN_INVALID`` and only an operator resumes, having fixed them); named, it goes;
- ``unknown``: the gateway may have sent them, so they go only when confirmed;
- a job's validity (``valid_for_s``) that has ended: held back unless the operator
  gives a new one, since a late one-time password is worse than none;
- numbers refused at enqueue, or removed by retention or erasure: never.

A recipient's attempts are counted across retries; the retry gives it a fresh
allowance of ``DISPATCHER_MAX_ATTEMPTS`` from where its count stands.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass

from dispatcher.domain.statuses import RecipientStatus

TRANSIENT_FAILURE_CODES = frozenset(
    {
        "GATEWAY_ERROR",
        "INTERNAL_ERROR",
        "HTTP_408",
        "HTTP_429",
        "HTTP_503",
        "CONNECT_FAILED",
        "RETRY_AGE_EXCEEDED",
    }
)
"""Codes a recipient fails with when nothing was sent and the same request may
succeed later (docs/design.md section 2)."""

CREDENTIALS_CODE = "LOGIN_INVALID"


class HeldBack(enum.StrEnum):
    """Why a recipient a retry's filter selected stays where it is."""

    PERMANENT = "permanent"
    """Failed for good; goes only when its code is named."""
    CREDENTIALS = "credentials_unchanged"
    """LOGIN_INVALID since the last resume; goes only when its code is named."""
    UNCONFIRMED = "unknown_unconfirmed"
    """``unknown``: may have been sent already; goes only when confirmed."""
    EXPIRED = "validity_ended"
    """Its job's validity has ended; goes only with a new validity."""

    def explain(self) -> str:
        """What an operator reads beside the count."""
        return _EXPLAIN[self]


_EXPLAIN = {
    HeldBack.PERMANENT: "failed for good (the same request would fail again); name the "
    "error code to retry them anyway",
    HeldBack.CREDENTIALS: "LOGIN_INVALID with the credentials still unchanged (no resume "
    "since); fix them and resume, or name the code",
    HeldBack.UNCONFIRMED: "unknown: the gateway may already have sent them; confirm to "
    "risk sending them twice",
    HeldBack.EXPIRED: "their job's validity has ended; give a new validity to send them",
}


def permanent(code: str | None) -> bool:
    """Whether a ``failed`` recipient's code says the same request would fail again."""
    if code is None or code in TRANSIENT_FAILURE_CODES:
        return False
    return code != CREDENTIALS_CODE


@dataclass(frozen=True, slots=True)
class RetryRules:
    """What one retry was told, against which each recipient is judged."""

    now: dt.datetime
    named_code: str | None = None
    """The error code the operator named, if any: recipients with it go whatever it is."""
    confirm_unknown: bool = False
    new_validity: bool = False
    """A new validity was given: recipients of expired jobs go, valid from now."""
    resumed_at: dt.datetime | None = None
    """When an operator last resumed dispatch; None if never."""
    credentials_paused: bool = False
    """Dispatch is paused now for LOGIN_INVALID: the credentials are still wrong."""

    def verdict(
        self,
        *,
        status: RecipientStatus | str,
        error_code: str | None,
        changed_at: dt.datetime,
        expires_at: dt.datetime | None,
    ) -> HeldBack | None:
        """None when the recipient goes, else why it stays."""
        # An ended validity first: confirming an unknown one would not send it anyway.
        if expires_at is not None and expires_at <= self.now and not self.new_validity:
            return HeldBack.EXPIRED
        if status == RecipientStatus.UNKNOWN and not self.confirm_unknown:
            return HeldBack.UNCONFIRMED
        if status != RecipientStatus.FAILED or (
            self.named_code is not None and error_code == self.named_code
        ):
            return None
        if error_code == CREDENTIALS_CODE:
            fixed = self.resumed_at is not None and self.resumed_at > changed_at
            return None if fixed and not self.credentials_paused else HeldBack.CREDENTIALS
        return HeldBack.PERMANENT if permanent(error_code) else None
