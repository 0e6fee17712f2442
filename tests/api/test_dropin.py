"""The drop-in endpoint (docs/design.md section 5): the gateway's interface, served by us.

Each test is a client written for the gateway, pointed at the dispatcher: it
sends the gateway's parameters as a GET query or a POST form and reads the
reply by the rules of the gateway's own page (``seed/intellisoftware-sendmsg.txt``):
``ID:<id>`` alone for one recipient, ``<number>,ID:<id>`` or
``<number>,ERR:<CODE>`` per line for several, ``ERR:<CODE>`` alone when the
whole request fails. Real uvicorn, real PostgreSQL and Redis.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import select

from dispatcher.domain.message import TYPE_VOICE
from dispatcher.errors import TooManyRecipientsError, answer_for
from dispatcher.gateway.client import GatewayClient, Message
from dispatcher.gateway.config import GatewayConfig
from dispatcher.gateway.protocol import Outcome
from dispatcher.gateway.simulator import GatewaySimulator
from dispatcher.persistence.db import Database
from dispatcher.persistence.models import Job
from dispatcher.service.keys import KeyStore
from support.numbers import number
from support.reads import recipients_of, row_counts
from support.refusals import REFUSALS, refuse_with
from support.settings import make_settings

from .test_api import UNLIMITED, Api, running_api

pytestmark = pytest.mark.services

SEND = "/smsgateway/sendmsg.aspx"
BALANCE = "/smsgateway/getbalance.aspx"
# The grammar of a reply line on the gateway's page: optional number, then ID or ERR.
LINE = re.compile(r"^(?:(?P<number>[^,]+),)?(?:ID:(?P<id>\S+)|ERR:(?P<code>[A-Z_]+))$")


@dataclass
class Reply:
    """A gateway reply read as a gateway client reads it."""

    status: int
    content_type: str
    lines: list[tuple[str | None, str | None, str | None]]
    """(number, ID, error code) per non-blank line."""

    @property
    def single(self) -> tuple[str | None, str | None]:
        """(ID, error code) of a single-line reply."""
        assert len(self.lines) == 1, self.lines
        number_, id_, code = self.lines[0]
        assert number_ is None, self.lines
        return id_, code


def parse(response: requests.Response) -> Reply:
    """Read a reply per the gateway's page; fail on anything it does not allow."""
    assert response.headers["content-type"].startswith("text/plain"), response.headers
    lines = []
    for raw in response.text.split("\r\n"):
        line = raw.strip()
        if not line:
            continue
        match = LINE.match(line)
        assert match is not None, f"not a gateway reply line: {line!r}"
        lines.append((match["number"], match["id"], match["code"]))
    return Reply(response.status_code, response.headers["content-type"], lines)


@dataclass
class Gateway:
    """The dispatcher's drop-in endpoint, and a key to use it with."""

    api: Api
    name: str
    token: str

    @property
    def db(self) -> Database:
        """The dispatcher's database."""
        return self.api.db

    def get(self, path: str = SEND, **params: Any) -> requests.Response:
        """A GET with the parameters in the query, as old gateway clients do."""
        return requests.get(self.api.base_url + path, params=params, timeout=30)

    def post(self, path: str = SEND, **form: Any) -> requests.Response:
        """A POST of a form, as the gateway's documentation shows."""
        return requests.post(self.api.base_url + path, data=form, timeout=30)

    def login(self) -> dict[str, str]:
        """The credentials a gateway client sends."""
        return {"username": self.name, "password": self.token}


@pytest.fixture
def gateway_factory(
    clean_env: None, pg_db: Database, broker_url: str, simulator: GatewaySimulator, tmp_path: Path
) -> Iterator[Any]:
    """Starts dispatchers (with settings overridden), each with a send and balance key
    ``shopN``."""
    managers: list[Any] = []

    def start(*, with_key: bool = True, **overrides: Any) -> Gateway:
        values = {"broker_url": broker_url, **UNLIMITED, **overrides}
        manager = running_api(make_settings(pg_db, simulator, tmp_path, **values))
        api = manager.__enter__()
        managers.append(manager)
        name = f"shop{len(managers)}"
        scopes = "send,balance"
        token = KeyStore(api.db).create(name, scopes, actor="test")[0] if with_key else ""
        return Gateway(api, name, token)

    try:
        yield start
    finally:
        for manager in reversed(managers):
            manager.__exit__(None, None, None)


