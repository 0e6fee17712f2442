"""Lists of failed, unknown or waiting recipients, and the bulk actions on a list.

A bulk action goes through a confirmation page that says how many recipients
it touches; its form carries the list's filters back, checked again.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import Response

from dispatcher.dashboard import queries
from dispatcher.dashboard.routes.auth import Checked, Operator
from dispatcher.dashboard.routes.base import DashboardError, dashboard_of
from dispatcher.dashboard.routes.params import (
    CANCELLABLE,
    RETRYABLE,
    done_message,
    form_time,
    redirect,
    service_call,
)

LIST_STATUSES = (*RETRYABLE, *CANCELLABLE)

router = APIRouter(include_in_schema=False)


def recipient_query(
    status: str, error_code: str | None, since: str | None, until: str | None
) -> queries.RecipientQuery:
    if status not in LIST_STATUSES:
        raise DashboardError(400, f"status must be one of {', '.join(LIST_STATUSES)}")
    code = (error_code or "").strip().upper() or None
    if code is not None and (
        len(code) > 64 or not code.isascii() or not code.replace("_", "").isalnum()
    ):
        raise DashboardError(400, "an error code is letters, digits and '_' (GATEWAY_ERROR)")
    return queries.RecipientQuery(
        status=status,
        error_code=code,
        since=form_time("since", since),
        until=form_time("until", until),
    )


def filters_of(query: queries.RecipientQuery) -> dict[str, str]:
    """The query as URL parameters and hidden form fields (times in ISO 8601)."""
    values = {"status": query.status}
    if query.error_code:
        values["error_code"] = query.error_code
    if query.since:
        values["since"] = query.since.isoformat()
    if query.until:
        values["until"] = query.until.isoformat()
    return values


@router.get("/recipients")
def recipients(
    request: Request,
    session: Operator,
    status: str = "failed",
    error_code: str | None = None,
    since: str | None = None,
    until: str | None = None,
    after: str | None = None,
    done: str | None = None,
    n: str | None = None,
    left: str | None = None,
) -> Response:
    """Failed, unknown or waiting recipients, filtered, with bulk actions; ``after``: the
    cursor of the page before."""
    dash = dashboard_of(request)
    query = recipient_query(status, error_code, since, until)
    rows = service_call(queries.recipients, dash.service.db, query, after=after)
    filters = filters_of(query)
    return dash.page(
        request,
        "recipients.html",
        session,
        query=query,
        rows=rows,
        filters=filters,
        filter_qs=urlencode(filters),
        list_statuses=LIST_STATUSES,
        retryable=query.status in RETRYABLE,
        message=done_message(done, n, left),
    )


@router.get("/recipients/confirm")
def confirm(
    request: Request,
    session: Operator,
    action: str,
    status: str,
    error_code: str | None = None,
    since: str | None = None,
    until: str | None = None,
) -> Response:
    """Say how many recipients a bulk action touches, and ask to go ahead."""
    dash = dashboard_of(request)
    query = recipient_query(status, error_code, since, until)
    plan: dict[str, Any] = {}
    if action == "retry" and status in RETRYABLE:
        # What the button below will queue, exactly: the same rules, as a dry run.
        result = service_call(
            dash.service.retry,
            actor=session.actor,
            statuses=[query.status],
            error_code=query.error_code,
            since=query.since,
            until=query.until,
            confirm_unknown=True,
            dry_run=True,
        )
        count, plan = result.affected, result.plan or {}
    elif action == "cancel" and status in CANCELLABLE:
        count = queries.count(dash.service.db, query)
    else:
        raise DashboardError(
            400, "retry takes failed or unknown recipients; cancel takes queued or retry_wait"
        )
    return dash.page(
        request,
        "confirm.html",
        session,
        action=action,
        query=query,
        count=count,
        plan=plan,
        filters=filters_of(query),
        filter_qs=urlencode(filters_of(query)),
    )


def form_query(
    status: Annotated[str, Form()] = "",
    error_code: Annotated[str, Form()] = "",
    since: Annotated[str, Form()] = "",
    until: Annotated[str, Form()] = "",
) -> queries.RecipientQuery:
    """The filters a bulk action's confirmation form carries."""
    return recipient_query(status, error_code, since, until)


FormQuery = Annotated[queries.RecipientQuery, Depends(form_query)]


def listing(query: queries.RecipientQuery, done: str, affected: int, left: int = 0) -> Response:
    return redirect(
        f"/recipients?{urlencode(filters_of(query))}&done={done}&n={affected}&left={left}"
    )


@router.post("/recipients/retry")
def bulk_retry(
    request: Request,
    session: Checked,
    query: FormQuery,
    confirm_unknown: Annotated[str, Form()] = "",
) -> Response:
    """Queue every failed (or, confirmed, unknown) recipient of the filter again."""
    if query.status not in RETRYABLE:
        raise DashboardError(400, "only failed or unknown recipients can be retried")
    result = service_call(
        dashboard_of(request).service.retry,
        actor=session.actor,
        statuses=[query.status],
        error_code=query.error_code,
        since=query.since,
        until=query.until,
        confirm_unknown=confirm_unknown == "yes",
    )
    left = sum(g["count"] for g in (result.plan or {}).get("held_back", {}).values())
    return listing(query, "retried", result.affected, left)


@router.post("/recipients/acknowledge")
def acknowledge(request: Request, session: Checked) -> Response:
    """Mark every unknown recipient so far as seen: the alert waits for new ones."""
    seen = service_call(dashboard_of(request).service.acknowledge_unknown, actor=session.actor)
    return redirect(f"/recipients?status=unknown&done=acknowledged&n={seen}")


@router.post("/recipients/cancel")
def bulk_cancel(request: Request, session: Checked, query: FormQuery) -> Response:
    """Cancel every waiting recipient of the filter."""
    if query.status not in CANCELLABLE:
        raise DashboardError(400, "only queued or retry_wait recipients can be cancelled")
    result = service_call(
        dashboard_of(request).service.cancel_matching, query.selection(), actor=session.actor
    )
    return listing(query, "cancelled", result.affected)
