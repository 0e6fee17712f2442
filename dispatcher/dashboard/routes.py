"""The dashboard's pages and actions, mounted at ``/`` of ``dispatcher serve``.

Pages are rendered on the server (Jinja2, autoescaped); every action is a POST
form carrying the session's CSRF token, answered with a redirect (so a reload
never repeats it), and goes through the same service functions as the CLI and
the API, audited as ``dashboard:<key name>`` or ``dashboard:operator``. A login is
throttled per account and client address (``throttle``), the address read through
``DISPATCHER_TRUSTED_PROXIES`` (``dispatcher.proxies``).

Routes that touch the database are plain functions: FastAPI runs them in its
thread pool, as it does ``/v1``'s.
"""

from __future__ import annotations

import datetime as dt
import hmac
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

import jinja2
from fastapi import APIRouter, Depends, FastAPI, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles

from dispatcher.dashboard import charts, queries
from dispatcher.dashboard.session import (
    COOKIE_NAME,
    KEY,
    OPERATOR,
    PASSWORD,
    Login,
    Session,
    SessionCodec,
)
from dispatcher.dashboard.throttle import LoginThrottle, account_of
from dispatcher.domain import proxies, redaction
from dispatcher.domain.statuses import RecipientStatus, Scope
from dispatcher.domain.storable import unstorable
from dispatcher.domain.times import parse_time
from dispatcher.errors import (
    AuthenticationError,
    ConfirmationRequiredError,
    DispatcherError,
    NotFoundError,
    ValidationError,
)
from dispatcher.service import audit, heartbeat
from dispatcher.service.dispatcher import Dispatcher
from dispatcher.service.keys import KeyStore

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
LIST_STATUSES = ("failed", "unknown", "queued", "retry_wait")
RETRYABLE = ("failed", "unknown")
CANCELLABLE = ("queued", "retry_wait")
MAX_QUERY_LENGTH = 200
MAX_REASON_LENGTH = 400
# Larger counts in a ?n= link are not from an action of ours.
MAX_SHOWN_COUNT = 10**9

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

DONE_MESSAGES = {
    "retried": "{n} recipient(s) queued again.",
    "cancelled": "{n} recipient(s) cancelled.",
    "paused": "Dispatch paused.",
    "resumed": "Dispatch resumed.",
}

router = APIRouter(include_in_schema=False)


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


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
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
            **context,
        )
        response = HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)
        if fresh:
            self.codec.write(response, request, session, now=time.time())
        return response


def _dashboard(request: Request) -> Dashboard:
    dash: Dashboard = request.app.state.dashboard
    return dash


def _current(request: Request) -> Session | None:
    return _dashboard(request).codec.decode(request.cookies.get(COOKIE_NAME), now=time.time())


def _client(request: Request) -> str:
    """The client's address, through the trusted proxies; what the dashboard logs and
    throttles on."""
    return proxies.client_address(
        request.client.host if request.client else None,
        request.headers.getlist("x-forwarded-for"),
        _dashboard(request).trusted_proxies,
    )


def _is_live(dash: Dashboard, login: Login) -> bool:
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


def _live_session(request: Request) -> Session | None:
    session = _current(request)
    if session is None or session.login is None:
        return None
    if not _is_live(_dashboard(request), session.login):
        return None
    return session


def operator(request: Request) -> Session:
    """The logged-in session; LoginRequired otherwise."""
    session = _live_session(request)
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


def _safe_next(value: str | None) -> str:
    # Only a path on this site: never an open redirect to another host.
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value


def _redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303, headers={"Cache-Control": "no-store"})


def _whole_number(value: str, most: int) -> int | None:
    """``value`` as an int from 0 to ``most`` if it is written in ASCII digits, else None
    (``int()`` also takes other scripts' digits and would convert any length)."""
    if not (value.isascii() and value.isdigit()) or len(value) > len(str(most)):
        return None
    number = int(value)
    return number if number <= most else None


def _page_number(value: str | None) -> int:
    if value is None or value == "":
        return 1
    page = _whole_number(value, queries.MAX_PAGE)
    if page is None or page < 1:
        raise DashboardError(400, f"page must be a whole number from 1 to {queries.MAX_PAGE}")
    return page


def _parse_time(name: str, value: str | None) -> dt.datetime | None:
    """A time from a form: ISO 8601, a date, or a datetime-local (read as UTC)."""
    if value is None or not value.strip():
        return None
    try:
        return parse_time(value, name)
    except ValidationError as exc:
        raise DashboardError(400, str(exc)) from None


def _done(done: str | None, n: str | None) -> str | None:
    template = DONE_MESSAGES.get(done or "")
    if template is None:
        return None
    return template.format(n=_whole_number(n or "", MAX_SHOWN_COUNT) or 0)


# --- login ---------------------------------------------------------------------------


