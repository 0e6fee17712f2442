"""The JSON bodies of the HTTP API: one pydantic model per request and per response.

Request models forbid unknown fields and take JSON types strictly (``"5"`` is
not a number), so a typo in a field name is a 422 rather than an option quietly
ignored. What the service checks itself (numbers, text length, sender, kind)
is left to it, so the API and ``send()`` refuse the same things with the same
words.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from dispatcher.domain.lanes import Priority
from dispatcher.domain.parts import MAXCONCAT_MAX, MAXCONCAT_MIN
from dispatcher.domain.times import parse_time, to_utc
from dispatcher.errors import InvalidOptionError
from dispatcher.service.dispatcher import MAX_LABEL_LENGTH

# The callback URL column's width.
MAX_CALLBACK_URL_LENGTH = 2000


def _time_reader(field: str, *, assume_utc: bool) -> BeforeValidator:
    """The one reader of user times (``dispatcher.domain.times``) for a field of the
    API: ISO 8601 text or a datetime, put in UTC; pydantic's own reading (which also
    takes epoch numbers) never runs on it."""

    def read(value: object) -> object:
        if value is None:
            return None
        if isinstance(value, str):
            return parse_time(value, field, assume_utc=assume_utc)
        if isinstance(value, dt.datetime):
            return to_utc(value, field, assume_utc=assume_utc)
        raise InvalidOptionError(f"{field} must be an ISO 8601 time, not {type(value).__name__}")

    return BeforeValidator(read)


SendTime = Annotated[dt.datetime | None, _time_reader("send_at", assume_utc=False)]
"""``send_at``: a time without an offset is refused (guessing the zone sends hours off)."""
FilterTime = Annotated[dt.datetime | None, _time_reader("the time", assume_utc=True)]
"""A filter's bound: a time without an offset is read as UTC."""


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _Response(BaseModel):
    model_config = ConfigDict(extra="ignore")


def _printable(value: str, what: str) -> str:
    # PostgreSQL text cannot hold NUL, and control characters in a stored number or
    # label only ever mean a broken client; refuse them before the service sees them.
    if not value.isprintable():
        raise ValueError(f"{what} must not contain control characters")
    return value


