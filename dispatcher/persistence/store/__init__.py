"""Queries and updates on the audit database, one module per concern.

Every function takes the session keyword-only and never commits: the service
layer owns transactions, so one state change is one commit (docs/design.md,
section 6). Writes are set-based (one statement per group of recipients, history
rows by ``INSERT ... SELECT``) because a batch holds up to 100 recipients and a job
up to many thousands.

- ``enqueue``: a job's id, rows, batches and recipients; idempotency keys.
- ``transitions``: recipient status changes, each with its status event.
- ``claims``: claiming due batches, lane by lane; what is due.
- ``attempts``: the in-flight attempt row of a claimed batch.
- ``replies``: a reply's outcomes recorded, the batch settled.
- ``sweeps``: dead workers' batches, expired batches, overdue retries.
- ``jobs``: reading jobs, listings, counts; ``owned_by``.
- ``control``: the dispatch control row (pause, breaker).
- ``operator``: operator selections, cancelling, the actions' audit.
- ``tenancy``: selections narrowed to what a viewer may see.
- ``keyset``, ``audit``: keyset pagination and the audit export's queries.
- ``privacy``: retention and erasure.

Callers import from here (``from dispatcher.persistence import store``); the names
below are the store's interface.
"""

from __future__ import annotations

from dispatcher.domain.filters import JobFilter
from dispatcher.persistence.store._common import WORKER_LOST
from dispatcher.persistence.store.attempts import complete_attempt, request_json, start_attempt
from dispatcher.persistence.store.audit import (
    AuditSelection,
    audit_claims_query,
    audit_creations_query,
    audit_events_query,
    audit_in_flight_query,
    audit_recipients_query,
    claimed_recipients,
)
from dispatcher.persistence.store.claims import (
    ALL_LANES,
    GATED,
    RACED,
    ClaimedBatch,
    Gated,
    PendingRecipient,
    Raced,
    claim_batch,
    claim_if_open,
    claim_next_batch,
    claim_oldest_due,
    count_due,
    count_due_by_lane,
    due_batches,
    oldest_due_query,
    sendable_recipients,
)
from dispatcher.persistence.store.control import (
    claim_credit_check,
    count_breaker_failure,
    end_pause_for,
    get_control,
    open_breaker,
    reset_failures,
    set_pause,
    take_probe,
    update_control,
)
from dispatcher.persistence.store.enqueue import (
    COPY_MIN_ROWS,
    SMALL_JOB_MAX_ROWS,
    insert_batches,
    insert_job,
    insert_recipients,
    insert_small_job,
    job_by_idempotency_key,
    new_job_id,
    write_job,
    written_in_one_statement,
)
from dispatcher.persistence.store.jobs import (
    get_job,
    job_recipients,
    list_jobs,
    owned_by,
    sample_message_ids,
    status_counts,
    totals,
)
from dispatcher.persistence.store.keyset import AnySelect, KeyColumn, keyset_after, keyset_page
from dispatcher.persistence.store.operator import (
    RecipientFilter,
    RetryCandidate,
    batches_of,
    cancel_waiting,
    count_recipients,
    last_resume_at,
    operator_actions,
    record_action,
    requeue_for_retry,
    retry_candidates,
    select_recipients,
    settle_batch_if_idle,
    settle_unknown,
    unknown_since,
)
from dispatcher.persistence.store.privacy import (
    ERASED,
    MIN_SCRUB_LENGTH,
    NUMBER_MARKERS,
    PURGED,
    AttemptText,
    RecipientScope,
    attempt_texts,
    count_purgeable,
    count_with_number,
    details_naming_their_number,
    events_naming_their_number,
    jobs_only_to,
    purgeable_jobs,
    recipients_by_id,
    recipients_of_jobs,
    recipients_with_number,
    remove_job_texts,
    replace_numbers,
    set_attempt_texts,
    set_error_details,
    set_event_causes,
)
from dispatcher.persistence.store.replies import (
    RECORDABLE,
    OutcomeGroup,
    record_guard,
    record_outcome,
    record_reply,
    settle_batch,
)
from dispatcher.persistence.store.sweeps import (
    abandon_batch,
    expire_batch,
    expired_batches,
    overdue_retries,
    stale_submitting_batches,
)
from dispatcher.persistence.store.tenancy import visible_to
from dispatcher.persistence.store.transitions import record_transitions, status_recheck, transition

__all__ = [
    "ALL_LANES",
    "COPY_MIN_ROWS",
    "ERASED",
    "GATED",
    "MIN_SCRUB_LENGTH",
    "NUMBER_MARKERS",
    "PURGED",
    "RACED",
    "RECORDABLE",
    "SMALL_JOB_MAX_ROWS",
    "WORKER_LOST",
    "AnySelect",
    "AttemptText",
    "AuditSelection",
    "ClaimedBatch",
    "Gated",
    "JobFilter",
    "KeyColumn",
    "OutcomeGroup",
    "PendingRecipient",
    "Raced",
    "RecipientFilter",
    "RecipientScope",
    "RetryCandidate",
    "abandon_batch",
    "attempt_texts",
    "audit_claims_query",
    "audit_creations_query",
    "audit_events_query",
    "audit_in_flight_query",
    "audit_recipients_query",
    "batches_of",
    "cancel_waiting",
    "claim_batch",
    "claim_credit_check",
    "claim_if_open",
    "claim_next_batch",
    "claim_oldest_due",
    "claimed_recipients",
    "complete_attempt",
    "count_breaker_failure",
    "count_due",
    "count_due_by_lane",
    "count_purgeable",
    "count_recipients",
    "count_with_number",
    "details_naming_their_number",
    "due_batches",
    "end_pause_for",
    "events_naming_their_number",
    "expire_batch",
    "expired_batches",
    "get_control",
    "get_job",
    "insert_batches",
    "insert_job",
    "insert_recipients",
    "insert_small_job",
    "job_by_idempotency_key",
    "job_recipients",
    "jobs_only_to",
    "keyset_after",
    "keyset_page",
    "last_resume_at",
    "list_jobs",
    "new_job_id",
    "oldest_due_query",
    "open_breaker",
    "operator_actions",
    "overdue_retries",
    "owned_by",
    "purgeable_jobs",
    "recipients_by_id",
    "recipients_of_jobs",
    "recipients_with_number",
    "record_action",
    "record_guard",
    "record_outcome",
    "record_reply",
    "record_transitions",
    "remove_job_texts",
    "replace_numbers",
    "request_json",
    "requeue_for_retry",
    "reset_failures",
    "retry_candidates",
    "sample_message_ids",
    "select_recipients",
    "sendable_recipients",
    "set_attempt_texts",
    "set_error_details",
    "set_event_causes",
    "set_pause",
    "settle_batch",
    "settle_batch_if_idle",
    "settle_unknown",
    "stale_submitting_batches",
    "start_attempt",
    "status_counts",
    "status_recheck",
    "take_probe",
    "totals",
    "transition",
    "unknown_since",
    "update_control",
    "visible_to",
    "write_job",
    "written_in_one_statement",
]