@router.get("/login")
def login_page(request: Request, next: str = "/") -> Response:
    """The login form."""
    dash = _dashboard(request)
    if _live_session(request) is not None:
        return _redirect(_safe_next(next))
    session = _current(request)
    # A session whose key was revoked logs in again, on a fresh anonymous session.
    fresh = session is None or session.login is not None
    if session is None or session.login is not None:
        session = dash.codec.new(None, now=time.time())
    return dash.page(
        request,
        "login.html",
        session,
        fresh=fresh,
        next=_safe_next(next),
        error=None,
        password_login=dash.service.settings.operator_password is not None,
    )


def _authenticate(dash: Dashboard, secret: str) -> Login | None:
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
    dash = _dashboard(request)
    now = time.time()
    client = _client(request)
    session = _current(request)
    if session is None or not csrf or not hmac.compare_digest(csrf, session.csrf):
        raise DashboardError(403, "The login form has expired: reload the page and try again.")
    account = account_of(secret)
    wait_s = dash.throttle.wait_s(account, client)
    if wait_s > 0:
        log.warning("dashboard login refused from %s: too many failed attempts", client)
        raise DashboardError(
            429, f"Too many failed logins from your address; try again in {wait_s:.0f} s."
        )
    login = _authenticate(dash, secret)
    if login is None:
        dash.throttle.failed(account, client)
        # Never the secret: not even masked, since its length alone is a hint.
        log.warning("dashboard login failed from %s", client)
        return dash.page(
            request,
            "login.html",
            session,
            status=401,
            next=_safe_next(next),
            error="That is not an API key with the operate scope, nor the operator password.",
            password_login=dash.service.settings.operator_password is not None,
        )
    dash.throttle.succeeded(account, client)
    log.info("dashboard login by %s (%s) from %s", login.who, login.kind, client)
    response = _redirect(_safe_next(next))
    dash.codec.write(response, request, dash.codec.new(login, now=now), now=now)
    return response


@router.post("/logout")
def logout(request: Request, session: Checked) -> Response:
    """End the session (clear its cookie)."""
    log.info("dashboard logout by %s", session.who)
    response = _redirect("/login")
    _dashboard(request).codec.clear(response, request)
    return response


# --- overview, pause and resume ------------------------------------------------------


@router.get("/")
def overview(
    request: Request, session: Operator, done: str | None = None, n: str | None = None
) -> Response:
    """What the dispatcher is doing now."""
    dash = _dashboard(request)
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
        message=_done(done, n),
    )


@router.post("/pause")
def pause(request: Request, session: Checked, reason: Annotated[str, Form()] = "") -> Response:
    """Pause dispatch everywhere, with the operator's reason."""
    reason = reason.strip()[:MAX_REASON_LENGTH] or "paused from the dashboard"
    _service_call(_dashboard(request).service.pause, actor=session.actor, detail=reason)
    return _redirect("/?done=paused")


@router.post("/resume")
def resume(request: Request, session: Checked) -> Response:
    """Resume dispatch, whatever paused it."""
    _dashboard(request).service.resume(actor=session.actor)
    return _redirect("/?done=resumed")


# --- search and the job page ---------------------------------------------------------


@router.get("/search")
def search(request: Request, session: Operator, q: str = "", page: str | None = None) -> Response:
    """Find jobs and recipients by number, job id, reference or gateway message ID."""
    dash = _dashboard(request)
    if len(q) > MAX_QUERY_LENGTH:
        raise DashboardError(400, f"a search is at most {MAX_QUERY_LENGTH} characters")
    problem = unstorable(q)
    if problem is not None:
        raise DashboardError(400, f"the search {problem}")
    result = queries.search(
        dash.service.db, q, region=dash.service.settings.default_region, page=_page_number(page)
    )
    return dash.page(request, "search.html", session, result=result)


@router.get("/jobs/{job_id}")
def job(
    request: Request,
    job_id: str,
    session: Operator,
    page: str | None = None,
    status: str = "",
    done: str | None = None,
    n: str | None = None,
) -> Response:
    """A job: its fields and text, recipients with their attempts and history, actions."""
    dash = _dashboard(request)
    if status and status not in set(RecipientStatus):
        raise DashboardError(400, f"unknown status {status!r}")
    data = queries.job_page(dash.service.db, job_id, page=_page_number(page), status=status or None)
    if data is None:
        raise DashboardError(404, "There is no job with that id.")
    return dash.page(
        request,
        "job.html",
        session,
        data=data,
        status_filter=status,
        statuses=[str(s) for s in RecipientStatus],
        message=_done(done, n),
        attempt_by_id={a.id: a for a in data.attempts},
    )


