"""The HTTP API (docs/design.md section 5) over real HTTP: uvicorn on real PostgreSQL and Redis.

Every test talks to a live server with ``requests``, as a client would. The
server runs in a thread of the test process (so its log records reach
``caplog``), except in the end-to-end test, which starts ``dispatcher serve``
as a child process beside a real worker.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Ok
from sqlalchemy import func, select

from dispatcher.api import create_app
from dispatcher.api.ratelimit import REDIS_KEY_PREFIX
from dispatcher.api.server import ServerThread
from dispatcher.config import Settings
from dispatcher.domain.lanes import Priority
from dispatcher.errors import (
    ANSWERS,
    AuthenticationError,
    ConfigurationError,
    ConfirmationRequiredError,
    ConflictError,
    DispatcherError,
    GatewayConnectError,
    GatewayError,
    IncompleteReplyError,
    InvalidCursorError,
    InvalidNumberError,
    InvalidOptionError,
    InvalidSenderError,
    InvalidTextError,
    NoRecipientsError,
    NotFoundError,
    PermanentGatewayError,
    SenderNotAllowedError,
    TooManyRecipientsError,
    UnsafeCallbackError,
    ValidationError,
    answer_for,
)
from dispatcher.gateway.simulator import GatewaySimulator
from dispatcher.persistence.db import Database
from dispatcher.persistence.models import Job, OperatorAction
from dispatcher.service.dispatcher import Dispatcher
from dispatcher.service.keys import KeyStore
from support.numbers import number
from support.pipeline import Pipeline
from support.polling import wait_until
from support.reads import recipients_of, row_counts
from support.refusals import REFUSALS, refuse_with
from support.services import REDIS_HOST, REDIS_PORT
from support.settings import make_settings

pytestmark = pytest.mark.services

HTTP_TIMEOUT_S = 30.0
# Generated requests per operation and generation mode (valid, invalid).
FUZZ_EXAMPLES = 30
# What every answer to a generated request must satisfy: no 5xx, and the status,
# media type, headers and body the OpenAPI document promises.
CONFORMANCE = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
# High enough that no test but the rate-limit ones meets the limit.
UNLIMITED = {"api_rate_per_s": 10_000.0, "api_burst": 10_000}

# A scheduled time a little ahead (send_at is at most 366 days ahead), fixed
# enough to assert on.
NEXT_YEAR = dt.date.today().year + 1


class CountingWaker:
    """Counts wake-ups instead of sending them: proof that a replay wakes nobody."""

    def __init__(self) -> None:
        self.woken = 0
        self.lanes: list[Priority] = []
        self._lock = threading.Lock()

    def __call__(self, count: int, lane: Priority = Priority.NORMAL) -> None:
        with self._lock:
            self.woken += count
            self.lanes.append(lane)


@dataclass
class Api:
    """A live API server on a Dispatcher of its own, and a client for it."""

    base_url: str
    service: Dispatcher
    waker: CountingWaker
    http: requests.Session = field(default_factory=requests.Session)

    @property
    def db(self) -> Database:
        """The service's database."""
        return self.service.db

    def key(
        self, name: str, scopes: str = "send,read,operate", senders: list[str] | None = None
    ) -> str:
        """A new API key's token; ``senders`` are granted to it."""
        token, _info = KeyStore(self.db).create(name, scopes, actor="test", senders=senders)
        return token

    def request(
        self, method: str, path: str, token: str | None = None, **kwargs: Any
    ) -> requests.Response:
        """``method path`` with the token as a bearer credential, if given."""
        headers = dict(kwargs.pop("headers", {}))
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return self.http.request(
            method, self.base_url + path, headers=headers, timeout=HTTP_TIMEOUT_S, **kwargs
        )


@contextmanager
def running_api(settings_: Settings) -> Iterator[Api]:
    """A server on a new Dispatcher for ``settings_``, stopped and closed afterwards."""
    waker = CountingWaker()
    service = Dispatcher(settings_, waker=waker)
    try:
        with ServerThread(create_app(service)) as server:
            api = Api(server.base_url, service, waker)
            try:
                yield api
            finally:
                api.http.close()
    finally:
        service.close()


ApiFactory = Callable[..., Api]
Operation = schemathesis.APIOperation[Any, Any, Any, Any]


@pytest.fixture
def api_factory(
    clean_env: None,
    pg_db: Database,
    broker_url: str,
    simulator: GatewaySimulator,
    tmp_path: Path,
) -> Iterator[ApiFactory]:
    """Starts API servers on PostgreSQL, Redis and the simulator, with settings overridden."""
    stack: list[Any] = []

    def start(**overrides: Any) -> Api:
        values = {"broker_url": broker_url, **UNLIMITED, **overrides}
        manager = running_api(make_settings(pg_db, simulator, tmp_path, **values))
        api = manager.__enter__()
        stack.append(manager)
        return api

    try:
        yield start
    finally:
        for manager in reversed(stack):
            manager.__exit__(None, None, None)


@pytest.fixture
def api(api_factory: ApiFactory) -> Api:
    """One API server with default limits lifted."""
    return api_factory()


def error_of(response: requests.Response) -> dict[str, Any]:
    """The ``error`` object of a refusal, checking its shape on the way."""
    assert response.headers["content-type"].startswith("application/json"), response.text
    body = response.json()
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    assert isinstance(error["code"], str)
    assert error["code"]
    assert isinstance(error["message"], str)
    assert error["message"]
    return error


def logged_errors(records: list[logging.LogRecord]) -> list[str]:
    """The server's log records at ERROR or with a traceback, one line each: none is
    allowed for a bad request, which is the client's mistake and not the server's."""
    return [
        f"{r.levelname} {r.name}: {r.getMessage()[:200]}"
        for r in records
        if (r.levelno >= logging.ERROR or r.exc_info) and not r.name.startswith("urllib3")
    ]


def create_job(api: Api, token: str, **body: Any) -> dict[str, Any]:
    """POST /v1/jobs, which must answer 201; its body."""
    response = api.request("POST", "/v1/jobs", token, json=body)
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


