"""Tenant isolation (docs/design.md section 3): a producer key sees and acts on only its own jobs.

Two producer keys, ``alice`` and ``bob`` (send and read), and an operator key
``ops`` (operate), on one live server on real PostgreSQL. Whatever route bob
takes to alice's job (by id, listing with any filter, number search, reference,
cursor, audit export of either kind, retry, cancel), it answers as if the job
did not exist: the same 404 body, byte for byte, as an id nobody made, and no
count that includes her recipients. ``ops`` sees and acts on every job.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from dispatcher.api.queries import encode_cursor
from dispatcher.domain.tenancy import own_jobs
from dispatcher.gateway.simulator import GatewaySimulator
from dispatcher.persistence.db import Database
from dispatcher.persistence.models import Job
from dispatcher.persistence.store import SMALL_JOB_MAX_ROWS
from dispatcher.service.keys import KeyStore
from support.numbers import number
from support.reads import recipients_of

from .test_api import Api, ApiFactory, create_job
from .test_api import api_factory as api_factory  # the fixture

pytestmark = pytest.mark.services

MISSING = "01M00000000000000000000000"
"""A well-formed job id that nobody made."""


@dataclass
class Tenants:
    """A live server with two producer keys and an operator key."""

    api: Api
    alice: str
    bob: str
    ops: str
    ids: dict[str, int]
    """Key name to its row id."""

    def get(self, path: str, token: str, **params: Any) -> requests.Response:
        return self.api.request("GET", path, token, params=params)

    def post(self, path: str, token: str, **body: Any) -> requests.Response:
        return self.api.request("POST", path, token, json=body or None)

    def listed(self, token: str, **params: Any) -> list[str]:
        """Every job id ``GET /v1/jobs`` gives ``token``, following cursors."""
        ids: list[str] = []
        while True:
            response = self.get("/v1/jobs", token, **params)
            assert response.status_code == 200, response.text
            page = response.json()
            ids += [job["id"] for job in page["jobs"]]
            if page["next_cursor"] is None:
                return ids
            params["cursor"] = page["next_cursor"]

    def exported(self, token: str, **params: str) -> list[dict[str, str]]:
        """The rows ``GET /v1/audit.csv`` gives ``token``."""
        response = self.get("/v1/audit.csv", token, **params)
        assert response.status_code == 200, response.text
        return list(csv.DictReader(io.StringIO(response.text)))


@pytest.fixture
def tenants(api_factory: ApiFactory) -> Tenants:
    api = api_factory()
    keys = KeyStore(api.db)
    tokens, ids = {}, {}
    for name, scopes in (("alice", "send,read"), ("bob", "send,read"), ("ops", "read,operate")):
        tokens[name], info = keys.create(name, scopes, actor="test")
        ids[name] = info.id
    return Tenants(api, tokens["alice"], tokens["bob"], tokens["ops"], ids)


def assert_as_if_missing(
    answer: requests.Response, job_id: str, ask: Any, *args: Any, **kwargs: Any
) -> None:
    """``answer`` (about ``job_id``) is byte for byte what ``ask`` gets for an id nobody
    made, but for the id itself where the message names it."""
    missing = ask(*args, **kwargs)
    assert missing.status_code == 404, missing.text
    assert answer.status_code == 404, answer.text
    assert answer.content == missing.content.replace(MISSING.encode(), job_id.encode())
    assert answer.headers["content-type"] == missing.headers["content-type"]


def owners(db: Database) -> dict[str, int | None]:
    with db.transaction() as session:
        return {job.id: job.owner_key_id for job in session.query(Job)}


# --- by id -------------------------------------------------------------------------------


def test_a_job_by_id_is_its_keys_and_the_operators_only(tenants: Tenants) -> None:
    """Both ways a job is written (one statement for a small job, separate inserts for a
    large one) record the key; another producer's GET is the missing-job 404."""
    small = create_job(tenants.api, tenants.alice, to=number(1), text="small")["id"]
    large_to = [number(i) for i in range(SMALL_JOB_MAX_ROWS + 10)]
    large = create_job(tenants.api, tenants.alice, to=large_to, text="large")["id"]
    assert owners(tenants.api.db) == {small: tenants.ids["alice"], large: tenants.ids["alice"]}

    for job_id in (small, large):
        path = f"/v1/jobs/{job_id}"
        assert tenants.get(path, tenants.alice).status_code == 200
        assert tenants.get(path, tenants.ops).json()["id"] == job_id
        answer = tenants.get(path, tenants.bob)
        assert_as_if_missing(answer, job_id, tenants.get, f"/v1/jobs/{MISSING}", tenants.bob)
        assert "alice" not in answer.text