def _service_call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call a service function; its refusals become HTML pages with their reason."""
    try:
        return fn(*args, **kwargs)
    except NotFoundError as exc:
        raise DashboardError(404, str(exc)) from None
    except ConfirmationRequiredError as exc:
        raise DashboardError(409, str(exc)) from None
    except ValidationError as exc:
        raise DashboardError(400, str(exc)) from None
    except DispatcherError as exc:
        # ConfirmationRequiredError, InvalidOptionError, ...: the operator can act on it.
        raise DashboardError(409, str(exc)) from None


@router.post("/jobs/{job_id}/retry")
def job_retry(
    request: Request,
    job_id: str,
    session: Checked,
    status: Annotated[str, Form()] = "failed",
    number: Annotated[str, Form()] = "",
    confirm_unknown: Annotated[str, Form()] = "",
) -> Response:
    """Queue a job's failed (or, confirmed, unknown) recipients again; one, or all."""
    if status not in RETRYABLE:
        raise DashboardError(400, "only failed or unknown recipients can be retried")
    result = _service_call(
        _dashboard(request).service.retry,
        actor=session.actor,
        job_id=job_id,
        statuses=[status],
        numbers=[number] if number else None,
        confirm_unknown=confirm_unknown == "yes",
    )
    return _redirect(f"/jobs/{job_id}?done=retried&n={result.affected}")


@router.post("/jobs/{job_id}/cancel")
def job_cancel(request: Request, job_id: str, session: Checked) -> Response:
    """Cancel a job's recipients that are still waiting."""
    result = _service_call(_dashboard(request).service.cancel, job_id, actor=session.actor)
    return _redirect(f"/jobs/{job_id}?done=cancelled&n={result.affected}")


# --- recipient lists and bulk actions ------------------------------------------------


def _recipient_query(
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
        since=_parse_time("since", since),
        until=_parse_time("until", until),
    )


def _filters(query: queries.RecipientQuery) -> dict[str, str]:
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
    page: str | None = None,
    done: str | None = None,
    n: str | None = None,
) -> Response:
    """Failed, unknown or waiting recipients, filtered, with bulk actions."""
    dash = _dashboard(request)
    query = _recipient_query(status, error_code, since, until)
    rows = queries.recipients(dash.service.db, query, page=_page_number(page))
    filters = _filters(query)
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
        message=_done(done, n),
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
    dash = _dashboard(request)
    query = _recipient_query(status, error_code, since, until)
    if action == "retry" and status in RETRYABLE:
        count = queries.count(dash.service.db, query, retryable_only=True)
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
        filters=_filters(query),
        filter_qs=urlencode(_filters(query)),
    )


def form_query(
    status: Annotated[str, Form()] = "",
    error_code: Annotated[str, Form()] = "",
    since: Annotated[str, Form()] = "",
    until: Annotated[str, Form()] = "",
) -> queries.RecipientQuery:
    """The filters a bulk action's confirmation form carries."""
    return _recipient_query(status, error_code, since, until)


FormQuery = Annotated[queries.RecipientQuery, Depends(form_query)]


def _listing(query: queries.RecipientQuery, done: str, affected: int) -> Response:
    return _redirect(f"/recipients?{urlencode(_filters(query))}&done={done}&n={affected}")


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
    result = _service_call(
        _dashboard(request).service.retry,
        actor=session.actor,
        statuses=[query.status],
        error_code=query.error_code,
        since=query.since,
        until=query.until,
        confirm_unknown=confirm_unknown == "yes",
    )
    return _listing(query, "retried", result.affected)


@router.post("/recipients/cancel")
def bulk_cancel(request: Request, session: Checked, query: FormQuery) -> Response:
    """Cancel every waiting recipient of the filter."""
    if query.status not in CANCELLABLE:
        raise DashboardError(400, "only queued or retry_wait recipients can be cancelled")
    result = _service_call(
        _dashboard(request).service.cancel_matching, query.selection(), actor=session.actor
    )
    return _listing(query, "cancelled", result.affected)


@router.get("/actions")
def actions(request: Request, session: Operator, page: str | None = None) -> Response:
    """What operators did, newest first."""
    dash = _dashboard(request)
    rows = queries.actions(dash.service.db, page=_page_number(page))
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
    service = _dashboard(request).service
    lines = _service_call(
        audit.export_csv,
        service.db,
        since=_parse_time("since", since),
        until=_parse_time("until", until),
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


# --- wiring --------------------------------------------------------------------------


async def _on_login_required(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, LoginRequired)
    return _redirect("/login?" + urlencode({"next": _safe_next(exc.next_path)}))


async def _on_dashboard_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, DashboardError)
    dash = _dashboard(request)
    session = _current(request)
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
        templates=_environment(),
        trusted_proxies=service.settings.trusted_proxies,
    )
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="dashboard-static")
    app.add_exception_handler(LoginRequired, _on_login_required)
    app.add_exception_handler(DashboardError, _on_dashboard_error)
