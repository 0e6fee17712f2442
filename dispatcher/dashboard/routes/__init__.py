"""The dashboard's pages and actions, mounted at ``/`` of ``dispatcher serve``.

Pages are rendered on the server (Jinja2, autoescaped); every action is a POST
form carrying the session's CSRF token, answered with a redirect (so a reload
never repeats it), and goes through the same service functions as the CLI and
the API, audited as ``dashboard:<key name>`` or ``dashboard:operator``.

Routes that touch the database are plain functions: FastAPI runs them in its
thread pool, as it does ``/v1``'s. They live by page family: ``auth`` (login,
logout and the session dependencies), ``overview`` (with pause and resume),
``jobs`` (search and the job page), ``recipients`` (lists and bulk actions) and
``audit`` (operator actions and the CSV export); ``base`` and ``params`` hold
what they share. ``install`` mounts each family's router.
"""

from __future__ import annotations

import time
from urllib.parse import urlencode

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

from dispatcher.dashboard.routes import audit, auth, jobs, overview, recipients
from dispatcher.dashboard.routes.base import (
    DASHBOARD_DIR,
    SECURITY_HEADERS,
    Dashboard,
    DashboardError,
    LoginRequired,
    current_session,
    dashboard_of,
    environment,
)
from dispatcher.dashboard.routes.params import redirect, safe_next
from dispatcher.dashboard.session import SessionCodec
from dispatcher.dashboard.throttle import LoginThrottle
from dispatcher.service.dispatcher import Dispatcher
from dispatcher.service.keys import KeyStore

# Included in this order, the order the routes were declared in before the split
# (routes are matched in order).
FAMILIES = (auth, overview, jobs, recipients, audit)


async def on_login_required(request: Request, exc: Exception) -> Response:
    """Send a visitor without a live session to the login page, and back afterwards."""
    assert isinstance(exc, LoginRequired)
    return redirect("/login?" + urlencode({"next": safe_next(exc.next_path)}))


async def on_dashboard_error(request: Request, exc: Exception) -> Response:
    """Show a refusal as an HTML page with its status and reason."""
    assert isinstance(exc, DashboardError)
    dash = dashboard_of(request)
    session = current_session(request)
    fresh = session is None
    if session is None:
        session = dash.codec.new(None, now=time.time())
    # No database read for the banner here: the error may be that it is away.
    html = dash.templates.get_template("error.html").render(
        request=request,
        session=session,
        control=None,
        path=request.url.path,
        status=exc.status,
        reason=exc.message,
    )
    response = HTMLResponse(html, status_code=exc.status, headers=SECURITY_HEADERS)
    if fresh:
        dash.codec.write(response, request, session, now=time.time())
    return response


def install(app: FastAPI, service: Dispatcher) -> None:
    """Mount the dashboard at ``/`` of ``app``, on ``service``."""
    app.state.dashboard = Dashboard(
        service=service,
        codec=SessionCodec(service.settings),
        throttle=LoginThrottle(),
        keys=KeyStore(service.db),
        templates=environment(),
        trusted_proxies=service.settings.trusted_proxies,
    )
    for family in FAMILIES:
        app.include_router(family.router)
    app.mount("/static", StaticFiles(directory=DASHBOARD_DIR / "static"), name="dashboard-static")
    app.add_exception_handler(LoginRequired, on_login_required)
    app.add_exception_handler(DashboardError, on_dashboard_error)
