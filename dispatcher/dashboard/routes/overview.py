"""The overview page (what the dispatcher is doing now) and pausing and resuming dispatch."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import Response

from dispatcher.dashboard import charts, queries
from dispatcher.dashboard.routes.auth import Checked, Operator
from dispatcher.dashboard.routes.base import dashboard_of
from dispatcher.dashboard.routes.params import done_message, redirect, service_call
from dispatcher.domain import workers as heartbeat

MAX_REASON_LENGTH = 400

router = APIRouter(include_in_schema=False)


@router.get("/")
def overview(
    request: Request, session: Operator, done: str | None = None, n: str | None = None
) -> Response:
    """What the dispatcher is doing now."""
    dash = dashboard_of(request)
    data = queries.overview(dash.service.db)
    hour_start = data.now - dt.timedelta(hours=1)
    day_start = data.now - dt.timedelta(days=1)
    interval_s = dash.service.settings.heartbeat_interval_s
    stale_after_s = heartbeat.STALE_AFTER_BEATS * interval_s
    workers = [
        w
        | {
            "alive": (data.now - w["seen_at"]).total_seconds() <= stale_after_s,
            "consuming": heartbeat.is_consuming(w, now=data.now, interval_s=interval_s),
        }
        for w in data.workers
    ]
    return dash.page(
        request,
        "overview.html",
        session,
        data=data,
        workers=workers,
        export_since=(data.now - dt.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M"),
        export_until=data.now.strftime("%Y-%m-%dT%H:%M"),
        hour=charts.stacked(
            data.throughput_hour, start=hour_start, step=dt.timedelta(minutes=1), slots=60
        ),
        day=charts.stacked(
            data.throughput_day, start=day_start, step=dt.timedelta(hours=1), slots=24
        ),
        errors_hour=charts.horizontal(data.errors_hour),
        errors_day=charts.horizontal(data.errors_day),
        message=done_message(done, n),
    )


@router.post("/pause")
def pause(request: Request, session: Checked, reason: Annotated[str, Form()] = "") -> Response:
    """Pause dispatch everywhere, with the operator's reason."""
    reason = reason.strip()[:MAX_REASON_LENGTH] or "paused from the dashboard"
    service_call(dashboard_of(request).service.pause, actor=session.actor, detail=reason)
    return redirect("/?done=paused")


@router.post("/resume")
def resume(request: Request, session: Checked) -> Response:
    """Resume dispatch, whatever paused it."""
    dashboard_of(request).service.resume(actor=session.actor)
    return redirect("/?done=resumed")