class JobCreate(_Request):
    """``POST /v1/jobs``: a text for one or more numbers."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [
                {"to": ["+44 7700 900123", "07700 900456"], "text": "Your code is 123456"},
                {"to": "447700900123", "text": "Hello", "sender": "Acme", "reference": "o-17"},
            ]
        },
    )

    to: list[str] | str = Field(
        description="Numbers in any common format: a list, or one string of "
        "comma-separated numbers. Numbers that cannot be phone numbers are recorded "
        "as failed (INVALID_NUMBER) beside the others.",
        examples=[["+44 7700 900123", "07700 900456"]],
    )
    text: str = Field(description="The message; at most `maxconcat` parts.")
    sender: str | None = Field(
        default=None, description="Up to 11 letters, digits or spaces, or up to 15 digits."
    )
    maxconcat: int = Field(
        default=1,
        ge=MAXCONCAT_MIN,
        le=MAXCONCAT_MAX,
        description="Most concatenated parts per recipient.",
    )
    kind: Literal["text", "voice"] = Field(
        default="text", description="`voice`: the gateway reads the text out (type=6)."
    )
    send_at: SendTime = Field(
        default=None,
        description="Send at this time, ISO 8601 with an offset (`2026-11-24T09:00:00+01:00`, "
        "`...Z`); a time without one is refused. Until then the job waits and can be "
        "cancelled.",
    )
    # Not strict, as send_at: the decoded body holds the lane's name, not the enum.
    priority: Priority = Field(
        default=Priority.NORMAL,
        strict=False,
        description="Lane: `high` (one-time passwords) is claimed before `normal`, "
        "`normal` before `bulk`.",
    )
    valid_for_s: float | None = Field(
        default=None,
        gt=0,
        description="Seconds after its send time that the message may still go out; "
        "recipients unsent by then end `expired`. Default: the server's "
        "DISPATCHER_DEFAULT_VALIDITY_S (none).",
    )
    reference: str | None = Field(
        default=None,
        max_length=MAX_LABEL_LENGTH,
        description="Your own label for the job; `GET /v1/jobs?reference=` finds it.",
    )
    callback_url: str | None = Field(
        default=None,
        max_length=MAX_CALLBACK_URL_LENGTH,
        description="An http(s) URL to notify of outcomes.",
    )

    @field_validator("to")
    @classmethod
    def _numbers_printable(cls, value: list[str] | str) -> list[str] | str:
        items = [value] if isinstance(value, str) else value
        for item in items:
            _printable(item, "a number")
        return value

    @field_validator("reference")
    @classmethod
    def _reference_printable(cls, value: str | None) -> str | None:
        return None if value is None else _printable(value, "reference")

    @field_validator("callback_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        _printable(value, "callback_url")
        try:
            parts = urlsplit(value)
            valid = parts.scheme in ("http", "https") and bool(parts.hostname)
        except ValueError:
            valid = False
        if not valid or any(ch.isspace() for ch in value):
            raise ValueError("callback_url must be an http(s) URL with a host")
        return value


class RefusedNumber(_Response):
    """A number refused at enqueue, as given, and why."""

    number: str
    reason: str


class JobCreated(_Response):
    """What ``POST /v1/jobs`` wrote (or, replayed, what the first request wrote)."""

    id: str = Field(description="The job id: 26 characters, time-ordered.")
    status: str = Field(
        description="`in_progress` until every recipient is final; then `unresolved` while "
        "some are `unknown` (an operator settles or retries them), else `completed`."
    )
    accepted: int = Field(description="Recipients queued (distinct, international form).")
    refused: list[RefusedNumber]
    parts: int = Field(description="SMS parts per recipient.")
    credits: int = Field(description="Estimated credits: parts x accepted recipients.")
    batches: int = Field(description="Gateway submissions of up to 100 recipients.")
    replayed: bool = Field(
        default=False,
        description="True when an Idempotency-Key matched an earlier request: nothing new "
        "was written and nothing will be sent again.",
    )
    priority: str = Field(default="normal", description="`high`, `normal` or `bulk`.")
    send_at: str | None = Field(default=None, description="When it is due (UTC), if scheduled.")
    expires_at: str | None = Field(
        default=None, description="When unsent recipients expire (UTC), if ever."
    )


class RecipientView(_Response):
    """One recipient of a job."""

    number: str = Field(description="International digits, or the input as given if refused.")
    status: str = Field(
        description="queued, submitting, retry_wait; then sent, failed, unknown, cancelled "
        "or expired."
    )
    gateway_message_id: str | None
    error_code: str | None
    error_detail: str | None = None
    attempts: int
    next_attempt_at: str | None = None
    updated_at: str | None = None


class JobView(_Response):
    """``GET /v1/jobs/{id}``: a job and each recipient's outcome (docs/design.md section 5)."""

    id: str
    status: str
    created_at: str
    kind: str
    sender: str | None
    maxconcat: int
    parts: int
    credits: int = Field(description="Estimated credits: parts x recipients queued.")
    encoding: str
    reference: str | None = Field(description="The producer's own label, if it gave one.")
    priority: str = Field(description="`high`, `normal` or `bulk`.")
    send_at: str | None = Field(description="When it was scheduled for (UTC), if it was.")
    expires_at: str | None = Field(description="When unsent recipients expire (UTC), if ever.")
    created_by: str = Field(description="Who enqueued it: `api:<key>`, `dropin:<key>`, ...")
    counts: dict[str, int] = Field(description="Recipients per status.")
    recipients: list[RecipientView]


class JobSummary(_Response):
    """A job in a list: its recipients counted per status."""

    id: str
    created_at: str
    status: str
    reference: str | None
    priority: str
    send_at: str | None
    recipients: int
    parts: int
    credits: int
    counts: dict[str, int]


class JobPage(_Response):
    """``GET /v1/jobs``: newest first; pass ``next_cursor`` as ``cursor`` for more."""

    jobs: list[JobSummary]
    next_cursor: str | None = Field(description="Null on the last page.")


