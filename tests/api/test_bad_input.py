"""Every bad input is a 4xx with its reason, everywhere, and never a traceback in the log.

NUL characters (PostgreSQL refuses them), lone surrogates, bytes that are not
UTF-8, times at the edges of the calendar (year 1, year 9999, offsets with no
UTC equivalent), send times long past: through ``/v1``, the drop-in endpoint,
the dashboard's forms and query strings (fuzzed with hypothesis), and the CLI
(one line, a non-zero exit). Real uvicorn on real PostgreSQL and Redis: most of
these only ever failed on PostgreSQL. ``send()`` itself is covered by
``service/test_send_validation.py``, the shared checks by
``domain/test_input_checks.py``.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_from_bytes

import pytest
import requests
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from dispatcher.domain import cursors
from dispatcher.domain.times import utcnow
from dispatcher.gateway.simulator import GatewaySimulator
from dispatcher.persistence.db import Database
from support.numbers import number
from support.reads import row_counts
from support.settings import DispatcherEnv, make_settings
from support.workers import run_cli

from .test_api import UNLIMITED, Api, error_of, logged_errors, running_api

pytestmark = pytest.mark.services

OPERATOR_PASSWORD = "correct horse battery staple 42"
CSRF = re.compile(r'name="csrf" value="([^"]+)"')
HTTP_TIMEOUT_S = 30.0
# Generated dashboard requests; each is one page render on PostgreSQL.
DASHBOARD_EXAMPLES = 200

YEAR_1_PLUS_ONE = "0001-01-01T00:00:00+01:00"
YEAR_9999_MINUS = "9999-12-31T23:59:59-23:59"
LONG_AGO = "2001-01-01T00:00:00+00:00"


@dataclass
class Stack:
    """One server (``/v1``, the drop-in, the dashboard) and clients for each."""

    api: Api
    token: str
    dashboard: requests.Session

    @property
    def db(self) -> Database:
        """The server's database."""
        return self.api.db

    def raw(
        self, method: str, path_and_query: str, body: bytes = b"", content_type: str = ""
    ) -> requests.Response:
        """A request whose query string and body go out byte for byte as given."""
        headers = {"Authorization": f"Bearer {self.token}"}
        if content_type:
            headers["Content-Type"] = content_type
        return requests.request(
            method,
            self.api.base_url + path_and_query,
            data=body,
            headers=headers,
            timeout=HTTP_TIMEOUT_S,
            allow_redirects=False,
        )

    def csrf(self) -> str:
        """The session's CSRF token, from the overview page's forms."""
        match = CSRF.search(self.dashboard.get(self.api.base_url + "/").text)
        assert match is not None
        return match.group(1)

    def form(self, path: str, **fields: str) -> requests.Response:
        """POST a dashboard form (with the CSRF token); no redirect followed."""
        return self.dashboard.post(
            self.api.base_url + path,
            data={"csrf": self.csrf(), **fields},
            timeout=HTTP_TIMEOUT_S,
            allow_redirects=False,
        )


@pytest.fixture
def stack(
    clean_env: None, pg_db: Database, broker_url: str, simulator: GatewaySimulator, tmp_path: Path
) -> Iterator[Stack]:
    """A server on PostgreSQL and Redis with a send/read/operate key and a logged-in
    dashboard session."""
    values: dict[str, Any] = {
        "broker_url": broker_url,
        **UNLIMITED,
        "operator_password": OPERATOR_PASSWORD,
        "session_secret": "s" * 40,
    }
    with (
        running_api(make_settings(pg_db, simulator, tmp_path, **values)) as api,
        requests.Session() as dashboard,
    ):
        login = dashboard.get(api.base_url + "/login", timeout=HTTP_TIMEOUT_S)
        match = CSRF.search(login.text)
        assert match is not None
        answer = dashboard.post(
            api.base_url + "/login",
            data={"secret": OPERATOR_PASSWORD, "csrf": match.group(1)},
            timeout=HTTP_TIMEOUT_S,
            allow_redirects=False,
        )
        assert answer.status_code == 303, answer.text
        yield Stack(api, api.key("shop"), dashboard)


