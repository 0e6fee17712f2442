"""The audit database: jobs, their recipients and batches, every attempt and status change.

The database is the schedule (docs/design.md section 3): a batch's ``status`` and ``due_at``
say when it is sent, and a broker message only wakes a worker to look.

Statuses are the ``str`` enums of ``dispatcher.domain.statuses``: the columns are
typed by them (``StatusText``, read back as the enum, refused on write if not one of
its values) and stored as plain strings (no database enum type, so adding a status
is a data change, not a schema fight).
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    BigInteger,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    and_,
    case,
    select,
    type_coerce,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, column_property, mapped_column

from dispatcher.domain.statuses import (
    WAITING_STATUSES,
    AttemptOutcome,
    BatchStatus,
    BreakerState,
    DeliveryStatus,
    RecipientStatus,
    Scope,
)
from dispatcher.domain.times import utcnow
from dispatcher.persistence.dialect import id_type, partial_index
from dispatcher.persistence.types import StatusText, UTCDateTime

# Constraint names that Alembic can find again on every database.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base with stable constraint names."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dt.datetime: UTCDateTime()}


ID = id_type()


class Job(Base):
    """One send request: a text and the recipients it goes to."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(26), primary_key=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    text: Mapped[str] = mapped_column(Text)
    sender: Mapped[str | None] = mapped_column(String(15))
    kind: Mapped[str] = mapped_column(String(8), default="text")
    maxconcat: Mapped[int] = mapped_column(Integer, default=1)
    parts: Mapped[int] = mapped_column(Integer)
    encoding: Mapped[str] = mapped_column(String(8))
    recipient_count: Mapped[int] = mapped_column(Integer)
    refused_count: Mapped[int] = mapped_column(Integer, default=0)
    created_by: Mapped[str] = mapped_column(String(200), default="python")
    """Who enqueued it: ``python``, ``cli``, ``api:<key name>`` or ``dropin:<key name>``."""
    owner_key_id: Mapped[int | None] = mapped_column(Integer)
    """The ``api_keys.id`` of the key that enqueued it (``/v1`` or drop-in); None for
    Python, the CLI and the dashboard. A key without the operate scope sees only the
    jobs it owns (docs/design.md section 3), so ownership is the key's id, never its name."""
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    """SHA-256 of the request, to tell a replay from a different request under one key."""
    reference: Mapped[str | None] = mapped_column(String(200))
    """The producer's own reference, searchable."""
    callback_url: Mapped[str | None] = mapped_column(String(2000))
    callback_state: Mapped[str | None] = mapped_column(String(10))
    """``waiting`` until every recipient is final, then ``queued`` (a delivery exists)."""
    send_at: Mapped[dt.datetime | None]
    """When the producer asked for it to go; None means at once."""
    priority: Mapped[str] = mapped_column(String(8), default="normal", server_default="normal")
    """``high``, ``normal`` or ``bulk``: which lane its batches are claimed in."""
    expires_at: Mapped[dt.datetime | None]
    """After this, recipients still unsent end ``expired`` instead of going late."""
    purged_at: Mapped[dt.datetime | None]
    """When retention removed its text and numbers (the counts stay)."""
    creation_implied: Mapped[bool | None]
    """True: its accepted recipients' first status event (``queued``, ``enqueued``, by
    its creator, at its creation) is read from their rows, not written
    (docs/design.md section 3); None on jobs written before, whose events are rows."""

    __table_args__ = (
        Index(None, "created_at"),
        Index(None, "reference"),
        # A producer key's own listing, newest first (``GET /v1/jobs``).
        Index(None, "owner_key_id", "id"),
        # The sweeper looks for finished jobs among the few still waiting to notify.
        Index(
            "ix_jobs_callback_waiting",
            "created_at",
            **partial_index("callback_state = 'waiting'"),
        ),
        # Retention walks only the jobs it has not purged yet, oldest first.
        Index(
            "ix_jobs_unpurged",
            "created_at",
            **partial_index("purged_at IS NULL"),
        ),
        # Unique per key holder; NULL keys (no idempotency asked) never collide.
        UniqueConstraint("created_by", "idempotency_key"),
    )