# --- keys and scopes ---------------------------------------------------------------

JOB_ID = "01M00000000000000000000000"
# Each route and the scopes that open it (any one of them).
ROUTES = [
    ("POST", "/v1/jobs", {"send"}),
    ("GET", "/v1/jobs", {"read"}),
    ("GET", f"/v1/jobs/{JOB_ID}", {"read"}),
    ("POST", f"/v1/jobs/{JOB_ID}/retry", {"send", "operate"}),
    ("POST", f"/v1/jobs/{JOB_ID}/cancel", {"send", "operate"}),
    ("GET", f"/v1/audit.csv?job={JOB_ID}", {"read", "operate"}),
]


def test_every_route_needs_a_live_key_with_its_scope(api: Api) -> None:
    """401 (with a Bearer challenge) without a key or with an unknown or revoked one;
    403 for a live key with none of the route's scopes. No answer echoes the token."""
    tokens = {scope: api.key(f"only-{scope}", scope) for scope in ("send", "read", "operate")}
    revoked = api.key("gone")
    KeyStore(api.db).revoke("gone", actor="test")
    body = {"to": number(1), "text": "hi"}
    for method, path, scopes in ROUTES:
        kwargs: dict[str, Any] = {"json": body} if path == "/v1/jobs" and method == "POST" else {}
        missing = api.request(method, path, **kwargs)
        assert missing.status_code == 401, (method, path, missing.text)
        assert missing.headers["WWW-Authenticate"].startswith("Bearer")
        assert error_of(missing)["code"] == "unauthorized"
        for bad in ("sdk_not-a-real-token", revoked):
            refused = api.request(method, path, bad, **kwargs)
            assert refused.status_code == 401, (method, path, refused.text)
            assert refused.headers["WWW-Authenticate"].startswith("Bearer")
            assert bad not in refused.text
        basic = api.request(method, path, headers={"Authorization": "Basic dXNlcjpwYXNz"}, **kwargs)
        assert basic.status_code == 401
        for other, token in tokens.items():
            if other in scopes:
                continue
            forbidden = api.request(method, path, token, **kwargs)
            assert forbidden.status_code == 403, (method, path, other, forbidden.text)
            assert error_of(forbidden)["code"] == "forbidden"
            assert all(scope in error_of(forbidden)["message"] for scope in scopes)
            assert token not in forbidden.text
    assert row_counts(api.db)["jobs"] == 0


def test_health_and_openapi_need_no_key(api: Api) -> None:
    """/healthz reports both dependencies; /openapi.json documents every /v1 route."""
    health = api.request("GET", "/healthz")
    assert health.status_code == 200
    assert health.json() == {"database": "ok", "broker": "ok"}
    document = api.request("GET", "/openapi.json").json()
    assert {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/retry"} <= set(document["paths"])
    assert "/v1/jobs/{job_id}/cancel" in document["paths"]
    assert "HTTPBearer" in document["components"]["securitySchemes"]
    assert not any(p.startswith("/smsgateway") for p in document["paths"])


# --- enqueue and read ----------------------------------------------------------------


def test_create_then_read_a_job(api: Api) -> None:
    """201 with the job's id and what was queued; GET shows each recipient (design section 5)."""
    token = api.key("shop", "send,read", senders=["Acme"])
    created = create_job(
        api,
        token,
        to=["+44 7700 900001", "07700900002", "07700 900001", "not-a-number"],
        text="Your code is 123456",
        sender="Acme",
        reference="order-17",
    )
    assert created["status"] == "in_progress"
    assert created["accepted"] == 2
    assert created["batches"] == 1
    assert created["parts"] == 1
    assert created["replayed"] is False
    assert [r["number"] for r in created["refused"]] == ["not-a-number"]
    assert api.waker.woken == 1

    view = api.request("GET", f"/v1/jobs/{created['id']}", token)
    assert view.status_code == 200
    job = view.json()
    assert job["id"] == created["id"]
    assert job["status"] == "in_progress"
    assert (job["reference"], job["created_by"]) == ("order-17", "api:shop")
    by_number = {r["number"]: r for r in job["recipients"]}
    assert set(by_number) == {number(1), number(2), "not-a-number"}
    for recipient in job["recipients"]:
        assert {"number", "status", "gateway_message_id", "error_code", "attempts"} <= set(
            recipient
        )
    assert by_number[number(1)]["status"] == "queued"
    assert by_number["not-a-number"]["status"] == "failed"
    assert by_number["not-a-number"]["error_code"] == "INVALID_NUMBER"
    with api.db.transaction() as session:
        row = session.get(Job, created["id"])
        assert row is not None
        assert row.created_by == "api:shop"
        assert row.reference == "order-17"
        assert row.sender == "Acme"


def test_comma_separated_string_is_accepted(api: Api) -> None:
    """``to`` may be one string of comma-separated numbers, as the gateway takes it."""
    token = api.key("shop")
    created = create_job(api, token, to=f"{number(1)},{number(2)}", text="hi", kind="voice")
    assert created["accepted"] == 2
    job = api.request("GET", f"/v1/jobs/{created['id']}", token).json()
    assert job["kind"] == "voice"


def test_unknown_job_ids_are_404(api: Api) -> None:
    """An id that is not a job's (well-formed or not) is a 404 with a reason, everywhere."""
    token = api.key("ops")
    for job_id in (JOB_ID, "nope", "x" * 300, "%00"):
        for method, suffix in (("GET", ""), ("POST", "/retry"), ("POST", "/cancel")):
            response = api.request(method, f"/v1/jobs/{job_id}{suffix}", token)
            assert response.status_code == 404, (job_id, suffix, response.text)
            assert error_of(response)["code"] == "not_found"


def test_a_thousand_recipients_in_one_request(api: Api) -> None:
    """One request queues 1,000 recipients in 10 batches, and reading them back works."""
    token = api.key("bulk")
    numbers = [number(i) for i in range(1000)]
    started = time.perf_counter()
    created = create_job(api, token, to=numbers, text="Service notice")
    elapsed_s = time.perf_counter() - started
    assert created["accepted"] == 1000
    assert created["batches"] == 10
    assert elapsed_s < 10, f"1,000 recipients took {elapsed_s:.1f} s"
    job = api.request("GET", f"/v1/jobs/{created['id']}", token).json()
    assert [r["number"] for r in job["recipients"]] == numbers
    assert job["counts"] == {"queued": 1000}


# --- bad input: 4xx with a reason, nothing written -----------------------------------

BAD_BODIES: list[tuple[str, Any, int, str]] = [
    ("wrong type for to", {"to": 447700900001, "text": "hi"}, 422, "invalid_request"),
    (
        "wrong type for maxconcat",
        {"to": "447700900001", "text": "hi", "maxconcat": "2"},
        422,
        "invalid_request",
    ),
    (
        "unknown field",
        {"to": "447700900001", "text": "hi", "colour": "red"},
        422,
        "invalid_request",
    ),
    ("missing text", {"to": "447700900001"}, 422, "invalid_request"),
    ("empty text", {"to": "447700900001", "text": ""}, 422, "invalid_text"),
    ("blank text", {"to": "447700900001", "text": "   "}, 422, "invalid_text"),
    ("NUL in text", {"to": "447700900001", "text": "a\x00b"}, 422, "invalid_text"),
    ("too long for maxconcat", {"to": "447700900001", "text": "x" * 200}, 422, "invalid_text"),
    ("no valid recipient", {"to": ["abc", "12"], "text": "hi"}, 422, "no_recipients"),
    ("no recipient at all", {"to": [], "text": "hi"}, 422, "no_recipients"),
    ("NUL in a number", {"to": ["447700900001", "44\x00"], "text": "hi"}, 422, "invalid_request"),
    (
        "maxconcat out of range",
        {"to": "447700900001", "text": "hi", "maxconcat": 0},
        422,
        "invalid_request",
    ),
    ("unknown kind", {"to": "447700900001", "text": "hi", "kind": "fax"}, 422, "invalid_request"),
    (
        "sender too long",
        {"to": "447700900001", "text": "hi", "sender": "ACME-SUPPLIES-LTD"},
        422,
        "invalid_sender",
    ),
    (
        "control character in reference",
        {"to": "447700900001", "text": "hi", "reference": "a\nb"},
        422,
        "invalid_request",
    ),
    (
        "callback without a webhook secret",
        {"to": "447700900001", "text": "hi", "callback_url": "https://example.test/hook"},
        422,
        "invalid_option",
    ),
    (
        "callback not a URL",
        {"to": "447700900001", "text": "hi", "callback_url": "http://["},
        422,
        "invalid_request",
    ),
    ("an array, not an object", ["447700900001", "hi"], 422, "invalid_request"),
]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [pytest.param(b, s, c, id=name) for name, b, s, c in BAD_BODIES],
)
def test_bad_bodies_are_refused_whole(api: Api, body: Any, status: int, code: str) -> None:
    """Each bad request is a 4xx with a code and a reason, and writes nothing."""
    token = api.key("shop")
    response = api.request("POST", "/v1/jobs", token, json=body)
    assert response.status_code == status, response.text
    assert error_of(response)["code"] == code
    assert row_counts(api.db)["jobs"] == 0
    assert api.waker.woken == 0