def test_a_drop_in_job_belongs_to_its_key_through_v1(tenants: Tenants) -> None:
    response = requests.post(
        tenants.api.base_url + "/smsgateway/sendmsg.aspx",
        data={"username": "alice", "password": tenants.alice, "to": number(1), "text": "hi"},
        timeout=30,
    )
    assert response.text.startswith("ID:"), response.text
    job_id = response.text.removeprefix("ID:")
    assert owners(tenants.api.db) == {job_id: tenants.ids["alice"]}
    assert tenants.get(f"/v1/jobs/{job_id}", tenants.alice).json()["created_by"] == "dropin:alice"
    assert tenants.listed(tenants.alice) == [job_id]
    assert tenants.listed(tenants.bob) == []
    answer = tenants.get(f"/v1/jobs/{job_id}", tenants.bob)
    assert_as_if_missing(answer, job_id, tenants.get, f"/v1/jobs/{MISSING}", tenants.bob)


# --- listings ------------------------------------------------------------------------------


def test_listings_hold_only_the_keys_own_jobs_under_every_filter(tenants: Tenants) -> None:
    """Status, number, reference, since/until and cursors (even a cursor made from another
    key's job id) never bring up another key's job; the operator lists all."""
    made: dict[str, list[str]] = {"alice": [], "bob": []}
    for i in range(3):
        for name, token in (("alice", tenants.alice), ("bob", tenants.bob)):
            to = [number(1), "not-a-number"] if i == 0 else [number(1)]
            job = create_job(tenants.api, token, to=to, text=f"{name} {i}", reference="shared")
            made[name].append(job["id"])
    created = {
        job["id"]: dt.datetime.fromisoformat(job["created_at"])
        for job in tenants.get("/v1/jobs", tenants.ops, limit=200).json()["jobs"]
    }
    first = created[made["bob"][0]]

    for name, token in (("alice", tenants.alice), ("bob", tenants.bob)):
        own = list(reversed(made[name]))
        assert tenants.listed(token) == own
        assert tenants.listed(token, limit=1) == own
        assert tenants.listed(token, number="07700 900001") == own
        assert tenants.listed(token, reference="shared") == own
        assert tenants.listed(token, status="failed") == [made[name][0]]
        since = [j for j in own if created[j] >= first]
        assert tenants.listed(token, since=first.isoformat()) == since
        assert tenants.listed(token, until="2999-01-01T00:00:00Z") == own
        # A cursor continues after any id; it lists the key's own older jobs only.
        after = encode_cursor(made["alice"][2])
        assert tenants.listed(token, cursor=after) == [j for j in own if j < made["alice"][2]]
    everything = sorted(made["alice"] + made["bob"], reverse=True)
    assert tenants.listed(tenants.ops) == everything
    assert tenants.listed(tenants.ops, number=number(1), reference="shared") == everything


# --- retry and cancel ------------------------------------------------------------------------


