"""What operators did (the actions page), and the audit export as CSV."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import Response, StreamingResponse

from dispatcher.dashboard import queries
from dispatcher.dashboard.routes.auth import Checked, Operator
from dispatcher.dashboard.routes.base import dashboard_of
from dispatcher.dashboard.routes.params import form_time, service_call
from dispatcher.service.audit import export_csv

router = APIRouter(include_in_schema=False)


@router.get("/actions")
def actions(request: Request, session: Operator, after: str | None = None) -> Response:
    """What operators did, newest first; ``after``: the cursor of the page before."""
    dash = dashboard_of(request)
    rows = service_call(queries.actions, dash.service.db, after=after)
    return dash.page(request, "actions.html", session, rows=rows)


# --- audit export --------------------------------------------------------------------


# A POST with the CSRF token, not a link: an export is an audited action and can be
# large, so a cross-site link must not be able to start one in an operator's name.
@router.post("/export.csv")
def export(
    request: Request,
    session: Checked,
    since: Annotated[str | None, Form()] = None,
    until: Annotated[str | None, Form()] = None,
    number: Annotated[str | None, Form()] = None,
    job: Annotated[str | None, Form()] = None,
    kind: Annotated[str, Form()] = "events",
) -> Response:
    """The audit of a time range, a number or a job as CSV, streamed; the export itself
    is audited with who asked (a bulk export of personal data is an action)."""
    service = dashboard_of(request).service
    lines = service_call(
        export_csv,
        service.db,
        since=form_time("since", since),
        until=form_time("until", until),
        number=number.strip() or None if number else None,
        job_id=job.strip() or None if job else None,
        kind=kind,
        default_region=service.settings.default_region,
        actor=session.actor,
    )
    return StreamingResponse(
        lines,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="audit-{kind}.csv"'},
    )