def test_malformed_json_and_other_media_types(api: Api) -> None:
    """Not JSON: 400 ``malformed_json``; a form instead of JSON: 422. Nothing written."""
    token = api.key("shop")
    headers = {"Content-Type": "application/json"}
    for raw in (b"{bad", b'{"to": "447700900001", "text": "hi"', b"\xff\xfe", b""):
        response = api.request("POST", "/v1/jobs", token, data=raw, headers=headers)
        assert response.status_code in (400, 422), (raw, response.text)
        assert error_of(response)["code"] in ("malformed_json", "invalid_request")
    form = api.request("POST", "/v1/jobs", token, data={"to": "447700900001", "text": "hi"})
    assert form.status_code == 422
    assert error_of(form)["code"] == "invalid_request"
    validation = api.request("POST", "/v1/jobs", token, json={"text": 5})
    details = error_of(validation)["details"]
    assert {tuple(d["loc"]) for d in details} >= {("body", "to"), ("body", "text")}
    assert row_counts(api.db)["jobs"] == 0


def test_recipients_per_job_are_capped(api_factory: ApiFactory) -> None:
    """More numbers than DISPATCHER_MAX_RECIPIENTS_PER_JOB: 422 with the reason."""
    api = api_factory(max_recipients_per_job=5)
    token = api.key("shop")
    at_cap = api.request(
        "POST", "/v1/jobs", token, json={"to": [number(i) for i in range(5)], "text": "hi"}
    )
    assert at_cap.status_code == 201
    over = api.request(
        "POST", "/v1/jobs", token, json={"to": ",".join(number(i) for i in range(6)), "text": "hi"}
    )
    assert over.status_code == 422
    error = error_of(over)
    assert error["code"] == "too_many_recipients"
    assert "DISPATCHER_MAX_RECIPIENTS_PER_JOB" in error["message"]
    assert row_counts(api.db)["jobs"] == 1


def _raw_http(base_url: str, head: bytes, chunks: list[bytes]) -> bytes:
    """Send a request head and body chunks on a socket, without finishing the body if
    the chunks do not; return whatever the server answers."""
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head)
        for piece in chunks:
            sock.sendall(piece)
        reply = b""
        while b"\r\n\r\n" not in reply or len(reply) < reply.index(b"\r\n\r\n") + 20:
            data = sock.recv(65536)
            if not data:
                break
            reply += data
        return reply


