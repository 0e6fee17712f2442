"""Who is logged in: the session dependencies of every page, and login and logout.

A session proves an API key with the operate scope or the operator password,
and is checked live on every request (a revoked key or a changed password ends
it at once). Logins are throttled per account and client address
(``throttle``), the address read through ``DISPATCHER_TRUSTED_PROXIES``. Every
POST carries the session's CSRF token (``Checked``).
"""

from __future__ import annotations

import hmac
import logging
import time
from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import Response

from dispatcher.dashboard.routes.base import (
    Dashboard,
    DashboardError,
    LoginRequired,
    client_address_of,
    current_session,
    dashboard_of,
)
from dispatcher.dashboard.routes.params import redirect, safe_next
from dispatcher.dashboard.session import KEY, OPERATOR, PASSWORD, Login, Session
from dispatcher.dashboard.throttle import account_of
from dispatcher.domain.statuses import Scope
from dispatcher.errors import AuthenticationError

# The name the dashboard logged under before its routes were split.
log = logging.getLogger("dispatcher.dashboard.routes")

router = APIRouter(include_in_schema=False)


def is_live(dash: Dashboard, login: Login) -> bool:
    """Whether what proved ``login`` still would: the operator password is still the
    one it proved, or the key (looked up by its id, whatever its name) is live with
    the operate scope."""
    if login.kind == PASSWORD:
        password = dash.service.settings.operator_password
        return (
            password is not None
            and login.proof is not None
            and hmac.compare_digest(login.proof, dash.codec.proof(password.get_secret_value()))
        )
    if login.kind != KEY or login.key_id is None:
        return False
    key = dash.keys.get(login.key_id)
    return key is not None and key.revoked_at is None and Scope.OPERATE in key.scopes


def live_session(request: Request) -> Session | None:
    session = current_session(request)
    if session is None or session.login is None:
        return None
    if not is_live(dashboard_of(request), session.login):
        return None
    return session


def operator(request: Request) -> Session:
    """The logged-in session; LoginRequired otherwise."""
    session = live_session(request)
    if session is None:
        raise LoginRequired(request.url.path)
    return session


def checked(
    session: Annotated[Session, Depends(operator)], csrf: Annotated[str, Form()] = ""
) -> Session:
    """The logged-in session of a POST whose form carries its CSRF token; 403 otherwise."""
    if not csrf or not hmac.compare_digest(csrf, session.csrf):
        raise DashboardError(
            403, "The form's CSRF token is missing or wrong: reload the page and try again."
        )
    return session


Operator = Annotated[Session, Depends(operator)]
Checked = Annotated[Session, Depends(checked)]


# --- login ---------------------------------------------------------------------------


@router.get("/login")
def login_page(request: Request, next: str = "/") -> Response:
    """The login form."""
    dash = dashboard_of(request)
    if live_session(request) is not None:
        return redirect(safe_next(next))
    session = current_session(request)
    # A session whose key was revoked logs in again, on a fresh anonymous session.
    fresh = session is None or session.login is not None
    if session is None or session.login is not None:
        session = dash.codec.new(None, now=time.time())
    return dash.page(
        request,
        "login.html",
        session,
        fresh=fresh,
        next=safe_next(next),
        error=None,
        password_login=dash.service.settings.operator_password is not None,
    )


def authenticate(dash: Dashboard, secret: str) -> Login | None:
    """What ``secret`` proves: a live key with the operate scope, or the operator password."""
    if not secret:
        return None
    password = dash.service.settings.operator_password
    if password is not None and hmac.compare_digest(
        secret.encode(), password.get_secret_value().encode()
    ):
        return Login(PASSWORD, OPERATOR, proof=dash.codec.proof(password.get_secret_value()))
    try:
        key = dash.keys.authenticate(secret, scope=Scope.OPERATE)
    except AuthenticationError:
        return None
    return Login(KEY, key.name, key.id)


@router.post("/login")
def login(
    request: Request,
    secret: Annotated[str, Form()] = "",
    csrf: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "/",
) -> Response:
    """Check an API key token (operate scope) or the operator password; start a session."""
    dash = dashboard_of(request)
    now = time.time()
    client = client_address_of(request)
    session = current_session(request)
    if session is None or not csrf or not hmac.compare_digest(csrf, session.csrf):
        raise DashboardError(403, "The login form has expired: reload the page and try again.")
    account = account_of(secret)
    wait_s = dash.throttle.wait_s(account, client)
    if wait_s > 0:
        log.warning("dashboard login refused from %s: too many failed attempts", client)
        raise DashboardError(
            429, f"Too many failed logins from your address; try again in {wait_s:.0f} s."
        )
    login = authenticate(dash, secret)
    if login is None:
        dash.throttle.failed(account, client)
        # Never the secret: not even masked, since its length alone is a hint.
        log.warning("dashboard login failed from %s", client)
        return dash.page(
            request,
            "login.html",
            session,
            status=401,
            next=safe_next(next),
            error="That is not an API key with the operate scope, nor the operator password.",
            password_login=dash.service.settings.operator_password is not None,
        )
    dash.throttle.succeeded(account, client)
    log.info("dashboard login by %s (%s) from %s", login.who, login.kind, client)
    response = redirect(safe_next(next))
    dash.codec.write(response, request, dash.codec.new(login, now=now), now=now)
    return response


@router.post("/logout")
def logout(request: Request, session: Checked) -> Response:
    """End the session (clear its cookie)."""
    log.info("dashboard logout by %s", session.who)
    response = redirect("/login")
    dashboard_of(request).codec.clear(response, request)
    return response