@pytest.fixture
def gateway(gateway_factory: Any) -> Gateway:
    """A dispatcher with a send key."""
    result: Gateway = gateway_factory()
    return result


def jobs_of(db: Database) -> list[Job]:
    """Every job row."""
    with db.transaction() as session:
        return list(session.scalars(select(Job).order_by(Job.id)))


# --- sending ---------------------------------------------------------------------------


def test_post_form_with_valid_and_invalid_numbers(gateway: Gateway) -> None:
    """A POST form with several numbers: one line per number, the valid ones queued under
    one job id, the invalid one ``ERR:INVALID_NUMBER`` and recorded as failed."""
    KeyStore(gateway.db).update(gateway.name, actor="test", grant=["Acme"])
    response = gateway.post(
        **gateway.login(),
        to="447700900001,07700 900002,not-a-number,+447700900001,07700-9",
        text="Your code is 123456",
        **{"from": "Acme"},
    )
    reply = parse(response)
    assert reply.status == 200
    by_number = {n: (i, c) for n, i, c in reply.lines}
    # International form and duplicates removed, as the gateway replies.
    assert set(by_number) == {number(1), number(2), "not-a-number", "077009"}
    [job_id] = {i for i, _ in by_number.values() if i is not None}
    assert by_number["not-a-number"] == (None, "INVALID_NUMBER")
    assert by_number["077009"] == (None, "INVALID_NUMBER")
    assert response.text.endswith("\r\n")

    [job] = jobs_of(gateway.db)
    assert job.id == job_id
    assert job.created_by == f"dropin:{gateway.name}"
    assert job.sender == "Acme"
    statuses = {r.number: (r.status, r.error_code) for r in recipients_of(gateway.db, job_id)}
    assert statuses[number(1)] == ("queued", None)
    assert statuses[number(2)] == ("queued", None)
    assert statuses["not-a-number"] == ("failed", "INVALID_NUMBER")
    assert gateway.api.waker.woken == 1


def test_get_query_with_one_number_and_every_option(gateway: Gateway) -> None:
    """A GET with one number: a single ``ID:<job id>`` line; from, type, maxconcat and
    usercontext become the job's sender, kind, maxconcat and reference."""
    KeyStore(gateway.db).update(gateway.name, actor="test", grant=["447700900999"])
    reply = parse(
        gateway.get(
            **gateway.login(),
            to="07700900003",
            text="x" * 200,
            maxconcat="2",
            type=str(TYPE_VOICE),
            usercontext="invoice-9",
            **{"from": "447700900999"},
        )
    )
    job_id, code = reply.single
    assert code is None
    assert job_id is not None
    [job] = jobs_of(gateway.db)
    assert (job.id, job.kind, job.maxconcat, job.parts) == (job_id, "voice", 2, 2)
    assert (job.reference, job.sender) == ("invoice-9", "447700900999")
    assert [r.number for r in recipients_of(gateway.db, job_id)] == [number(3)]


def test_the_projects_own_gateway_client_works_against_it(
    gateway: Gateway, simulator: GatewaySimulator
) -> None:
    """The dispatcher's own gateway client, given the drop-in URL and the key as its
    account, gets every recipient accepted, with the job id as the message ID."""
    simulator.configure(credit=750)
    config = GatewayConfig(
        url=gateway.api.base_url + "/smsgateway",
        backup_url=None,
        username=gateway.name,
        password=gateway.token,
    )
    with GatewayClient(config) as client:
        submission = client.submit(
            [number(1), number(2)], Message(text="via the drop-in", usercontext="ctx-1")
        )
        assert client.balance() == 750
    assert [o.outcome for o in submission.outcomes] == [Outcome.ACCEPTED] * 2
    [job] = jobs_of(gateway.db)
    assert submission.gateway_message_id == job.id
    assert job.reference == "ctx-1"


