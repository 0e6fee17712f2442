"""``/v1``: the producer and operator API, JSON over bearer API keys (docs/design.md section 5).

Routes are thin: check the caller, call the service, shape the answer. Every
refusal is translated in ``dispatcher.api.errors``. The service calls block on
the database, so the routes are plain functions, which FastAPI runs in its
thread pool.

Who sees what (``dispatcher.tenancy``): a key without the ``operate`` scope sees
and acts on only the jobs it enqueued (here or through the drop-in endpoint);
another key's job is a 404 exactly like a job that does not exist. A key with
``operate`` sees every job. Each route passes the key's viewer to the service,
which narrows the query; no route checks ownership itself.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Header, Path, Query, Request, Response
from fastapi.responses import StreamingResponse

from dispatcher.api.auth import require
from dispatcher.api.queries import (
    decode_cursor,
    encode_cursor,
    is_job_id,
    job_status,
)
from dispatcher.api.schemas import (
    CancelResult,
    ErrorBody,
    FilterTime,
    HeldBackGroup,
    JobCreate,
    JobCreated,
    JobPage,
    JobSummary,
    JobView,
    RefusedNumber,
    RetryListed,
    RetryRequest,
    RetryResult,
    SettleRequest,
    SettleResult,
)
from dispatcher.domain.filters import JobFilter
from dispatcher.domain.numbers import normalise
from dispatcher.domain.statuses import RecipientStatus, Scope
from dispatcher.errors import InvalidOptionError, NotFoundError
from dispatcher.gateway.protocol import MAX_RECIPIENTS_PER_SUBMISSION
from dispatcher.service import views
from dispatcher.service.audit import ExportKind, export_csv
from dispatcher.service.dispatcher import MAX_LABEL_LENGTH, Dispatcher
from dispatcher.service.keys import KeyInfo

MAX_PAGE_SIZE = 200
DEFAULT_PAGE_SIZE = 50

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": description}
    for status, description in (
        (
            400,
            "The body is not JSON, the query string or body is not UTF-8, or the cursor "
            "is not one this API gave.",
        ),
        (401, "No API key, or an unknown or revoked one."),
        (403, "The key lacks the scope this route needs, or may not use that sender."),
        (422, "The request is not valid; nothing was written."),
        (429, "The key is over its rate; see Retry-After."),
        (503, "The database is unavailable; see Retry-After."),
    )
}
_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {
        "model": ErrorBody,
        "description": "No such job, or one another key enqueued (without `operate`).",
    }
}

router = APIRouter(prefix="/v1", tags=["jobs"], responses=_ERRORS)

SendKey = Annotated[KeyInfo, Depends(require(Scope.SEND))]
ReadKey = Annotated[KeyInfo, Depends(require(Scope.READ))]
# Retry and cancel: a producer on its own jobs (send), an operator on any (operate).
ActKey = Annotated[KeyInfo, Depends(require(Scope.SEND, Scope.OPERATE))]
# Settling an unknown recipient records evidence an operator found: operate only.
OperateKey = Annotated[KeyInfo, Depends(require(Scope.OPERATE))]
# The audit export: a producer's own jobs' rows (read), an operator's all (operate).
ExportKey = Annotated[KeyInfo, Depends(require(Scope.READ, Scope.OPERATE))]
JobId = Annotated[str, Path(description="A job id, as `POST /v1/jobs` returned it.")]


def _service(request: Request) -> Dispatcher:
    service: Dispatcher = request.app.state.service
    return service


def api_actor(key: KeyInfo) -> str:
    """Who the audit trail names for a ``/v1`` request."""
    return f"api:{key.name}"


def _known_job(job_id: str) -> str:
    # An id that cannot exist is answered without a query (and a NUL in it never
    # reaches PostgreSQL).
    if not is_job_id(job_id):
        raise NotFoundError("no job with that id")
    return job_id


@router.post(
    "/jobs",
    status_code=201,
    response_model=JobCreated,
    summary="Queue a text for one or more numbers",
    responses={
        200: {"model": JobCreated, "description": "A replay of an Idempotency-Key."},
        409: {"model": ErrorBody, "description": "Idempotency-Key used for another request."},
        413: {"model": ErrorBody, "description": "The body is too large."},
    },
)
def create_job(
    request: Request,
    response: Response,
    body: JobCreate,
    key: SendKey,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            max_length=MAX_LABEL_LENGTH,
            description="The same key and body again returns the first job (200, "
            "`Idempotent-Replayed: true`) and sends nothing; another body is a 409.",
        ),
    ] = None,
) -> JobCreated:
    """Commit the job before answering: a 201 means it will be sent.

    Numbers that cannot be phone numbers are listed in ``refused`` and recorded
    as failed; the request is refused whole (422, nothing written) only when no
    number is usable or the text or an option is wrong. The key may use the
    senders granted to it and the default sender; another is a 403.
    """
    service = _service(request)
    send_request = service.send_request(
        body.to,
        body.text,
        sender=body.sender,
        maxconcat=body.maxconcat,
        kind=body.kind,
        send_at=body.send_at,
        priority=body.priority,
        valid_for_s=body.valid_for_s,
        idempotency_key=idempotency_key,
        reference=body.reference,
        callback_url=body.callback_url,
    )
    result = service.enqueue_request(
        send_request,
        actor=api_actor(key),
        allowed_senders=key.allowed_senders,
        owner_key_id=key.id,
    )
    if result.replayed:
        response.status_code = 200
        response.headers["Idempotent-Replayed"] = "true"
        status = job_status(service.db, result.job_id)
        # The first answer's count: a replay writes no batch of its own.
        batches = -(-len(result.accepted) // MAX_RECIPIENTS_PER_SUBMISSION)
    else:
        status, batches = "in_progress", result.batches
    return JobCreated(
        id=result.job_id,
        status=status,
        accepted=len(result.accepted),
        refused=[RefusedNumber(number=n, reason=r) for n, r in result.refused],
        parts=result.parts,
        credits=result.credits,
        batches=batches,
        replayed=result.replayed,
        priority=result.priority,
        send_at=result.send_at.isoformat() if result.send_at else None,
        expires_at=result.expires_at.isoformat() if result.expires_at else None,
    )


@router.get(
    "/jobs/{job_id}",
    response_model=JobView,
    summary="A job and each recipient's outcome",
    responses=_NOT_FOUND,
)
def get_job(request: Request, job_id: JobId, key: ReadKey) -> views.JobView:
    """Each recipient's status, gateway message ID, error code and attempts.

    A key without `operate` sees only the jobs it enqueued."""
    return _service(request).job_view(_known_job(job_id), viewer=key.viewer)


@router.get(
    "/jobs",
    response_model=JobPage,
    summary="Jobs, newest first, filtered and paginated",
)
def get_jobs(
    request: Request,
    key: ReadKey,
    status: Annotated[
        RecipientStatus | None, Query(description="Jobs with a recipient in this status.")
    ] = None,
    number: Annotated[
        str | None,
        Query(max_length=64, description="Jobs that went to this number (any format)."),
    ] = None,
    reference: Annotated[str | None, Query(max_length=MAX_LABEL_LENGTH)] = None,
    since: Annotated[
        FilterTime, Query(description="Created at or after (ISO 8601; UTC if no zone).")
    ] = None,
    until: Annotated[FilterTime, Query(description="Created before.")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = DEFAULT_PAGE_SIZE,
    cursor: Annotated[
        str | None, Query(max_length=200, description="`next_cursor` of the previous page.")
    ] = None,
) -> JobPage:
    """Pass each page's ``next_cursor`` as ``cursor`` until it is null.

    A key without `operate` lists only the jobs it enqueued."""
    service = _service(request)
    # A cursor, number or reference that no job can match is refused with its reason,
    # answered from the one table (docs/design.md section 5).
    after = decode_cursor(cursor) if cursor is not None else None
    wanted_number = None
    if number is not None:
        wanted_number = normalise(number, service.settings.default_region)
    if reference is not None and not reference.isprintable():
        raise InvalidOptionError("reference must not contain control characters")
    selection = JobFilter(
        status=status,
        number=wanted_number,
        reference=reference.strip() if reference is not None else None,
        since=since,
        until=until,
    )
    jobs, more = service.list_jobs_page(
        selection=selection, limit=limit, after=after, viewer=key.viewer
    )
    next_cursor = encode_cursor(jobs[-1]["id"]) if more and jobs else None
    return JobPage(jobs=[JobSummary(**job) for job in jobs], next_cursor=next_cursor)


@router.post(
    "/jobs/{job_id}/retry",
    response_model=RetryResult,
    summary="Queue a job's failed (or, confirmed, unknown) recipients again",
    responses={
        **_NOT_FOUND,
        409: {
            "model": ErrorBody,
            "description": "Unknown recipients may already have been sent; "
            "retrying them needs confirm_unknown.",
        },
    },
)
def retry_job(
    request: Request,
    job_id: JobId,
    key: ActKey,
    body: Annotated[RetryRequest | None, Body()] = None,
) -> RetryResult:
    """Needs `send` (the key's own jobs) or `operate` (any job). Audited with the key's
    name as the actor. Only what can succeed goes by default: failures for good,
    `unknown` recipients without `confirm_unknown` and recipients whose validity ended
    are left out, and `held_back` says how many and why. Numbers refused at enqueue
    stay failed."""
    wanted = body or RetryRequest()
    result = _service(request).retry(
        actor=api_actor(key),
        job_id=_known_job(job_id),
        statuses=list(wanted.statuses),
        error_code=wanted.error_code,
        confirm_unknown=wanted.confirm_unknown,
        valid_for_s=wanted.valid_for_s,
        dry_run=wanted.dry_run,
        viewer=key.viewer,
    )
    plan = result.plan or {}
    return RetryResult(
        retried=result.affected,
        jobs=result.jobs,
        dry_run=wanted.dry_run,
        sample=[RetryListed(**listed) for listed in plan.get("sample", [])],
        held_back={
            reason: HeldBackGroup(
                count=group["count"],
                why=group["why"],
                sample=[RetryListed(**listed) for listed in group["sample"]],
            )
            for reason, group in plan.get("held_back", {}).items()
        },
    )


@router.post(
    "/jobs/{job_id}/settle",
    response_model=SettleResult,
    summary="Settle a job's unknown recipients as sent or failed, from evidence",
    responses=_NOT_FOUND,
)
def settle_job(
    request: Request, job_id: JobId, key: OperateKey, body: Annotated[SettleRequest, Body()]
) -> SettleResult:
    """Needs `operate`. For an operator who has learned from the gateway's own records
    what became of recipients the dispatcher could not tell (`unknown`). Audited with
    the key's name as the actor and the reason in each recipient's history."""
    service = _service(request)
    region = service.settings.default_region
    result = service.settle(
        _known_job(job_id),
        status=body.status,
        reason=body.reason,
        actor=api_actor(key),
        numbers=[normalise(n, region) for n in body.numbers] if body.numbers else None,
        gateway_message_id=body.gateway_message_id,
        viewer=key.viewer,
    )
    return SettleResult(settled=result.settled, job=result.job, status=str(result.status))


@router.post(
    "/jobs/{job_id}/cancel",
    response_model=CancelResult,
    summary="Cancel a job's recipients that no worker has claimed",
    responses=_NOT_FOUND,
)
def cancel_job(request: Request, job_id: JobId, key: ActKey) -> CancelResult:
    """Needs `send` (the key's own jobs) or `operate` (any job). Recipients already being
    submitted, and final ones, keep their course. Audited."""
    result = _service(request).cancel(_known_job(job_id), actor=api_actor(key), viewer=key.viewer)
    return CancelResult(cancelled=result.affected, job=job_id)


@router.get(
    "/audit.csv",
    summary="The audit of a time range, a number or a job, as CSV",
    tags=["audit"],
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/csv": {}}, "description": "The rows, streamed."},
        **_NOT_FOUND,
    },
)
def audit_csv(
    request: Request,
    key: ExportKey,
    since: Annotated[
        FilterTime, Query(description="From this time (ISO 8601; UTC if no zone).")
    ] = None,
    until: Annotated[FilterTime, Query(description="Before this time.")] = None,
    number: Annotated[
        str | None, Query(max_length=64, description="Only this number (any format).")
    ] = None,
    job: Annotated[str | None, Query(max_length=26, description="Only this job.")] = None,
    kind: Annotated[
        ExportKind,
        Query(description="`events`: a row per status change; `recipients`: per recipient."),
    ] = ExportKind.EVENTS,
) -> StreamingResponse:
    """A key with `read` exports the rows of the jobs it enqueued only; a key with
    `operate`, every producer's. Times carry their zone; message text is never in it."""
    service = _service(request)
    lines = export_csv(
        service.db,
        since=since,
        until=until,
        number=number,
        job_id=_known_job(job) if job is not None else None,
        kind=kind.value,
        default_region=service.settings.default_region,
        actor=api_actor(key),
        viewer=key.viewer,
    )
    return StreamingResponse(
        lines,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="audit-{kind.value}.csv"'},
    )