class Batch(Base):
    """The recipients of one submission, and when it is due."""

    __tablename__ = "batches"

    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    # No foreign keys on the dispatch path's tables (docs/design.md, "Integrity
    # without foreign keys"): written with the job, and never deleted.
    job_id: Mapped[str] = mapped_column(String(26))
    status: Mapped[BatchStatus] = mapped_column(
        StatusText(BatchStatus, 12), default=BatchStatus.QUEUED
    )
    due_at: Mapped[dt.datetime]
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    claimed_at: Mapped[dt.datetime | None]
    claimed_by: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    lane: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    """The job's priority as a claim order: 0 high, 1 normal, 2 bulk."""
    expires_at: Mapped[dt.datetime | None]
    """The job's expiry, copied so the claim needs no join."""

    __table_args__ = (
        Index(None, "job_id"),
        # The claim query and the sweeper read only these rows; partial indexes stay
        # small however much history the table holds. The claim probes one lane at a
        # time, so scheduled work far in the future never stands before due work.
        Index(
            "ix_batches_due",
            "lane",
            "due_at",
            **partial_index("status = 'queued'"),
        ),
        # The sweeper expires waiting batches past their validity, however far ahead
        # they were scheduled.
        Index(
            "ix_batches_expiring",
            "expires_at",
            **partial_index("status = 'queued' AND expires_at IS NOT NULL"),
        ),
        Index(
            "ix_batches_submitting",
            "claimed_at",
            **partial_index("status = 'submitting'"),
        ),
    )


class Recipient(Base):
    """One number of a job, its status, and the gateway's message ID once accepted."""

    __tablename__ = "recipients"

    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(26))
    batch_id: Mapped[int | None] = mapped_column(ID)
    number: Mapped[str] = mapped_column(String(32))
    """International digits, or the input as given when it was refused."""
    stored_status: Mapped[RecipientStatus] = mapped_column(
        "status", StatusText(RecipientStatus, 12)
    )
    """The status as written: never ``submitting`` (see ``status``); writers use this."""
    gateway_message_id: Mapped[str | None] = mapped_column(Text)
    """Exactly as the gateway sent it, however long: an accepted ID is never cut."""
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_detail: Mapped[str | None] = mapped_column(String(500))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    """HTTP submissions that counted, across every retry (never reset)."""
    attempts_base: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    """``attempts`` when an operator last retried it: ``DISPATCHER_MAX_ATTEMPTS`` limits
    the attempts made since (``dispatcher.domain.retries``)."""
    next_attempt_at: Mapped[dt.datetime | None]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    status: Mapped[RecipientStatus] = column_property(
        type_coerce(
            case(
                (
                    and_(
                        stored_status.in_([str(s) for s in WAITING_STATUSES]),
                        batch_id.in_(
                            select(Batch.id).where(Batch.status == str(BatchStatus.SUBMITTING))
                        ),
                    ),
                    str(RecipientStatus.SUBMITTING),
                ),
                else_=stored_status,
            ),
            StatusText(RecipientStatus, 12),
        )
    )
    """The status every reader shows: ``submitting`` while its batch is in flight.

    The claim is recorded per submission (docs/design.md section 3): a recipient
    waiting in a batch that a worker has claimed keeps its stored ``queued`` or
    ``retry_wait`` and reads as ``submitting`` through its batch. Read-only: filter
    with ``dispatcher.persistence.shown.status_in``, which lets an index serve. The
    batch ids come from an uncorrelated subquery on the small ``submitting`` index,
    so a scan of many recipients looks them up in one hashed set, not once per row."""

    __table_args__ = (
        Index(None, "job_id"),
        Index(None, "batch_id"),
        Index(None, "number", "created_at"),
        # Hash, not B-tree, on PostgreSQL: the search is by equality, and a B-tree
        # entry over about 2.7 kB would make recording a long ID fail.
        Index(None, "gateway_message_id", postgresql_using="hash"),
        # Only the statuses operators open lists of (retries due, failures, unknowns);
        # queued and sent rows, nearly all of them, never enter it.
        Index(
            "ix_recipients_attention",
            "status",
            "updated_at",
            **partial_index("status IN ('retry_wait', 'failed', 'unknown')"),
        ),
    )