def test_retry_and_cancel_of_another_keys_job_are_the_missing_job_404(
    tenants: Tenants, simulator: GatewaySimulator
) -> None:
    """Bob can neither retry nor cancel alice's job, nor learn from a 409 that it holds
    unknown recipients; alice can, on her own, with the send scope; ops on anyone's."""
    api = tenants.api
    simulator.configure(number_rules={number(2): "INVALID_NUMBER"})
    failed = create_job(api, tenants.alice, to=[number(1), number(2)], text="hello")["id"]
    api.service.dispatch_due(worker="test")
    simulator.configure(number_rules={}, garbage_rate=1.0)
    unknown = create_job(api, tenants.alice, to=number(3), text="lost reply")["id"]
    api.service.dispatch_due(worker="test")
    simulator.configure(garbage_rate=0.0)
    queued = create_job(api, tenants.alice, to=number(4), text="later")["id"]
    before = {j: recipients_of(api.db, j) for j in (failed, unknown, queued)}

    attempts: list[tuple[str, str, dict[str, Any]]] = [
        (failed, "retry", {"error_code": "INVALID_NUMBER"}),
        (unknown, "retry", {"statuses": ["unknown"]}),
        (unknown, "retry", {"statuses": ["unknown"], "confirm_unknown": True}),
        (queued, "cancel", {}),
    ]
    for job_id, action, body in attempts:
        answer = tenants.post(f"/v1/jobs/{job_id}/{action}", tenants.bob, **body)
        missing = f"/v1/jobs/{MISSING}/{action}"
        assert_as_if_missing(answer, job_id, tenants.post, missing, tenants.bob, **body)
    after = {j: recipients_of(api.db, j) for j in (failed, unknown, queued)}
    assert {j: [(r.status, r.attempts) for r in rs] for j, rs in after.items()} == {
        j: [(r.status, r.attempts) for r in rs] for j, rs in before.items()
    }

    # INVALID_NUMBER failed for good: it goes only when named.
    retried = tenants.post(f"/v1/jobs/{failed}/retry", tenants.alice, error_code="INVALID_NUMBER")
    assert (retried.json()["retried"], retried.json()["jobs"]) == (1, [failed])
    unconfirmed = tenants.post(f"/v1/jobs/{unknown}/retry", tenants.alice, statuses=["unknown"])
    assert unconfirmed.status_code == 409, "retrying unknown still needs confirm_unknown"
    cancelled = tenants.post(f"/v1/jobs/{queued}/cancel", tenants.alice)
    assert cancelled.json() == {"cancelled": 1, "job": queued}
    bobs = create_job(api, tenants.bob, to=number(5), text="bob's")["id"]
    assert tenants.post(f"/v1/jobs/{bobs}/cancel", tenants.ops).json()["cancelled"] == 1
    reader, _ = KeyStore(api.db).create("reader", "read", actor="test")
    assert tenants.post(f"/v1/jobs/{MISSING}/cancel", reader).status_code == 403


def test_a_selection_without_a_job_counts_only_the_viewers_recipients(
    tenants: Tenants, simulator: GatewaySimulator
) -> None:
    """The ownership condition is in the recipients' selection itself, so a retry or
    cancel by selection (no job named) neither touches nor counts another key's."""
    api = tenants.api
    simulator.configure(number_rules={number(1): "INVALID_NUMBER"})
    jobs = {
        name: create_job(api, token, to=number(1), text=name)["id"]
        for name, token in (("alice", tenants.alice), ("bob", tenants.bob))
    }
    api.service.dispatch_due(worker="test")
    simulator.configure(number_rules={})
    result = api.service.retry(
        actor="test", error_code="INVALID_NUMBER", viewer=own_jobs(tenants.ids["bob"])
    )
    assert (result.affected, result.jobs) == (1, [jobs["bob"]])
    assert [r.status for r in recipients_of(api.db, jobs["alice"])] == ["failed"]
    assert [r.status for r in recipients_of(api.db, jobs["bob"])] == ["queued"]


# --- the audit export ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["events", "recipients"])
def test_the_audit_export_holds_only_the_keys_own_rows(tenants: Tenants, kind: str) -> None:
    """By number, by time range and by job: a read key exports its own jobs' rows only,
    another key's job is the missing-job 404; an operate key exports everyone's."""
    alices = create_job(tenants.api, tenants.alice, to=number(1), text="a")["id"]
    bobs = create_job(tenants.api, tenants.bob, to=[number(1), number(2)], text="b")["id"]
    since = "2000-01-01T00:00:00Z"

    for token, own in ((tenants.alice, {alices}), (tenants.bob, {bobs})):
        by_number = tenants.exported(token, number="07700 900001", kind=kind)
        assert by_number
        assert {row["job_id"] for row in by_number} == own
        assert {row["job_id"] for row in tenants.exported(token, since=since, kind=kind)} == own
    assert {r["job_id"] for r in tenants.exported(tenants.bob, job=bobs, kind=kind)} == {bobs}
    answer = tenants.get("/v1/audit.csv", tenants.bob, job=alices, kind=kind)
    assert_as_if_missing(
        answer, alices, tenants.get, "/v1/audit.csv", tenants.bob, job=MISSING, kind=kind
    )
    everyone = tenants.exported(tenants.ops, number=number(1), kind=kind)
    assert {row["job_id"] for row in everyone} == {alices, bobs}
