"""The exceptions sms-dispatcher raises, one root for all of them.

DispatcherError
├── ConfigurationError          settings that are missing, unsafe or inconsistent
├── ValidationError             a send request refused before anything is written
│   ├── InvalidNumberError        a number that cannot be a phone number
│   ├── NoRecipientsError         no acceptable recipient left
│   ├── TooManyRecipientsError    more numbers than one request may name
│   ├── InvalidTextError          empty text, or more parts than maxconcat allows
│   ├── InvalidSenderError        neither 11 alphanumerics nor 15 digits
│   ├── InvalidOptionError        maxconcat, kind or another option out of range
│   │   └── UnsafeCallbackError     a callback URL that is, or resolves to, no public address
│   ├── SenderNotAllowedError     a sender the API key may not use
│   └── ConfirmationRequiredError an action that may double-send was not confirmed
├── ConflictError               an idempotency key reused for a different request
├── AuthenticationError         no such API key, revoked, or lacking the scope
├── NotFoundError               no job (or other record) with that id
├── InvalidCursorError          a page cursor this dispatcher did not hand out
└── GatewayError                the gateway could not be asked, or its answer says no
    ├── TransientGatewayError     nothing was sent; retrying is safe
    │   └── GatewayConnectError     the connection was never made (failover is safe)
    ├── AmbiguousGatewayError     the request went out; the gateway may have sent it
    │   └── IncompleteReplyError    the reply broke off mid-body; what arrived is kept
    └── PermanentGatewayError     the gateway refused; retrying cannot help

The gateway branch is raised by ``dispatcher.gateway.client`` after it has
translated ``requests`` exceptions, so nothing above the gateway package needs to
know which HTTP library is in use.

``ANSWERS`` is the one table from these exceptions to what a caller is told:
``/v1`` and the dashboard answer with its HTTP status (``/v1`` with its code
too), the drop-in endpoint with its gateway code, ``ERR:<CODE>``
(docs/design.md sections 1 and 5). ``answer_for`` walks an exception's MRO, so
a subclass without a row of its own answers as its parent does.
"""

from __future__ import annotations

from dataclasses import dataclass


class DispatcherError(Exception):
    """Root of every exception sms-dispatcher raises on purpose."""


class ConfigurationError(DispatcherError):
    """Settings are missing, unsafe or contradict each other."""


class SchemaNotCurrentError(ConfigurationError):
    """The database has no schema, or not this version's: ``dispatcher migrate`` it.
    The message names the database looked at (its password masked)."""


class ValidationError(DispatcherError, ValueError):
    """A send request was refused before anything was written."""


class InvalidNumberError(ValidationError):
    """A recipient number cannot be a phone number."""

    def __init__(self, number: str, reason: str) -> None:
        super().__init__(f"invalid number {number!r}: {reason}")
        self.number = number
        self.reason = reason


class NoRecipientsError(ValidationError):
    """No acceptable recipient remains after validation."""


class TooManyRecipientsError(ValidationError):
    """A request names more numbers than ``DISPATCHER_MAX_RECIPIENTS_PER_JOB``."""


class InvalidTextError(ValidationError):
    """The text is empty or needs more parts than maxconcat allows."""


class InvalidSenderError(ValidationError):
    """The sender is neither up to 11 alphanumerics nor up to 15 digits."""


class InvalidOptionError(ValidationError):
    """An option such as maxconcat or kind is out of range."""


class UnsafeCallbackError(InvalidOptionError):
    """A callback URL's host is, or resolves to, an address that is not public."""

    def __init__(self, message: str, *, address: str | None = None) -> None:
        super().__init__(message)
        # For the operator's records, not the producer's message: which address it was.
        self.address = address


class SenderNotAllowedError(ValidationError):
    """The API key is not allowed to send with that sender."""


class ConfirmationRequiredError(ValidationError):
    """Retrying `unknown` recipients may send them twice; the caller must confirm."""


class ConflictError(DispatcherError):
    """An idempotency key was reused with a different request."""


class AuthenticationError(DispatcherError):
    """The credential is unknown, revoked, or lacks the scope the action needs."""


class NotFoundError(DispatcherError, LookupError):
    """No record exists with the given id."""