@pytest.fixture
def quiet_log(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Fails the test if the server logs an error or a traceback: bad input is the
    caller's mistake, not the server's."""
    caplog.set_level(logging.INFO)
    yield
    loud = logged_errors(caplog.records)
    assert not loud, "\n".join(loud)


def _job(stack: Stack) -> str:
    """A real job, so that look-ups by id and filters reach the database."""
    created = stack.api.request(
        "POST", "/v1/jobs", stack.token, json={"to": number(1), "text": "seed"}
    )
    assert created.status_code == 201, created.text
    job_id: str = created.json()["id"]
    return job_id


# --- /v1 -----------------------------------------------------------------------------

BAD_JOBS = [
    ("lone surrogate in text", {"text": "a\ud800b"}, "invalid_text", "not valid Unicode"),
    ("NUL in text", {"text": "a\x00b"}, "invalid_text", "NUL"),
    ("lone surrogate in reference", {"reference": "r\udfff"}, "invalid_request", "reference"),
    ("send_at long past", {"send_at": LONG_AGO}, "invalid_option", "in the past"),
    ("send_at year 1", {"send_at": "0001-01-01T00:00:00Z"}, "invalid_option", "in the past"),
    ("send_at before year 1", {"send_at": YEAR_1_PLUS_ONE}, "invalid_option", "out of range"),
    ("send_at after year 9999", {"send_at": YEAR_9999_MINUS}, "invalid_option", "out of range"),
    ("text too long", {"text": "x" * 100_000, "maxconcat": 255}, "invalid_text", "parts"),
    ("deeply nested", {"to": [[[[[[[["447700900001"]]]]]]]]}, "invalid_request", "to"),
]


@pytest.mark.parametrize(
    ("fields", "code", "needle"),
    [pytest.param(f, c, n, id=name) for name, f, c, n in BAD_JOBS],
)
def test_api_refuses_values_the_database_cannot_hold_or_the_calendar_lacks(
    stack: Stack, quiet_log: None, fields: dict[str, Any], code: str, needle: str
) -> None:
    body = {"to": number(1), "text": "hi", **fields}
    response = stack.api.request("POST", "/v1/jobs", stack.token, json=body)
    assert response.status_code == 422, response.text
    error = error_of(response)
    assert error["code"] == code
    assert needle in error["message"]
    assert row_counts(stack.db)["jobs"] == 0


def test_api_bodies_and_queries_that_are_not_utf8_are_400(stack: Stack, quiet_log: None) -> None:
    """Bytes that are not UTF-8 are refused with the reason, not read as U+FFFD and
    stored, nor answered with FastAPI's reasonless 400."""
    json_type = "application/json"
    for body in (
        b'{"to": "447700900001", "text": "caf\xe9"}',
        b'{"to": "447700900001", "text": "\xed\xa0\x80"}',
        '{"to": "447700900001", "text": "hi"}'.encode("utf-16"),
    ):
        response = stack.raw("POST", "/v1/jobs", body, json_type)
        assert response.status_code == 400, (body, response.text)
        assert error_of(response) == {
            "code": "malformed_json",
            "message": "the body is not valid JSON: it is not UTF-8",
        }
    for query in ("reference=caf%E9", "number=%ED%A0%80", "cursor=%FF"):
        response = stack.raw("GET", "/v1/jobs?" + query)
        assert response.status_code == 400, (query, response.text)
        assert error_of(response) == {
            "code": "invalid_encoding",
            "message": "the query string is not UTF-8",
        }
    # Nested past the JSON parser's recursion limit, and a number too long for int():
    # FastAPI's own 400, with nothing logged.
    for body in (
        b'{"to": ' + b"[" * 100_000 + b"]" * 100_000 + b', "text": "hi"}',
        b'{"to": "447700900001", "text": "hi", "maxconcat": ' + b"9" * 5000 + b"}",
    ):
        response = stack.raw("POST", "/v1/jobs", body, json_type)
        assert response.status_code == 400, response.text
        error_of(response)
    # Still UTF-8, just not ASCII: untouched.
    accepted = stack.raw(
        "POST", "/v1/jobs", '{"to": "447700900001", "text": "café"}'.encode(), json_type
    )
    assert accepted.status_code == 201, accepted.text
    assert row_counts(stack.db)["jobs"] == 1


def test_api_times_at_the_calendar_edges(stack: Stack, quiet_log: None) -> None:
    """A filter time with no UTC equivalent is a 422 naming it; the edges that exist
    are ordinary filters."""
    job_id = _job(stack)
    for params in ({"since": YEAR_1_PLUS_ONE}, {"until": YEAR_9999_MINUS}):
        for path in ("/v1/jobs", "/v1/audit.csv"):
            response = stack.api.request("GET", path, stack.token, params=params)
            assert response.status_code == 422, (path, params, response.text)
            assert "out of range" in error_of(response)["message"]
    edges = {"since": "0001-01-01", "until": "9999-12-31T23:59:59Z"}
    listed = stack.api.request("GET", "/v1/jobs", stack.token, params=edges)
    assert [job["id"] for job in listed.json()["jobs"]] == [job_id]
    exported = stack.api.request("GET", "/v1/audit.csv", stack.token, params=edges)
    assert exported.status_code == 200
    assert job_id in exported.text
    for job in ("\x00", job_id[:-1] + "\x00"):
        response = stack.api.request("GET", "/v1/audit.csv", stack.token, params={"job": job})
        assert response.status_code in (400, 404), (job, response.text)


def test_a_server_fault_still_logs_its_traceback(
    stack: Stack, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The control of ``quiet_log``: what is the server's own fault is a 500 with its
    traceback in the log, as before."""
    job_id = _job(stack)

    def broken(job_id: str) -> dict[str, object]:
        raise RuntimeError("a bug of ours")

    monkeypatch.setattr(stack.api.service, "job_view", broken)
    caplog.set_level(logging.INFO)
    response = stack.api.request("GET", f"/v1/jobs/{job_id}", stack.token)
    assert response.status_code == 500
    assert error_of(response)["code"] == "internal_error"
    logged = [r for r in caplog.records if r.name == "dispatcher.api.errors"]
    assert any(r.levelno == logging.ERROR and r.exc_info for r in logged), logged


# --- the drop-in ---------------------------------------------------------------------

SEND = "/smsgateway/sendmsg.aspx"


def test_dropin_refuses_bad_bytes_and_unstorable_values(stack: Stack, quiet_log: None) -> None:
    """``ERR:INVALID_REQUEST`` for each, GET or POST form, and nothing queued; bytes that
    are not UTF-8 with a 400, the rest with the gateway's own 200."""
    login = f"username=shop&password={quote(stack.token)}&to={number(1)}"
    for params, status in (
        ("text=caf%E9", 400),
        ("text=%ED%A0%80", 400),
        ("text=hi&usercontext=%FF", 400),
        ("text=a%00b", 200),
        ("text=hi&usercontext=a%00", 200),
        ("text=hi&from=A%00", 200),
        ("text=hi&maxconcat=%00", 200),
        ("text=hi&maxconcat=" + "9" * 5000, 200),
    ):
        query = f"{login}&{params}"
        for response in (
            stack.raw("GET", f"{SEND}?{query}"),
            stack.raw("POST", SEND, query.encode(), "application/x-www-form-urlencoded"),
        ):
            assert (response.status_code, response.text) == (status, "ERR:INVALID_REQUEST"), (
                params,
                response.request.method,
            )
    assert row_counts(stack.db)["jobs"] == 0
    sent = stack.raw("GET", f"{SEND}?{login}&text=caf%C3%A9")
    assert sent.text.startswith("ID:"), sent.text


def test_dropin_refuses_a_multipart_form_that_is_not_utf8(stack: Stack, quiet_log: None) -> None:
    """A multipart form is a form too: Starlette would read a value that is not UTF-8
    as Latin-1 and queue the mojibake as the SMS."""
    login = {"username": "shop", "password": stack.token, "to": number(1)}

    def multipart(text: bytes) -> requests.Response:
        fields = {name: (None, value.encode()) for name, value in login.items()}
        return requests.post(
            stack.api.base_url + SEND,
            files={**fields, "text": (None, text)},
            timeout=HTTP_TIMEOUT_S,
        )

    refused = multipart(b"caf\xe9")
    assert (refused.status_code, refused.text) == (400, "ERR:INVALID_REQUEST")
    assert row_counts(stack.db)["jobs"] == 0
    sent = multipart("café".encode())
    assert sent.text.startswith("ID:"), sent.text


# --- the dashboard -------------------------------------------------------------------


def test_dashboard_query_strings_and_forms_are_4xx(stack: Stack, quiet_log: None) -> None:
    job_id = _job(stack)
    for path in (
        "/search?q=%00",
        "/search?q=44%00",
        "/search?q=%FF",
        # Pages are reached by cursor now, not ?page=N: cursors that are not one.
        "/search?q=a&after=%D9%A1",  # an Arabic-Indic digit: not even base64
        "/search?q=a&after=" + "9" * 5000,
        "/recipients?error_code=%C2%B2",
        f"/jobs/{job_id}?after=0",
        "/actions?after=%00",
    ):
        response = stack.dashboard.get(stack.api.base_url + path, timeout=HTTP_TIMEOUT_S)
        assert response.status_code == 400, (path, response.status_code)
    # Times no calendar holds are ValidationErrors: 422, as in /v1 (dispatcher.errors.ANSWERS).
    for path in (
        f"/recipients?since={quote(YEAR_1_PLUS_ONE)}",
        f"/recipients?until={quote(YEAR_9999_MINUS)}",
        "/recipients?since=2026-01-01T00:00:00%2B25:00",
        f"/recipients/confirm?action=retry&status=failed&since={quote(YEAR_1_PLUS_ONE)}",
    ):
        response = stack.dashboard.get(stack.api.base_url + path, timeout=HTTP_TIMEOUT_S)
        assert response.status_code == 422, (path, response.status_code)
    for path in ("/jobs/%00", f"/jobs/{job_id[:-1]}%00", "/jobs/%ED%A0%80"):
        response = stack.dashboard.get(stack.api.base_url + path, timeout=HTTP_TIMEOUT_S)
        assert response.status_code == 404, (path, response.status_code)
    for path in ("/recipients?since=0001-01-01", "/?done=retried&n=" + "9" * 5000):
        response = stack.dashboard.get(stack.api.base_url + path, timeout=HTTP_TIMEOUT_S)
        assert response.status_code == 200, (path, response.status_code)

    # The service's ValidationErrors are 422 (dispatcher.errors.ANSWERS); the dashboard's
    # own checks of a form, 400.
    for path, fields, status in (
        ("/pause", {"reason": "a\x00b"}, 422),
        ("/recipients/retry", {"status": "failed", "since": YEAR_1_PLUS_ONE}, 422),
        ("/recipients/cancel", {"status": "queued", "until": YEAR_9999_MINUS}, 422),
        ("/recipients/retry", {"status": "failed", "error_code": "A\x00"}, 400),
        (f"/jobs/{job_id}/retry", {"status": "failed", "number": "44\x00"}, 422),
        ("/jobs/%00/retry", {"status": "failed"}, 404),
        ("/jobs/%00/cancel", {}, 404),
        ("/export.csv", {"since": YEAR_1_PLUS_ONE}, 422),
        ("/export.csv", {"since": "0001-01-01", "until": YEAR_9999_MINUS}, 422),
        ("/export.csv", {"job": "\x00"}, 404),
    ):
        response = stack.form(path, **fields)
        assert response.status_code == status, (path, fields, response.status_code)
    not_utf8 = b"csrf=" + stack.csrf().encode() + b"&reason=caf%E9"
    response = stack.dashboard.post(
        stack.api.base_url + "/pause",
        data=not_utf8,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        timeout=HTTP_TIMEOUT_S,
        allow_redirects=False,
    )
    assert response.status_code == 400
    assert stack.api.service.control()["paused"] is False


EDGES = [
    "",
    "0",
    "-1",
    "\u00b2",  # superscript two: isdigit(), but int() refuses it
    "\u0661",  # an Arabic-Indic digit one: isdigit(), and int() takes it
    "9" * 5000,
    "0001-01-01",
    "0001-01-01T00:00:00Z",
    YEAR_1_PLUS_ONE,
    YEAR_9999_MINUS,
    "9999-12-31T23:59:59Z",
    "\x00",
]
# Each route with the query parameters it reads, and values it would take.
ROUTES: dict[str, tuple[str, ...]] = {
    "/": ("done", "n"),
    "/search": ("q", "after"),
    "/recipients": ("status", "error_code", "since", "until", "after", "done", "n"),
    "/recipients/confirm": ("action", "status", "error_code", "since", "until"),
    "/jobs/{job}": ("after", "status", "done", "n"),
    "/actions": ("after",),
    "/login": ("next",),
}
_TIMES = st.datetimes(min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2100, 1, 1)).map(
    lambda t: t.isoformat()
)
LIKELY: dict[str, st.SearchStrategy[str]] = {
    "done": st.sampled_from(["retried", "cancelled", "paused", "resumed"]),
    "n": st.integers(0, 10**6).map(str),
    "q": st.sampled_from([number(1), "07700 900001", "seed", "10011000000000000001"]),
    # Cursors of each listing, any of them on any page.
    "after": st.builds(cursors.encode_id, st.sampled_from(["r1", "a1"]), st.integers(1, 10**6))
    | st.builds(
        cursors.encode_time_id,
        st.sampled_from(["s1", "l1"]),
        st.datetimes(timezones=st.just(dt.UTC)),
        st.integers(1, 10**6),
    ),
    "status": st.sampled_from(["failed", "unknown", "queued", "retry_wait", "sent", "expired"]),
    "error_code": st.sampled_from(["GATEWAY_ERROR", "INVALID_NUMBER", "gateway_error"]),
    "since": _TIMES | _TIMES.map(lambda t: t[:10]),
    "until": _TIMES,
    "action": st.sampled_from(["retry", "cancel"]),
    "next": st.sampled_from(["/", "/search?q=1", "//elsewhere.test/"]),
}


def _any_value() -> st.SearchStrategy[bytes]:
    """Query values as raw bytes: edges, any text (lone surrogates as the bytes that
    would carry them), any bytes at all, and times with any offset."""
    text = st.text(max_size=30).map(lambda s: s.encode("utf-8", "surrogatepass"))
    times = st.datetimes(
        min_value=dt.datetime(1, 1, 1), timezones=st.one_of(st.none(), st.timezones())
    )
    return st.one_of(
        st.sampled_from(EDGES).map(str.encode),
        text,
        st.binary(max_size=30),
        times.map(lambda t: t.isoformat().encode()),
    )


def test_dashboard_query_parameters_fuzzed_never_5xx(stack: Stack, quiet_log: None) -> None:
    """Hypothesis draws a page and values for the parameters it reads (and a job id in
    the path), each either one the page takes or anything at all: every answer is
    below 500, and nothing is logged as an error."""
    job_id = _job(stack)
    anything = _any_value()
    failures: list[str] = []

    @given(route=st.sampled_from(sorted(ROUTES)), data=st.data())
    @settings(
        max_examples=DASHBOARD_EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def visit(route: str, data: st.DataObject) -> None:
        path = route
        if "{job}" in route:
            job = data.draw(st.just(job_id.encode()) | anything, label="job")
            path = route.format(job=quote_from_bytes(job, safe=""))
        query = []
        for name in ROUTES[route]:
            if data.draw(st.booleans(), label=f"with {name}"):
                value = data.draw(LIKELY[name].map(str.encode) | anything, label=name)
                query.append(f"{name}={quote_from_bytes(value, safe='')}")
        url = stack.api.base_url + path + ("?" + "&".join(query) if query else "")
        response = stack.dashboard.get(url, timeout=HTTP_TIMEOUT_S, allow_redirects=False)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        if response.status_code >= 500:
            failures.append(f"{response.status_code} for {url}")

    statuses: dict[int, int] = {}
    visit()
    assert not failures, "\n".join(failures[:10])
    # The draws reach the pages themselves, not only their refusals.
    assert statuses.get(200, 0) >= DASHBOARD_EXAMPLES // 10, statuses


# --- the CLI -------------------------------------------------------------------------


def _one_line(done: Any, *needles: str) -> None:
    """Exit 2 with one ``error:`` line on stderr naming the problem, no traceback."""
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        pytest.param(["send", "--to", "07700900123", "caf\udce9"], "not valid Unicode", id="text"),
        pytest.param(["send", "--to", "0770\udcff", "hi"], "not valid Unicode", id="number"),
        pytest.param(["status", "01M\udcff"], "not valid Unicode", id="status"),
        pytest.param(["jobs", "--reference", "r\udcff"], "not valid Unicode", id="reference"),
        pytest.param(["retry", "--error-code", "A\udcff"], "not valid Unicode", id="error-code"),
        pytest.param(["pause", "--reason", "r\udcff"], "not valid Unicode", id="reason"),
        pytest.param(["keys", "revoke", "k\udcff"], "not valid Unicode", id="key-name"),
        pytest.param(
            ["send", "--to", "07700900123", "--at", LONG_AGO, "hi"], "in the past", id="at-past"
        ),
    ],
)
def test_cli_bad_arguments_are_one_line(
    pipeline_env: DispatcherEnv, tmp_path: Path, args: list[str], needle: str
) -> None:
    """On PostgreSQL, where a lone surrogate or a NUL used to be a driver traceback.
    (Bytes that are not UTF-8 reach Python as lone surrogates; subprocess passes
    ``\\udcXX`` back out as the byte itself.)"""
    _one_line(run_cli(pipeline_env, tmp_path, *args), needle)


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["send", "--to", "07700900123", "--at", YEAR_1_PLUS_ONE, "hi"], id="at"),
        pytest.param(["retry", "--since", YEAR_1_PLUS_ONE], id="retry-since"),
        pytest.param(["retry", "--until", YEAR_9999_MINUS], id="retry-until"),
        pytest.param(["export", "--until", YEAR_9999_MINUS, "-o", "-"], id="export-until"),
    ],
)
def test_cli_times_out_of_range_are_usage_errors(
    pipeline_env: DispatcherEnv, pg_db: Database, tmp_path: Path, args: list[str]
) -> None:
    """Click's own usage error (exit 2), naming the option and the reason."""
    done = run_cli(pipeline_env, tmp_path, *args)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    assert "is out of range: it has no time in UTC" in done.stderr
    assert row_counts(pg_db)["jobs"] == 0


def test_cli_send_at_within_the_tolerance_is_sent_at_once(
    pipeline_env: DispatcherEnv, tmp_path: Path
) -> None:
    just_now = (utcnow() - dt.timedelta(minutes=1)).isoformat()
    done = run_cli(pipeline_env, tmp_path, "send", "--to", "07700900123", "--at", just_now, "hi")
    assert done.returncode == 0, done.stderr