class Attempt(Base):
    """One HTTP submission: written as in flight before the call, completed after."""

    __tablename__ = "attempts"

    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    batch_id: Mapped[int] = mapped_column(ID)
    job_id: Mapped[str] = mapped_column(String(26))
    attempt_no: Mapped[int] = mapped_column(Integer)
    numbers: Mapped[str] = mapped_column(Text)
    """The numbers submitted, comma-separated, in submission order."""
    request: Mapped[str | None] = mapped_column(Text)
    """The form sent, password masked and message text left out, as JSON."""
    started_at: Mapped[dt.datetime]
    finished_at: Mapped[dt.datetime | None]
    host: Mapped[str | None] = mapped_column(String(255))
    http_status: Mapped[int | None] = mapped_column(Integer)
    raw_reply: Mapped[str | None] = mapped_column(Text)
    latency_ms: Mapped[float | None] = mapped_column(Float)
    outcome: Mapped[AttemptOutcome] = mapped_column(
        StatusText(AttemptOutcome, 16), default=AttemptOutcome.IN_FLIGHT
    )
    error: Mapped[str | None] = mapped_column(String(500))
    worker: Mapped[str | None] = mapped_column(String(200))
    claimed: Mapped[str | None] = mapped_column(Text)
    """The recipients this submission carries and the status each had before it, as
    JSON ``[[id, status], ...]`` in submission order: the claim recorded once per
    submission instead of a row per recipient (docs/design.md section 3). None on
    attempts made before it was kept; their claims are status events."""

    __table_args__ = (
        Index(None, "batch_id"),
        Index(None, "job_id"),
        Index(None, "started_at"),
        # The rollup reads attempts by when they finished, however long they took.
        Index(None, "finished_at"),
    )


class StatusEvent(Base):
    """Append-only history: one row per status change of a recipient."""

    __tablename__ = "status_events"

    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    # No foreign keys, on purpose (docs/design.md, "Integrity without foreign keys"):
    # every event is written by the statement that moves its recipient, from the rows
    # that statement has just locked. Checking three keys per event cost PostgreSQL a
    # third of its CPU on the bulk benchmark (issue 7).
    recipient_id: Mapped[int] = mapped_column(ID)
    job_id: Mapped[str] = mapped_column(String(26))
    at: Mapped[dt.datetime]
    from_status: Mapped[RecipientStatus | None] = mapped_column(StatusText(RecipientStatus, 12))
    to_status: Mapped[RecipientStatus] = mapped_column(StatusText(RecipientStatus, 12))
    cause: Mapped[str] = mapped_column(String(500))
    actor: Mapped[str] = mapped_column(String(200))
    attempt_id: Mapped[int | None] = mapped_column(ID)
    error_code: Mapped[str | None] = mapped_column(String(64))
    """The recipient's error code as it moved (the one it took, or kept): what the
    error-code counters count, however the recipient changes later."""

    __table_args__ = (
        Index(None, "recipient_id", "at"),
        Index(None, "job_id"),
        Index(None, "at"),
    )


CONTROL_ROW_ID = 1


