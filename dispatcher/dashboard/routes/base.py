"""What every dashboard page shares: its collaborators, its rendering, its refusals.

``Dashboard`` (on ``app.state.dashboard``) holds the service, the session codec,
the login throttle, the key store and the Jinja2 templates (autoescaped, and
strict about undefined names); ``page`` renders one with the headers every page
carries. ``LoginRequired`` and ``DashboardError`` are the two ways a route
refuses; the handlers that turn them into a redirect or an error page are
installed with the routes.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from fastapi import Request
from fastapi.responses import HTMLResponse

from dispatcher.dashboard import charts
from dispatcher.dashboard.session import COOKIE_NAME, Session, SessionCodec
from dispatcher.dashboard.throttle import LoginThrottle
from dispatcher.domain import proxies, redaction
from dispatcher.domain.times import utcnow
from dispatcher.service.dispatcher import Dispatcher
from dispatcher.service.keys import KeyStore

# The templates and static files sit beside this package, in the dashboard's folder.
DASHBOARD_DIR = Path(__file__).parent.parent

SECURITY_HEADERS = {
    # No inline script or style anywhere: an injected tag could not run.
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class LoginRequired(Exception):
    """The request needs a logged-in session; the answer is a redirect to the login page."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


class DashboardError(Exception):
    """A refusal shown as an HTML page with its status and reason."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _fmt_time(value: dt.datetime | str | None) -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _fmt_age(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = max(seconds, 0.0)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(DASHBOARD_DIR / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["time"] = _fmt_time
    env.filters["age"] = _fmt_age
    env.globals["status_colours"] = charts.STATUS_COLOURS
    return env


@dataclass
class Dashboard:
    """The dashboard's collaborators, kept on ``app.state.dashboard``."""

    service: Dispatcher
    codec: SessionCodec
    throttle: LoginThrottle
    keys: KeyStore
    templates: jinja2.Environment
    trusted_proxies: tuple[proxies.Network, ...] = ()

    def redact(self, text: str | None) -> str:
        """``text`` with every configured secret masked (raw replies are masked at
        write already; this guards rows written before a secret changed)."""
        if not text:
            return ""
        return redaction.redact(text, self.service.settings.secrets())

    def page(
        self,
        request: Request,
        name: str,
        session: Session,
        *,
        status: int = 200,
        fresh: bool = False,
        **context: Any,
    ) -> HTMLResponse:
        """Render template ``name`` for ``session``; ``fresh``: also set its cookie."""
        control = self.service.control() if session.who is not None else None
        html = self.templates.get_template(name).render(
            request=request,
            session=session,
            control=control,
            path=request.url.path,
            redact=self.redact,
            now=utcnow(),
            **context,
        )
        response = HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)
        if fresh:
            self.codec.write(response, request, session, now=time.time())
        return response


def dashboard_of(request: Request) -> Dashboard:
    dash: Dashboard = request.app.state.dashboard
    return dash


def current_session(request: Request) -> Session | None:
    return dashboard_of(request).codec.decode(request.cookies.get(COOKIE_NAME), now=time.time())


def client_address_of(request: Request) -> str:
    """The client's address, through the trusted proxies; what the dashboard logs and
    throttles on."""
    return proxies.client_address(
        request.client.host if request.client else None,
        request.headers.getlist("x-forwarded-for"),
        dashboard_of(request).trusted_proxies,
    )