def test_oversized_bodies_are_refused_while_reading(api_factory: ApiFactory) -> None:
    """413 from the Content-Length before any body byte is read, and for a chunked body
    as soon as it passes the limit, the rest never sent; nothing written."""
    api = api_factory(max_body_bytes=4096)
    token = api.key("shop")
    fits = {"to": number(1), "text": "x" * 100}
    assert api.request("POST", "/v1/jobs", token, json=fits).status_code == 201

    big = {"to": number(2), "text": "x" * 5000, "maxconcat": 255}
    response = api.request("POST", "/v1/jobs", token, json=big)
    assert response.status_code == 413
    assert error_of(response)["code"] == "body_too_large"

    def chunks() -> Iterator[bytes]:
        yield b'{"to": "447700900003", "text": "'
        for _ in range(10):
            yield b"y" * 1000
        yield b'"}'

    chunked = api.request(
        "POST", "/v1/jobs", token, data=chunks(), headers={"Content-Type": "application/json"}
    )
    assert chunked.status_code == 413

    # A body that claims 10 GB: refused on its head, with none of the body sent.
    head = (
        f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
        "Content-Type: application/json\r\nContent-Length: 10000000000\r\n\r\n"
    ).encode()
    assert _raw_http(api.base_url, head, []).startswith(b"HTTP/1.1 413")
    # A chunked body that never ends: refused once 4 KiB have arrived.
    head = (
        f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    chunk = b"400\r\n" + b"z" * 1024 + b"\r\n"
    assert _raw_http(api.base_url, head, [chunk] * 5).startswith(b"HTTP/1.1 413")
    assert row_counts(api.db)["jobs"] == 1


# --- idempotency -------------------------------------------------------------------


def test_idempotent_replay_writes_and_sends_nothing(api: Api) -> None:
    """The same key and body again: 200, the same job, ``Idempotent-Replayed: true``,
    no row written and no worker woken."""
    token = api.key("shop")
    body = {"to": [number(1), "nope"], "text": "Your code is 1", "reference": "r1"}
    headers = {"Idempotency-Key": "order-1"}
    first = api.request("POST", "/v1/jobs", token, json=body, headers=headers)
    assert first.status_code == 201
    assert "Idempotent-Replayed" not in first.headers
    before = row_counts(api.db)
    again = api.request("POST", "/v1/jobs", token, json=body, headers=headers)
    assert again.status_code == 200, again.text
    assert again.headers["Idempotent-Replayed"] == "true"
    replay = again.json()
    assert replay["id"] == first.json()["id"]
    assert replay["replayed"] is True
    assert replay["accepted"] == first.json()["accepted"]
    assert replay["batches"] == first.json()["batches"]
    assert [r["number"] for r in replay["refused"]] == ["nope"]
    assert row_counts(api.db) == before
    assert api.waker.woken == 1
    # The key belongs to the API key that used it: another key's same key is its own job.
    other = api.key("other-shop")
    theirs = api.request("POST", "/v1/jobs", other, json=body, headers=headers)
    assert theirs.status_code == 201
    assert theirs.json()["id"] != replay["id"]


def test_idempotency_key_reused_for_another_body_is_409(api: Api) -> None:
    """Same key, different request: 409 naming the conflict; nothing written."""
    token = api.key("shop")
    headers = {"Idempotency-Key": "order-2"}
    api.request("POST", "/v1/jobs", token, json={"to": number(1), "text": "a"}, headers=headers)
    before = row_counts(api.db)
    response = api.request(
        "POST", "/v1/jobs", token, json={"to": number(1), "text": "b"}, headers=headers
    )
    assert response.status_code == 409
    assert error_of(response)["code"] == "idempotency_conflict"
    assert row_counts(api.db) == before
    bad_key = api.request(
        "POST",
        "/v1/jobs",
        token,
        json={"to": number(1), "text": "a"},
        headers={"Idempotency-Key": "k" * 201},
    )
    assert bad_key.status_code == 422


def test_concurrent_duplicates_make_one_job(api: Api) -> None:
    """Eight identical requests at once with one key: one job, one 201, seven replays."""
    token = api.key("shop")
    body = {"to": [number(i) for i in range(150)], "text": "flash sale"}
    barrier = threading.Barrier(8)
    results: list[requests.Response] = []
    lock = threading.Lock()

    def post() -> None:
        with requests.Session() as http:
            barrier.wait()
            response = http.post(
                api.base_url + "/v1/jobs",
                json=body,
                headers={"Authorization": f"Bearer {token}", "Idempotency-Key": "burst-1"},
                timeout=HTTP_TIMEOUT_S,
            )
        with lock:
            results.append(response)

    threads = [threading.Thread(target=post) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r.status_code for r in results) == [200] * 7 + [201], [r.text for r in results]
    assert len({r.json()["id"] for r in results}) == 1
    counts = row_counts(api.db)
    assert counts["jobs"] == 1
    assert counts["recipients"] == 150
    assert counts["batches"] == 2


# --- listing -----------------------------------------------------------------------


def test_list_jobs_pages_and_filters(api: Api) -> None:
    """Newest first, cursor pagination without gaps or repeats, and every filter."""
    token = api.key("shop")
    ids = []
    for i in range(7):
        to = [number(i)] + (["abc"] if i == 5 else [])
        ids.append(create_job(api, token, to=to, text=f"job {i}", reference=f"ref-{i % 2}")["id"])
    newest_first = list(reversed(ids))

    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 3}
        if cursor is not None:
            params["cursor"] = cursor
        page = api.request("GET", "/v1/jobs", token, params=params).json()
        seen += [job["id"] for job in page["jobs"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == newest_first
    assert pages == 3

    def listed(**params: Any) -> list[str]:
        response = api.request("GET", "/v1/jobs", token, params=params)
        assert response.status_code == 200, response.text
        return [job["id"] for job in response.json()["jobs"]]

    assert listed(reference="ref-1") == [ids[5], ids[3], ids[1]]
    assert listed(number="07700 900003") == [ids[3]]
    assert listed(number="+447700900004") == [ids[4]]
    assert listed(status="failed") == [ids[5]]
    assert listed(status="failed", reference="ref-0") == []
    created_4 = api.request("GET", f"/v1/jobs/{ids[4]}", token).json()["created_at"]
    assert listed(since=created_4) == [ids[6], ids[5], ids[4]]
    assert listed(until=created_4) == [ids[3], ids[2], ids[1], ids[0]]
    summary = api.request("GET", "/v1/jobs", token, params={"limit": 1}).json()["jobs"][0]
    assert summary == {
        "id": ids[6],
        "created_at": summary["created_at"],
        "status": "in_progress",
        "reference": "ref-0",
        "priority": "normal",
        "send_at": None,
        "recipients": 1,
        "parts": 1,
        "credits": 1,
        "counts": {"queued": 1},
    }


def test_list_jobs_refuses_bad_cursors_and_filters(api: Api) -> None:
    """A cursor the API did not give is 400; a bad status, number or limit is 422."""
    token = api.key("shop")
    create_job(api, token, to=number(1), text="hi")
    forged = [
        "nope",
        "!!!",
        base64.urlsafe_b64encode(b"j1:lowercase-not-an-id-xxxx").decode(),
        base64.urlsafe_b64encode(JOB_ID.encode()).decode(),
        "\x00",
    ]
    for cursor in forged:
        response = api.request("GET", "/v1/jobs", token, params={"cursor": cursor})
        assert response.status_code == 400, (cursor, response.text)
        assert error_of(response)["code"] == "invalid_cursor"
    for params in (
        {"status": "lost"},
        {"number": "abc"},
        {"limit": 0},
        {"limit": 1000},
        {"since": "yesterday"},
        {"reference": "a\x01"},
    ):
        response = api.request("GET", "/v1/jobs", token, params=params)
        assert response.status_code == 422, (params, response.text)
        error_of(response)


# --- operator actions ------------------------------------------------------------------


def _actions(db: Database) -> list[OperatorAction]:
    with db.transaction() as session:
        return list(session.scalars(select(OperatorAction).order_by(OperatorAction.id)))


def test_retry_and_cancel_are_audited_with_the_key(api: Api, simulator: GatewaySimulator) -> None:
    """Retry queues failed recipients again and cancel stops queued ones; both are
    operator_actions rows whose actor is ``api:<key name>``."""
    token = api.key("ops")
    simulator.configure(number_rules={number(2): "INVALID_NUMBER"})
    sent = create_job(api, token, to=[number(1), number(2)], text="hello")
    api.service.dispatch_due(worker="test")
    by_number = {r.number: r.status for r in recipients_of(api.db, sent["id"])}
    assert by_number == {number(1): "sent", number(2): "failed"}

    simulator.configure(number_rules={})
    # INVALID_NUMBER failed for good: by default it is left, and the answer says why.
    left = api.request("POST", f"/v1/jobs/{sent['id']}/retry", token)
    assert left.status_code == 200, left.text
    assert (left.json()["retried"], left.json()["held_back"]["permanent"]["count"]) == (0, 1)
    retried = api.request(
        "POST", f"/v1/jobs/{sent['id']}/retry", token, json={"error_code": "INVALID_NUMBER"}
    )
    assert retried.status_code == 200, retried.text
    answer = retried.json()
    assert (answer["retried"], answer["jobs"], answer["held_back"]) == (1, [sent["id"]], {})
    assert [r["number"] for r in answer["sample"]] == [number(2)]
    assert {r.number: r.status for r in recipients_of(api.db, sent["id"])}[number(2)] == "queued"

    queued = create_job(api, token, to=[number(3), number(4)], text="later")
    cancelled = api.request("POST", f"/v1/jobs/{queued['id']}/cancel", token)
    assert cancelled.status_code == 200
    assert cancelled.json() == {"cancelled": 2, "job": queued["id"]}
    assert {r.status for r in recipients_of(api.db, queued["id"])} == {"cancelled"}
    again = api.request("POST", f"/v1/jobs/{queued['id']}/cancel", token)
    assert again.json()["cancelled"] == 0

    actions = [(a.actor, a.action, a.target, a.affected) for a in _actions(api.db)]
    assert ("api:ops", "retry", sent["id"], 1) in actions
    assert ("api:ops", "retry", sent["id"], 0) in actions
    assert ("api:ops", "cancel", queued["id"], 2) in actions
    assert ("api:ops", "cancel", queued["id"], 0) in actions


def test_retrying_unknown_recipients_needs_confirmation(
    api: Api, simulator: GatewaySimulator
) -> None:
    """``unknown`` may have been sent: retrying it without confirm_unknown is a 409 that
    says it may double-send, and changes nothing; confirmed, it is queued and audited."""
    token = api.key("ops")
    simulator.configure(garbage_rate=1.0)
    job = create_job(api, token, to=[number(1), number(2)], text="hello")
    api.service.dispatch_due(worker="test")
    assert {r.status for r in recipients_of(api.db, job["id"])} == {"unknown"}

    unconfirmed = api.request(
        "POST", f"/v1/jobs/{job['id']}/retry", token, json={"statuses": ["unknown"]}
    )
    assert unconfirmed.status_code == 409
    error = error_of(unconfirmed)
    assert error["code"] == "confirmation_required"
    assert "twice" in error["message"]
    assert {r.status for r in recipients_of(api.db, job["id"])} == {"unknown"}
    assert not [a for a in _actions(api.db) if a.action == "retry"]

    bad = api.request("POST", f"/v1/jobs/{job['id']}/retry", token, json={"statuses": ["sent"]})
    assert bad.status_code == 422
    confirmed = api.request(
        "POST",
        f"/v1/jobs/{job['id']}/retry",
        token,
        json={"statuses": ["unknown"], "confirm_unknown": True},
    )
    assert confirmed.status_code == 200, confirmed.text
    assert confirmed.json()["retried"] == 2
    [action] = [a for a in _actions(api.db) if a.action == "retry"]
    assert action.actor == "api:ops"
    assert json.loads(action.detail or "{}")["confirm_unknown"] is True


# --- health ------------------------------------------------------------------------


def test_health_names_what_is_down_without_leaking_urls(
    api_factory: ApiFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A dead broker or database: 503 naming which, never a URL or password."""
    caplog.set_level(logging.DEBUG)
    dead_broker = api_factory(broker_url="redis://:brokerpw123@127.0.0.1:1/0")
    response = dead_broker.request("GET", "/healthz")
    assert response.status_code == 503
    assert response.json() == {"database": "ok", "broker": "unreachable"}

    dead_db = api_factory(database_url="postgresql://postgres:dbpw1234@127.0.0.1:1/nothing")
    response = dead_db.request("GET", "/healthz")
    assert response.status_code == 503
    assert response.json() == {"database": "unreachable", "broker": "ok"}
    # With the database away, a /v1 request is a 503 to retry, not a 500.
    jobs = dead_db.request("GET", "/v1/jobs", "sdk_whatever")
    assert jobs.status_code == 503
    assert jobs.headers["Retry-After"]
    assert error_of(jobs)["code"] == "unavailable"

    for secret in ("brokerpw123", "dbpw1234", "127.0.0.1:1"):
        assert secret not in response.text
        assert secret not in caplog.text


# --- limits ------------------------------------------------------------------------


def test_rate_limit_is_per_key_and_shared_through_redis(
    api_factory: ApiFactory, redis_index: int
) -> None:
    """Past its burst a key gets 429 with Retry-After; the bucket lives in Redis, so a
    second server on the same Redis sees it too, and other keys are unaffected."""
    first = api_factory(api_rate_per_s=0.5, api_burst=3)
    second = api_factory(api_rate_per_s=0.5, api_burst=3)
    token = first.key("chatty", "read")
    quiet = first.key("quiet", "read")
    statuses = [first.request("GET", "/v1/jobs", token).status_code for _ in range(3)]
    assert statuses == [200, 200, 200]
    limited = second.request("GET", "/v1/jobs", token)
    assert limited.status_code == 429
    assert int(limited.headers["Retry-After"]) >= 1
    assert error_of(limited)["code"] == "rate_limited"
    assert first.request("GET", "/v1/jobs", quiet).status_code == 200
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=redis_index)
    try:
        assert client.exists(REDIS_KEY_PREFIX + "chatty")
    finally:
        client.close()


def test_rate_limit_without_redis_is_in_process(api_factory: ApiFactory) -> None:
    """With the embedded broker the bucket is in the server's memory; it refills."""
    api = api_factory(broker_url=None, api_rate_per_s=2.0, api_burst=2)
    token = api.key("chatty", "read")
    assert api.request("GET", "/healthz").json() == {"database": "ok", "broker": "ok"}
    statuses = [api.request("GET", "/v1/jobs", token).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    time.sleep(0.6)  # One token back at 2 per second.
    assert api.request("GET", "/v1/jobs", token).status_code == 200


# --- logs --------------------------------------------------------------------------


def test_access_log_has_paths_and_never_tokens_or_queries(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    """One access line per request with method, path, status and duration; no token,
    no query string and no forged line anywhere in the server's log records."""
    token = api.key("shop")
    caplog.set_level(logging.DEBUG)
    api.request("GET", "/v1/jobs", token, params={"reference": "secret-ref-42", "limit": 5})
    api.request("GET", "/v1/jobs", "sdk_wrong-token-value")
    api.request("GET", "/v1/jobs/x%0AGET%20/forged%20200", token)
    server_records = [r for r in caplog.records if not r.name.startswith("urllib3")]
    text = "\n".join(r.getMessage() for r in server_records)
    assert token not in text
    assert "sdk_wrong-token-value" not in text
    assert "secret-ref-42" not in text
    assert "limit=5" not in text
    access = [r.getMessage() for r in server_records if r.name == "dispatcher.api.access"]
    assert any(line.startswith("GET /v1/jobs 200 ") for line in access), access
    assert any(line.startswith("GET /v1/jobs 401 ") for line in access), access
    # A line break in the path stays encoded: no forged log line.
    assert any(line.startswith("GET /v1/jobs/x%0AGET%20/forged%20200 404 ") for line in access)
    assert not any("\n" in line for line in access)


# --- fuzzing -----------------------------------------------------------------------


def _fuzz(
    operation: Operation,
    mode: GenerationMode,
    *,
    base_url: str,
    http: requests.Session,
    headers: dict[str, str],
    path_parameters: dict[str, str] | None = None,
) -> list[str]:
    """Run ``FUZZ_EXAMPLES`` generated requests of one operation; describe every 5xx."""
    failures: list[str] = []
    strategy = operation.as_strategy(generation_mode=mode, path_parameters=path_parameters)

    @given(case=strategy)
    @settings(
        max_examples=FUZZ_EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def call(case: schemathesis.Case[Operation]) -> None:
        response = case.call(base_url=base_url, session=http, headers=headers)
        try:
            case.validate_response(response, checks=CONFORMANCE)
        except FailureGroup as group:
            failures.append(
                f"{operation.label} ({mode.value}): {response.status_code} "
                f"{response.text[:200]} for {case.as_curl_command()}: "
                + "; ".join(f"{f.title}: {f.message[:300]}" for f in group.exceptions)
            )

    call()
    return failures


def test_schemathesis_finds_no_server_error(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    """Schemathesis, from the live /openapi.json with a valid key, gets no 5xx from any
    operation, for valid and invalid requests alike, and every answer is what the
    document promises (status, media type, headers, body). None of it is logged as
    an error: a bad request is the client's mistake."""
    caplog.set_level(logging.INFO)
    token = api.key("fuzz")
    job_id = create_job(api, token, to=number(1), text="seed")["id"]
    schema = schemathesis.openapi.from_url(api.base_url + "/openapi.json")
    headers = {"Authorization": f"Bearer {token}"}
    results = list(schema.get_all_operations())
    broken = [result.err() for result in results if not isinstance(result, Ok)]
    assert not broken, broken
    operations = [result.ok() for result in results if isinstance(result, Ok)]
    # Every documented operation is exercised: the JSON API and /healthz.
    documented = {(o.method.upper(), o.path) for o in operations}
    assert {("POST", "/v1/jobs"), ("GET", "/healthz")} <= documented
    assert len(operations) == sum(
        len(methods)
        for methods in requests.get(api.base_url + "/openapi.json", timeout=10)
        .json()["paths"]
        .values()
    )
    failures: list[str] = []
    with requests.Session() as http:
        for operation in operations:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                if mode is GenerationMode.NEGATIVE and operation.path == "/healthz":
                    continue  # It takes nothing, so nothing about it can be invalid.
                failures += _fuzz(
                    operation, mode, base_url=api.base_url, http=http, headers=headers
                )
            if "{job_id}" in operation.path:
                # Random ids all miss; a real one reaches the service with random bodies.
                failures += _fuzz(
                    operation,
                    GenerationMode.POSITIVE,
                    base_url=api.base_url,
                    http=http,
                    headers=headers,
                    path_parameters={"job_id": job_id},
                )
    assert not failures, "\n".join(failures[:10])
    loud = logged_errors(caplog.records)
    assert not loud, "\n".join(loud[:10])


# --- end to end --------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_end_to_end_cli_key_api_worker(pipeline: Pipeline, tmp_path: Path) -> None:
    """A key made with the CLI sends through ``dispatcher serve``; a real worker submits to
    the simulator; GET shows every recipient ``sent`` with the gateway's message ID."""
    created = pipeline.cli("keys", "create", "shop", "--scope", "send,read", "--json")
    assert created.returncode == 0, created.stderr
    token = json.loads(created.stdout)["token"]
    port = _free_port()
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log_file:
        server = subprocess.Popen(
            [sys.executable, "-m", "dispatcher", "serve", "--port", str(port)],
            env=pipeline.env.process_env(),
            cwd=tmp_path,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    base_url = f"http://127.0.0.1:{port}"
    try:

        def healthy() -> bool:
            assert server.poll() is None, log_path.read_text()
            try:
                return requests.get(base_url + "/healthz", timeout=5).status_code == 200
            except requests.ConnectionError:
                return False

        wait_until(healthy, 30, interval_s=0.1, message="dispatcher serve to answer")
        pipeline.start_workers(1)
        auth = {"Authorization": f"Bearer {token}"}
        numbers = [number(i) for i in range(1, 4)]
        response = requests.post(
            base_url + "/v1/jobs",
            json={"to": numbers, "text": "end to end"},
            headers=auth,
            timeout=HTTP_TIMEOUT_S,
        )
        assert response.status_code == 201, response.text
        job_id = response.json()["id"]

        def finished() -> dict[str, Any] | None:
            job: dict[str, Any] = requests.get(
                f"{base_url}/v1/jobs/{job_id}", headers=auth, timeout=HTTP_TIMEOUT_S
            ).json()
            return job if job["status"] == "completed" else None

        job = wait_until(finished, 60, interval_s=0.2, message="the job to complete")
        assert [r["status"] for r in job["recipients"]] == ["sent"] * 3
        ledger = {entry["number"]: entry["message_id"] for entry in pipeline.sim.ledger()}
        for recipient in job["recipients"]:
            assert recipient["gateway_message_id"] == ledger[recipient["number"]]
            assert recipient["attempts"] == 1
        pipeline.check_invariants()
    finally:
        server.terminate()
        server.wait(timeout=20)
    log = log_path.read_text()
    assert "POST /v1/jobs 201" in log
    assert token not in log


# --- scheduling, priority, expiry, voice, senders, credits ------------------------------


def test_create_job_with_every_message_feature(api: Api) -> None:
    token = api.key("features")
    body = create_job(
        api,
        token,
        to=[number(1), number(2)],
        text="x" * 200,
        maxconcat=2,
        kind="voice",
        send_at=f"{NEXT_YEAR}-01-01T10:00:00+02:00",
        priority="high",
        valid_for_s=300,
        reference="order-9",
    )
    assert body["send_at"] == f"{NEXT_YEAR}-01-01T08:00:00+00:00"
    assert body["expires_at"] == f"{NEXT_YEAR}-01-01T08:05:00+00:00"
    assert (body["priority"], body["parts"], body["credits"]) == ("high", 2, 4)
    assert api.waker.woken == 0, "a job scheduled for later wakes nobody"
    view = api.request("GET", f"/v1/jobs/{body['id']}", token).json()
    assert view["kind"] == "voice"
    assert (view["priority"], view["credits"], view["send_at"]) == (
        "high",
        4,
        f"{NEXT_YEAR}-01-01T08:00:00+00:00",
    )
    listed = api.request("GET", "/v1/jobs", token, params={"reference": "order-9"}).json()
    assert [j["id"] for j in listed["jobs"]] == [body["id"]]
    now = create_job(api, token, to=number(3), text="now", priority="high")
    assert now["send_at"] is None
    assert api.waker.lanes == [Priority.HIGH]


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("send_at", "2030-01-01T10:00:00", "timezone-aware"),
        ("send_at", "tomorrow", "send_at"),
        ("priority", "urgent", "priority"),
        ("valid_for_s", 0, "valid_for_s"),
    ],
    ids=["naive-send-at", "not-a-time", "unknown-priority", "zero-validity"],
)
def test_bad_feature_options_are_422(api: Api, field: str, value: Any, needle: str) -> None:
    token = api.key("features")
    response = api.request(
        "POST", "/v1/jobs", token, json={"to": number(1), "text": "hi", field: value}
    )
    assert response.status_code == 422, response.text
    assert needle in error_of(response)["message"]
    with api.db.transaction() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 0


def test_a_sender_the_key_may_not_use_is_403(api: Api) -> None:
    token, _info = KeyStore(api.db).create("brand", "send,read", actor="test", senders=["Acme"])
    response = api.request(
        "POST", "/v1/jobs", token, json={"to": number(1), "text": "hi", "sender": "Other"}
    )
    assert response.status_code == 403, response.text
    error = error_of(response)
    assert error["code"] == "sender_not_allowed"
    assert "Acme" in error["message"]
    job = create_job(api, token, to=number(1), text="hi")
    assert api.request("GET", f"/v1/jobs/{job['id']}", token).json()["sender"] == "Acme"


# --- one table from exceptions to answers ---------------------------------------------


def _tree(root: type[DispatcherError]) -> list[type[DispatcherError]]:
    found: list[type[DispatcherError]] = []
    for child in root.__subclasses__():
        found += [child, *_tree(child)]
    return found


def test_every_dispatcher_error_has_its_answer_through_its_mro() -> None:
    """Every exception of the tree has a row of ``dispatcher.errors.ANSWERS``: its own,
    else its nearest ancestor's; /v1's promises are the table's rows."""
    tree = _tree(DispatcherError)
    assert UnsafeCallbackError in tree
    assert IncompleteReplyError in tree
    everyone: list[type[DispatcherError]] = [DispatcherError, *tree]
    for cls in everyone:
        nearest = next(ancestor for ancestor in cls.__mro__ if ancestor in ANSWERS)
        assert answer_for(cls) is ANSWERS[nearest], cls
    # No child of the root falls through to the root's row (a server fault) unnoticed.
    assert all(child in ANSWERS for child in DispatcherError.__subclasses__())
    # Subclasses without a row answer as their parent.
    assert UnsafeCallbackError not in ANSWERS
    assert answer_for(UnsafeCallbackError) is ANSWERS[InvalidOptionError]
    assert answer_for(GatewayConnectError) is ANSWERS[GatewayError]
    assert answer_for(IncompleteReplyError) is ANSWERS[GatewayError]
    # Every refusal of a request is a 4xx, a validation error a 422.
    assert all(400 <= answer_for(cls).status < 500 for cls in _tree(ValidationError))
    assert all(answer_for(cls).status == 422 for cls in _tree(InvalidOptionError))
    rows = {
        cls: (answer_for(cls).status, answer_for(cls).code, answer_for(cls).gateway_code)
        for cls in tree
    }
    assert rows[ValidationError] == (422, "invalid_request", "INVALID_REQUEST")
    assert rows[InvalidNumberError] == (422, "invalid_number", "INVALID_NUMBER")
    assert rows[NoRecipientsError] == (422, "no_recipients", "INVALID_NUMBER")
    assert rows[TooManyRecipientsError] == (422, "too_many_recipients", "INVALID_REQUEST")
    assert rows[InvalidTextError] == (422, "invalid_text", "INVALID_REQUEST")
    assert rows[InvalidSenderError] == (422, "invalid_sender", "INVALID_REQUEST")
    assert rows[InvalidOptionError] == (422, "invalid_option", "INVALID_REQUEST")
    assert rows[SenderNotAllowedError] == (403, "sender_not_allowed", "INVALID_REQUEST")
    assert rows[ConfirmationRequiredError] == (409, "confirmation_required", "INVALID_REQUEST")
    assert rows[ConflictError] == (409, "idempotency_conflict", "INVALID_REQUEST")
    assert rows[AuthenticationError] == (401, "unauthorized", "LOGIN_INVALID")
    assert rows[NotFoundError] == (404, "not_found", "INVALID_REQUEST")
    assert rows[InvalidCursorError] == (400, "invalid_cursor", "INVALID_REQUEST")
    assert rows[ConfigurationError] == (500, "internal_error", "INTERNAL_ERROR")
    assert rows[PermanentGatewayError][2] == "INTERNAL_ERROR"  # our account, not theirs
    # The drop-in speaks only the gateway's own codes (docs/design.md section 1).
    gateway_codes = {"LOGIN_INVALID", "INVALID_NUMBER", "INVALID_REQUEST", "GATEWAY_ERROR"}
    assert {row.gateway_code for row in ANSWERS.values()} <= gateway_codes | {"INTERNAL_ERROR"}


def test_v1_answers_each_refusal_as_the_table_says(
    api: Api, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The service refusing with each exception: the table's status and code, the
    exception's text as the message, and for a server fault a generic message (the log
    has the rest)."""
    token = api.key("shop")
    caplog.set_level(logging.INFO)
    for refusal in REFUSALS:
        monkeypatch.setattr(api.service, "enqueue_request", refuse_with(refusal))
        response = api.request("POST", "/v1/jobs", token, json={"to": number(1), "text": "hi"})
        answer = answer_for(refusal)
        assert response.status_code == answer.status, (refusal, response.text)
        error = error_of(response)
        assert error["code"] == answer.code, refusal
        if answer.status < 500:
            assert error["message"] == str(refusal)
        else:
            assert "secret-host" not in response.text
    faults = [r for r in caplog.records if r.name == "dispatcher.api.errors" and r.exc_info]
    assert [type(r.exc_info[1]) for r in faults if r.exc_info] == [ConfigurationError]
    assert row_counts(api.db)["jobs"] == 0


def test_times_are_read_by_the_one_reader_of_user_times(api: Api) -> None:
    """The API reads times as send(), the CLI and the dashboard do
    (``dispatcher.domain.times``): ISO 8601 only, so an epoch number, which
    pydantic alone would take, is refused with the same answer as any bad time."""
    token = api.key("times")
    for send_at in (1893456000, "1893456000"):
        response = api.request(
            "POST", "/v1/jobs", token, json={"to": number(1), "text": "hi", "send_at": send_at}
        )
        assert response.status_code == 422, response.text
        assert error_of(response)["code"] == "invalid_option", response.text
        assert "send_at" in error_of(response)["message"]
    listed = api.request("GET", "/v1/jobs", token, params={"since": "1700000000"})
    assert listed.status_code == 422, listed.text
    assert error_of(listed)["code"] == "invalid_option"
    assert "ISO 8601" in error_of(listed)["message"]
    with api.db.transaction() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 0