class DispatchControl(Base):
    """The one row every worker reads before claiming: paused or not, and the breaker.

    It lives in the database so a pause survives restarts and binds every worker
    on every host at once.
    """

    __tablename__ = "dispatch_control"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    paused: Mapped[bool] = mapped_column(default=False)
    pause_reason: Mapped[str | None] = mapped_column(String(20))
    pause_detail: Mapped[str | None] = mapped_column(String(500))
    paused_at: Mapped[dt.datetime | None]
    paused_by: Mapped[str | None] = mapped_column(String(200))
    breaker_state: Mapped[BreakerState] = mapped_column(
        StatusText(BreakerState, 10), default=BreakerState.CLOSED
    )
    breaker_failures: Mapped[int] = mapped_column(Integer, default=0)
    """Whole submissions in a row that failed transiently."""
    breaker_trips: Mapped[int] = mapped_column(Integer, default=0)
    """Failed probes in a row; lengthens the wait before the next one."""
    breaker_opened_at: Mapped[dt.datetime | None]
    breaker_retry_at: Mapped[dt.datetime | None]
    credit_checked_at: Mapped[dt.datetime | None]
    last_balance: Mapped[float | None] = mapped_column(Float)
    unknown_acknowledged_at: Mapped[dt.datetime | None]
    """An operator has seen the recipients that became `unknown` before this: the
    UnknownRecipients alert counts only later ones (docs/operating.md, "Settle")."""
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class ApiKey(Base):
    """A credential for the HTTP API; only the SHA-256 of its token is kept."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[str] = mapped_column(String(100))
    """Comma-separated Scope values."""
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(200))
    revoked_at: Mapped[dt.datetime | None]
    allowed_senders: Mapped[str | None] = mapped_column(String(1000))
    """Comma-separated sender IDs this key may use; None allows any valid sender."""

    @property
    def scope_set(self) -> frozenset[Scope]:
        """The key's scopes."""
        return frozenset(Scope(s) for s in self.scopes.split(",") if s)


class OperatorAction(Base):
    """Append-only audit of what operators did: retry, cancel, pause, keys, ..."""

    __tablename__ = "operator_actions"

    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(40))
    target: Mapped[str | None] = mapped_column(String(200))
    detail: Mapped[str | None] = mapped_column(Text)
    """JSON: the request's parameters (never message text or secrets)."""
    affected: Mapped[int] = mapped_column(Integer, default=0)

    __table_args__ = (Index(None, "at"), Index(None, "target"))


class WebhookDelivery(Base):
    """The completion notice of one job to its callback URL."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), unique=True)
    url: Mapped[str] = mapped_column(String(2000))
    status: Mapped[DeliveryStatus] = mapped_column(
        StatusText(DeliveryStatus, 10), default=DeliveryStatus.QUEUED
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    due_at: Mapped[dt.datetime]
    claimed_at: Mapped[dt.datetime | None]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        Index(
            "ix_webhook_deliveries_due",
            "due_at",
            **partial_index("status = 'queued'"),
        ),
    )


class WebhookAttempt(Base):
    """One HTTP try of a webhook delivery, for the audit."""

    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    delivery_id: Mapped[int] = mapped_column(
        ForeignKey("webhook_deliveries.id", ondelete="CASCADE")
    )
    at: Mapped[dt.datetime]
    http_status: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(String(500))
    latency_ms: Mapped[float | None] = mapped_column(Float)

    __table_args__ = (Index(None, "delivery_id"),)


class WorkerHeartbeat(Base):
    """A worker's liveness: written by the worker itself each time it consumes or idles.

    A heartbeat proves the process runs and reaches the database; ``consumed_at``
    proves it takes wake-ups off the broker.
    """

    __tablename__ = "worker_heartbeats"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    queues: Mapped[str] = mapped_column(String(200))
    started_at: Mapped[dt.datetime]
    seen_at: Mapped[dt.datetime]
    consumed_at: Mapped[dt.datetime | None]
    batches: Mapped[int] = mapped_column(BigInteger, default=0)
    """Batches this worker submitted since it started."""
    state: Mapped[str] = mapped_column(String(12), default="running")
    """``running`` or ``stopped`` (a clean shutdown)."""


class StatsMinute(Base):
    """Periodic rollups: one value per minute, metric and label (for charts and metrics).

    Written only by the rollup step, which recomputes recent minutes whole, so no
    worker ever updates a shared counter row.
    """

    __tablename__ = "stats_minutes"

    bucket_at: Mapped[dt.datetime] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    label: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[float] = mapped_column(Float)

    __table_args__ = (Index(None, "name", "bucket_at"),)


class StatusCount(Base):
    """How many recipients stand in each status, as of the last rollup."""

    __tablename__ = "status_counts"

    status: Mapped[RecipientStatus] = mapped_column(
        StatusText(RecipientStatus, 12), primary_key=True
    )
    recipients: Mapped[int] = mapped_column(BigInteger)
    computed_at: Mapped[dt.datetime]