RetryStatus = Literal["failed", "unknown"]
_FAILED: RetryStatus = "failed"


class RetryRequest(_Request):
    """``POST /v1/jobs/{id}/retry``: which of the job's recipients to queue again."""

    statuses: list[RetryStatus] = Field(
        default_factory=lambda: [_FAILED],
        min_length=1,
        description="`unknown` recipients may already have been sent by the gateway: "
        "retrying them needs `confirm_unknown`.",
    )
    confirm_unknown: bool = Field(
        default=False,
        description="Accept that retrying `unknown` recipients may send them twice.",
    )
    error_code: str | None = Field(
        default=None,
        max_length=64,
        description="Only recipients that failed with this code. Naming a code also "
        "retries recipients that failed with it for good (`INVALID_NUMBER`, "
        "`INVALID_REQUEST`, `NO_*`, `LOGIN_INVALID` before a resume), which are left "
        "out otherwise.",
    )
    valid_for_s: float | None = Field(
        default=None,
        ge=1,
        le=30 * 86400,
        description="A new validity, from now, for the recipients retried; without it "
        "those whose job's validity has ended are left out.",
    )
    dry_run: bool = Field(
        default=False, description="Queue nothing; answer what would go and what would not."
    )

    @field_validator("error_code")
    @classmethod
    def _code_printable(cls, value: str | None) -> str | None:
        return None if value is None else _printable(value, "error_code")


class RetryListed(_Response):
    """A recipient in a retry's answer."""

    number: str
    job_id: str
    status: str
    error_code: str | None
    changed_at: str
    age_s: float = Field(description="How long it has stood in its status.")
    attempts: int


class HeldBackGroup(_Response):
    """Recipients a retry left where they are, for one reason."""

    count: int
    why: str
    sample: list[RetryListed] = Field(description="The first 20.")


class RetryResult(_Response):
    """What a retry queued again (or, with ``dry_run``, would), and what it left."""

    retried: int
    jobs: list[str]
    dry_run: bool = False
    sample: list[RetryListed] = Field(
        default_factory=list, description="The first 20 of those queued (or that would be)."
    )
    held_back: dict[str, HeldBackGroup] = Field(
        default_factory=dict,
        description="By reason: `permanent`, `credentials_unchanged`, `unknown_unconfirmed`, "
        "`validity_ended`.",
    )


class SettleRequest(_Request):
    """``POST /v1/jobs/{id}/settle``: what the gateway's own records say became of the
    job's `unknown` recipients."""

    status: Literal["sent", "failed"] = Field(description="What became of them.")
    reason: str = Field(min_length=1, max_length=400, description="The evidence (audited).")
    numbers: list[str] | None = Field(
        default=None,
        max_length=10_000,
        description="Only these recipients (any format); default: every unknown one.",
    )
    gateway_message_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=2000,
        description="The gateway's message ID, for one recipient settled as sent.",
    )

    @field_validator("reason", "gateway_message_id")
    @classmethod
    def _text_printable(cls, value: str | None) -> str | None:
        return None if value is None else _printable(value, "the field")


class SettleResult(_Response):
    """What a settle moved."""

    settled: int = Field(description="Recipients that were `unknown`, now `sent` or `failed`.")
    job: str
    status: str


class CancelResult(_Response):
    """What a cancel stopped."""

    cancelled: int = Field(description="Recipients no worker had claimed, now `cancelled`.")
    job: str


class Health(_Response):
    """``GET /healthz``: each dependency ``ok`` or what is wrong with it."""

    database: str
    broker: str


class ErrorDetail(_Response):
    """Why a request was refused."""

    code: str = Field(description="Stable, machine-readable: `not_found`, `invalid_text`, ...")
    message: str = Field(description="For people.")
    details: list[dict[str, object]] | None = Field(
        default=None, description="Per-field problems of a request that failed validation."
    )


class ErrorBody(_Response):
    """Every 4xx and 5xx answer of ``/v1``."""

    error: ErrorDetail