# --- refusals ----------------------------------------------------------------------------


def _refusals(gateway: Gateway, other_token: str, read_only: str, revoked: str) -> list[Any]:
    login = gateway.login()
    ok = {"to": number(1), "text": "hi"}
    return [
        ({**ok, "password": gateway.token}, "NO_USERNAME"),
        ({**ok, "username": gateway.name}, "NO_PASSWORD"),
        ({**ok, "username": gateway.name, "password": "sdk_wrong"}, "LOGIN_INVALID"),
        ({**ok, "username": gateway.name, "password": other_token}, "LOGIN_INVALID"),
        ({**ok, "username": "reader", "password": read_only}, "LOGIN_INVALID"),
        ({**ok, "username": "gone", "password": revoked}, "LOGIN_INVALID"),
        ({**login, "text": "hi"}, "NO_TO"),
        ({**login, "to": " , ,", "text": "hi"}, "NO_TO"),
        ({**login, "to": number(1)}, "NO_TEXT"),
        ({**login, "to": "abc,12", "text": "hi"}, "INVALID_NUMBER"),
        ({**login, **ok, "maxconcat": "two"}, "INVALID_REQUEST"),
        ({**login, **ok, "maxconcat": "0"}, "INVALID_REQUEST"),
        ({**login, **ok, "type": "3"}, "INVALID_REQUEST"),
        ({**login, "to": number(1), "text": "x" * 161}, "INVALID_REQUEST"),
        ({**login, **ok, "from": "ACME-SUPPLIES-LTD"}, "INVALID_REQUEST"),
    ]


def test_whole_request_failures_are_one_err_line(gateway: Gateway) -> None:
    """Each failure is one ``ERR:<CODE>`` line, GET or POST, in the gateway's order of
    checks, and writes nothing; LOGIN_INVALID covers a wrong token, another key's token,
    a key without the send scope and a revoked key alike."""
    keys = KeyStore(gateway.db)
    other_token, _ = keys.create("other", "send", actor="test")
    read_only, _ = keys.create("reader", "read", actor="test")
    revoked, _ = keys.create("gone", "send", actor="test")
    keys.revoke("gone", actor="test")
    for params, code in _refusals(gateway, other_token, read_only, revoked):
        for reply in (parse(gateway.get(**params)), parse(gateway.post(**params))):
            assert reply.single == (None, code), (params, reply.lines)
            assert reply.status == 200
    assert row_counts(gateway.db)["jobs"] == 0