class InvalidCursorError(DispatcherError, ValueError):
    """A page cursor that no listing of this dispatcher handed out."""


class GatewayError(DispatcherError):
    """The gateway could not be asked, or refused."""

    def __init__(self, message: str, *, host: str | None = None) -> None:
        super().__init__(message)
        self.host = host


class TransientGatewayError(GatewayError):
    """Nothing was sent; the same request may be retried later."""


class GatewayConnectError(TransientGatewayError):
    """No connection was made, so no byte of the request reached the gateway."""


class AmbiguousGatewayError(GatewayError):
    """The request went out and no readable answer came back: it may have been sent."""


class IncompleteReplyError(AmbiguousGatewayError):
    """The reply broke off after its status line: the part that arrived is kept."""

    def __init__(
        self, message: str, *, http_status: int, partial: bytes, host: str | None = None
    ) -> None:
        super().__init__(message, host=host)
        self.http_status = http_status
        self.partial = partial


class PermanentGatewayError(GatewayError):
    """The gateway refused in a way that retrying cannot change."""

    def __init__(self, message: str, *, code: str, host: str | None = None) -> None:
        super().__init__(message, host=host)
        self.code = code


# --- how each is answered --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Answer:
    """How every entry point answers one kind of refusal."""

    status: int
    """The HTTP status of ``/v1`` and of the dashboard."""
    code: str
    """The stable, machine-readable code of ``/v1``'s error body."""
    gateway_code: str
    """What the drop-in endpoint answers, ``ERR:<gateway_code>`` in the gateway's own
    format (docs/design.md section 1): the gateway has no code of its own for most of
    these, and calls them all a request that was not valid."""


ANSWERS: dict[type[DispatcherError], Answer] = {
    # Only what has no row nearer: the server's own fault, never the caller's.
    DispatcherError: Answer(500, "internal_error", "INTERNAL_ERROR"),
    ConfigurationError: Answer(500, "internal_error", "INTERNAL_ERROR"),
    ValidationError: Answer(422, "invalid_request", "INVALID_REQUEST"),
    InvalidNumberError: Answer(422, "invalid_number", "INVALID_NUMBER"),
    NoRecipientsError: Answer(422, "no_recipients", "INVALID_NUMBER"),
    TooManyRecipientsError: Answer(422, "too_many_recipients", "INVALID_REQUEST"),
    InvalidTextError: Answer(422, "invalid_text", "INVALID_REQUEST"),
    InvalidSenderError: Answer(422, "invalid_sender", "INVALID_REQUEST"),
    InvalidOptionError: Answer(422, "invalid_option", "INVALID_REQUEST"),
    SenderNotAllowedError: Answer(403, "sender_not_allowed", "INVALID_REQUEST"),
    ConfirmationRequiredError: Answer(409, "confirmation_required", "INVALID_REQUEST"),
    ConflictError: Answer(409, "idempotency_conflict", "INVALID_REQUEST"),
    AuthenticationError: Answer(401, "unauthorized", "LOGIN_INVALID"),
    NotFoundError: Answer(404, "not_found", "INVALID_REQUEST"),
    InvalidCursorError: Answer(400, "invalid_cursor", "INVALID_REQUEST"),
    # The gateway's own trouble: nothing of the caller's request was wrong.
    GatewayError: Answer(502, "gateway_error", "GATEWAY_ERROR"),
    # Our account refused: the caller's credentials were fine, so not LOGIN_INVALID.
    PermanentGatewayError: Answer(502, "gateway_error", "INTERNAL_ERROR"),
}


def answer_for(exc: DispatcherError | type[DispatcherError]) -> Answer:
    """The row of ``exc`` (an exception or its class): its own, else its nearest
    ancestor's in the MRO; every DispatcherError has one, the root's at least."""
    cls = exc if isinstance(exc, type) else type(exc)
    for ancestor in cls.__mro__:
        if ancestor in ANSWERS:
            return ANSWERS[ancestor]
    raise TypeError(f"{cls.__name__} is not a DispatcherError")


class NoWorkerWarning(UserWarning):
    """A job was queued in a lane no live worker consumes: it waits until one does."""
