"""Finding jobs and the job page, with its retry and cancel actions."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import Response

from dispatcher.dashboard import queries
from dispatcher.dashboard.routes.auth import Checked, Operator
from dispatcher.dashboard.routes.base import Dashboard, DashboardError, dashboard_of
from dispatcher.dashboard.routes.params import (
    RETRYABLE,
    done_message,
    redirect,
    service_call,
    whole_number,
)
from dispatcher.domain.message import MAX_VALIDITY_S
from dispatcher.domain.statuses import RecipientStatus
from dispatcher.domain.storable import unstorable

MAX_QUERY_LENGTH = 200

router = APIRouter(include_in_schema=False)


@router.get("/search")
def search(request: Request, session: Operator, q: str = "", after: str | None = None) -> Response:
    """Find jobs and recipients by number, job id, reference or gateway message ID;
    ``after``: the cursor of the recipients' page before."""
    dash = dashboard_of(request)
    if len(q) > MAX_QUERY_LENGTH:
        raise DashboardError(400, f"a search is at most {MAX_QUERY_LENGTH} characters")
    problem = unstorable(q)
    if problem is not None:
        raise DashboardError(400, f"the search {problem}")
    result = service_call(
        queries.search, dash.service.db, q, region=dash.service.settings.default_region, after=after
    )
    return dash.page(request, "search.html", session, result=result)


@router.get("/jobs/{job_id}")
def job(
    request: Request,
    job_id: str,
    session: Operator,
    after: str | None = None,
    status: str = "",
    done: str | None = None,
    n: str | None = None,
    left: str | None = None,
) -> Response:
    """A job: its fields and text, recipients with their attempts and history, actions;
    ``after``: the cursor of the recipients' page before."""
    dash = dashboard_of(request)
    if status and status not in set(RecipientStatus):
        raise DashboardError(400, f"unknown status {status!r}")
    data = service_call(
        queries.job_page, dash.service.db, job_id, after=after, status=status or None
    )
    if data is None:
        raise DashboardError(404, "There is no job with that id.")
    return dash.page(
        request,
        "job.html",
        session,
        data=data,
        plans=retry_plans(dash, job_id, session.actor, data.counts),
        status_filter=status,
        statuses=[str(s) for s in RecipientStatus],
        message=done_message(done, n, left),
        attempt_by_id={a.id: a for a in data.attempts},
    )


@router.post("/jobs/{job_id}/retry")
def job_retry(
    request: Request,
    job_id: str,
    session: Checked,
    status: Annotated[str, Form()] = "failed",
    number: Annotated[str, Form()] = "",
    error_code: Annotated[str, Form()] = "",
    valid_for_s: Annotated[str, Form()] = "",
    confirm_unknown: Annotated[str, Form()] = "",
) -> Response:
    """Queue a job's failed (or, confirmed, unknown) recipients again; one, or all.

    A recipient's own Retry button names its error code, as the operator sees it
    beside the button: it goes even if it failed for good (``domain.retries``)."""
    if status not in RETRYABLE:
        raise DashboardError(400, "only failed or unknown recipients can be retried")
    validity = whole_number(valid_for_s, int(MAX_VALIDITY_S)) if valid_for_s else None
    if valid_for_s and not validity:
        raise DashboardError(400, "a new validity is a whole number of seconds, more than 0")
    result = service_call(
        dashboard_of(request).service.retry,
        actor=session.actor,
        job_id=job_id,
        statuses=[status],
        numbers=[number] if number else None,
        error_code=error_code or None,
        valid_for_s=validity,
        confirm_unknown=confirm_unknown == "yes",
    )
    left = sum(g["count"] for g in (result.plan or {}).get("held_back", {}).values())
    return redirect(f"/jobs/{job_id}?done=retried&n={result.affected}&left={left}")


def retry_plans(
    dash: Dashboard, job_id: str, actor: str, counts: dict[str, int]
) -> dict[str, dict[str, Any]]:
    """What the job's Retry buttons would queue (a dry run each), so their counts are
    what a click retries, with what they would leave and why."""
    plans: dict[str, dict[str, Any]] = {}
    for status in RETRYABLE:
        if counts.get(status):
            result = service_call(
                dash.service.retry,
                actor=actor,
                job_id=job_id,
                statuses=[status],
                # The page asks for the confirmation itself, with a checkbox.
                confirm_unknown=True,
                dry_run=True,
            )
            plans[status] = (result.plan or {}) | {"would_retry": result.affected}
    return plans


@router.post("/jobs/{job_id}/settle")
def job_settle(
    request: Request,
    job_id: str,
    session: Checked,
    number: Annotated[str, Form()],
    status: Annotated[str, Form()],
    reason: Annotated[str, Form()] = "",
    gateway_message_id: Annotated[str, Form()] = "",
) -> Response:
    """Settle one `unknown` recipient as sent or failed, from the gateway's records."""
    result = service_call(
        dashboard_of(request).service.settle,
        job_id,
        status=status,
        reason=reason,
        actor=session.actor,
        numbers=[number],
        gateway_message_id=gateway_message_id.strip() or None,
    )
    return redirect(f"/jobs/{job_id}?done=settled&n={result.settled}")


@router.post("/jobs/{job_id}/cancel")
def job_cancel(request: Request, job_id: str, session: Checked) -> Response:
    """Cancel a job's recipients that are still waiting."""
    result = service_call(dashboard_of(request).service.cancel, job_id, actor=session.actor)
    return redirect(f"/jobs/{job_id}?done=cancelled&n={result.affected}")