def test_refusals_answer_with_the_tables_gateway_code(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The service refusing with each of the exceptions /v1's tests raise: one
    ``ERR:<CODE>`` line, the table's gateway code, with HTTP 200 as the gateway answers
    a refusal; a too-many-recipients refusal is INVALID_REQUEST, the gateway's own."""
    for refusal in REFUSALS:
        monkeypatch.setattr(gateway.api.service, "enqueue_request", refuse_with(refusal))
        reply = parse(gateway.post(to=number(1), text="hi", **gateway.login()))
        assert (reply.status, reply.single) == (200, (None, answer_for(refusal).gateway_code))
    monkeypatch.setattr(
        gateway.api.service, "enqueue_request", refuse_with(TooManyRecipientsError(""))
    )
    reply = parse(gateway.get(to=number(1), text="hi", **gateway.login()))
    assert reply.single == (None, "INVALID_REQUEST")
    assert row_counts(gateway.db)["jobs"] == 0


def test_balance(gateway: Gateway, simulator: GatewaySimulator) -> None:
    """``getbalance.aspx`` answers ``BALANCE:<n>`` from the gateway's own balance."""
    simulator.configure(credit=1234)
    response = gateway.post(BALANCE, **gateway.login())
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text == "BALANCE:1234"
    assert gateway.get(BALANCE, **gateway.login()).text == "BALANCE:1234"
    wrong = gateway.get(BALANCE, username=gateway.name, password="sdk_nope")
    assert wrong.text == "ERR:LOGIN_INVALID"


def test_balance_when_the_gateway_refuses_our_account(
    gateway_factory: Any, simulator: GatewaySimulator
) -> None:
    """Our gateway password wrong: the caller's login was fine, so not LOGIN_INVALID."""
    gateway = gateway_factory(gateway_password="not-the-simulators")
    assert gateway.get(BALANCE, **gateway.login()).text == "ERR:INTERNAL_ERROR"


def test_answers_are_never_json(gateway: Gateway, gateway_factory: Any) -> None:
    """Methods the gateway never took, oversized bodies, too many numbers, rate limits and
    a dead database all answer in the gateway's format."""
    put = requests.put(gateway.api.base_url + SEND, data={"to": number(1)}, timeout=30)
    assert put.status_code == 405
    assert parse(put).single == (None, "INVALID_REQUEST")

    small = gateway_factory(max_body_bytes=2048, max_recipients_per_job=3)
    big = parse(small.post(**small.login(), to=number(1), text="x" * 4000))
    assert (big.status, big.single) == (413, (None, "INVALID_REQUEST"))
    many = parse(small.post(**small.login(), to=",".join(number(i) for i in range(4)), text="x"))
    assert many.single == (None, "INVALID_REQUEST")

    limited = gateway_factory(api_rate_per_s=0.5, api_burst=1)
    assert parse(limited.post(**limited.login(), to=number(1), text="x")).single[0]
    over = limited.post(**limited.login(), to=number(1), text="x")
    assert over.status_code == 429
    assert int(over.headers["Retry-After"]) >= 1
    assert parse(over).single == (None, "GATEWAY_ERROR")

    dead = gateway_factory(with_key=False, database_url="postgresql://postgres@127.0.0.1:1/x")
    down = dead.post(username="x", password="y", to=number(1), text="x")
    assert down.status_code == 503
    assert parse(down).single == (None, "INTERNAL_ERROR")


# --- logs ------------------------------------------------------------------------------


def test_passwords_and_query_strings_never_reach_the_log(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    """A GET carries the password in its query; no server log record holds it, nor any
    part of the query, right or wrong password alike. The access log has the path."""
    caplog.set_level(logging.DEBUG)
    good = gateway.get(**gateway.login(), to=number(1), text="query-text-7")
    assert parse(good).single[0]
    bad = gateway.get(
        username=gateway.name, password="sdk_wrong-password-9", to=number(1), text="query-text-8"
    )
    assert parse(bad).single == (None, "LOGIN_INVALID")
    # The test's own HTTP client (urllib3) logs the URLs it requests; the server must not.
    server = [r for r in caplog.records if not r.name.startswith("urllib3")]
    text = "\n".join(r.getMessage() for r in server)
    for leak in (
        gateway.token,
        "sdk_wrong-password-9",
        "password=",
        "username=",
        "query-text",
        "aspx?",
    ):
        assert leak not in text, leak
    access = [r.getMessage() for r in server if r.name == "dispatcher.api.access"]
    assert sum(line.startswith(f"GET {SEND} 200 ") for line in access) == 2, access


# --- voice, senders, reference ------------------------------------------------------------


def test_type_6_queues_a_voice_job_with_its_usercontext(gateway: Gateway) -> None:
    reply = parse(
        gateway.post(
            to=number(1), text="one two three", type="6", usercontext="ctx-1", **gateway.login()
        )
    )
    [job] = jobs_of(gateway.db)
    assert (job.kind, job.reference, job.priority) == ("voice", "ctx-1", "normal")
    assert reply.lines == [(None, job.id, None)]


def test_a_sender_the_key_may_not_use_is_invalid_request(gateway_factory: Any) -> None:
    gateway: Gateway = gateway_factory(with_key=False, default_sender="Acme")
    token, _info = KeyStore(gateway.db).create("brand", "send", actor="test", senders=["Acme"])
    login = {"username": "brand", "password": token}
    refused = gateway.post(to=number(1), text="hi", **{"from": "Other"}, **login)
    assert refused.text == "ERR:INVALID_REQUEST"
    assert jobs_of(gateway.db) == []
    parse(gateway.post(to=number(1), text="hi", **login))
    [job] = jobs_of(gateway.db)
    assert job.sender == "Acme"
