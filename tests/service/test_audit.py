"""Audit export, message-text privacy, retention and erasure (issue 6, item 3), and the
CLI side of retry management (item 2).

In-process tests run on SQLite and PostgreSQL through the ``database`` fixture; the
privacy test runs a real pipeline (PostgreSQL, Redis, a worker process, the
simulator over HTTP); the CLI tests run ``dispatcher`` as a child process.
"""

from __future__ import annotations

import csv
import datetime as dt
import http.server
import io
import json
import logging
import os
import pty
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
from sqlalchemy import select, text, update
from sqlalchemy.exc import DBAPIError

from dispatcher.api import create_app
from dispatcher.api.server import ServerThread
from dispatcher.config import ENV_PREFIX, load_settings
from dispatcher.errors import (
    ConfigurationError,
    InvalidNumberError,
    InvalidOptionError,
    NotFoundError,
)
from dispatcher.gateway.client import GatewayClient, Message
from dispatcher.gateway.config import GatewayConfig
from dispatcher.gateway.simulator import GatewaySimulator
from dispatcher.persistence import migrate, store
from dispatcher.persistence.db import Database
from dispatcher.persistence.models import Attempt, Job, OperatorAction, Recipient, StatusEvent
from dispatcher.service import audit
from dispatcher.service.dispatcher import Dispatcher, job_to_dict
from dispatcher.service.keys import KeyStore
from support.numbers import number
from support.pipeline import Pipeline
from support.reads import attempts_of, claims_of, events_of, recipients_of
from support.settings import DispatcherEnv, make_settings
from support.workers import run_cli

pytestmark = pytest.mark.usefixtures("clean_env")

SECRET = "Your one-time code is 482913"
OLD = dt.timedelta(days=40)


def rows_of(lines: Iterator[str]) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO("".join(lines))))


def actions(db: Database, action: str) -> list[OperatorAction]:
    with db.transaction() as session:
        return list(
            session.scalars(
                select(OperatorAction)
                .where(OperatorAction.action == action)
                .order_by(OperatorAction.id)
            )
        )


def backdate(db: Database, job_id: str, by: dt.timedelta) -> None:
    """Make a job (and its recipients) look created ``by`` ago."""
    with db.transaction() as session:
        job = session.get(Job, job_id)
        assert job is not None
        then = job.created_at - by
        session.execute(update(Job).where(Job.id == job_id).values(created_at=then))
        session.execute(update(Recipient).where(Recipient.job_id == job_id).values(created_at=then))


def everything_stored(db: Database, job_id: str) -> str:
    """Every number-bearing text of a job's rows, joined."""
    with db.transaction() as session:
        parts: list[str | None] = []
        for r in session.scalars(select(Recipient).where(Recipient.job_id == job_id)):
            parts += [r.number, r.error_detail]
        for a in session.scalars(select(Attempt).where(Attempt.job_id == job_id)):
            parts += [a.numbers, a.request, a.raw_reply, a.error]
        for e in session.scalars(select(StatusEvent).where(StatusEvent.job_id == job_id)):
            parts.append(e.cause)
    return "\n".join(p for p in parts if p)


# --- export ----------------------------------------------------------------------------


def test_export_of_a_number_tells_its_story_with_zoned_times_and_no_text(
    service: Dispatcher, simulator: GatewaySimulator
) -> None:
    simulator.configure(number_rules={number(2): "INVALID_NUMBER"})
    job = service.enqueue([number(1), number(2)], SECRET, reference="order-7").job_id
    other = service.enqueue(number(3), SECRET).job_id
    service.dispatch_due(worker="w")

    # The number as a person types it, in national format.
    lines = list(
        audit.export_csv(
            service.db,
            since=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1),
            until=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1),
            number="07700 900001",
        )
    )
    rows = rows_of(iter(lines))
    assert {r["number"] for r in rows} == {number(1)}
    assert [(r["from_status"], r["to_status"]) for r in rows] == [
        ("", "queued"),
        ("queued", "submitting"),
        ("submitting", "sent"),
    ]
    [sent] = [r for r in recipients_of(service.db, job) if r.number == number(1)]
    assert {r["gateway_message_id"] for r in rows} == {sent.gateway_message_id}
    assert all(r["job_id"] == job and r["reference"] == "order-7" for r in rows)
    assert rows[-1]["host"]
    assert rows[-1]["http_status"] == "200"
    for r in rows:
        assert dt.datetime.fromisoformat(r["at"]).utcoffset() == dt.timedelta(0)
    assert SECRET not in "".join(lines)
    assert other not in "".join(lines)


def test_export_of_recipients_by_range_and_by_job(service: Dispatcher) -> None:
    first = service.enqueue([number(1), number(2), "12"], SECRET).job_id
    second = service.enqueue(number(3), SECRET).job_id
    backdate(service.db, first, dt.timedelta(days=2))
    now = dt.datetime.now(dt.UTC)

    recent = rows_of(
        audit.export_csv(
            service.db, since=now - dt.timedelta(days=1), until=None, kind="recipients"
        )
    )
    assert [(r["job_id"], r["number"], r["status"]) for r in recent] == [
        (second, number(3), "queued")
    ]
    whole = rows_of(
        audit.export_csv(service.db, since=None, until=None, job_id=first, kind="recipients")
    )
    assert [r["number"] for r in whole] == [number(1), number(2), "12"]
    assert whole[2]["error_code"] == "INVALID_NUMBER"
    assert dt.datetime.fromisoformat(whole[0]["created_at"]).tzinfo is not None


def test_export_pages_through_every_row_once(
    service: Dispatcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audit, "EXPORT_PAGE_ROWS", 3)
    jobs = [service.enqueue([number(i), number(i + 50)], SECRET).job_id for i in range(1, 6)]
    service.dispatch_due(worker="w")
    events = sum(len(events_of(service.db, job)) for job in jobs)
    claims = sum(len(claims_of(service.db, job)) for job in jobs)
    accepted = sum(len(recipients_of(service.db, job)) for job in jobs)
    since = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)

    rows = rows_of(audit.export_csv(service.db, since=since, until=None))

    # Every status event once, and each creation and claim (implied by the rows,
    # docs/design.md section 3) as a row of its own.
    assert (events, claims, accepted) == (10, 10, 10)
    assert len(rows) == events + claims + accepted
    assert len({r["event_id"] for r in rows if r["event_id"]}) == events
    implied = [r for r in rows if not r["event_id"]]
    created = [r for r in implied if r["to_status"] == "queued"]
    claimed = [r for r in implied if r["to_status"] == "submitting"]
    assert len({r["recipient_id"] for r in created}) == accepted
    assert {(r["from_status"], r["cause"], r["actor"]) for r in created} == {
        ("", "enqueued", "python")
    }
    assert len({(r["attempt_id"], r["recipient_id"]) for r in claimed}) == claims
    assert {(r["from_status"], r["to_status"]) for r in claimed} == {("queued", "submitting")}
    stamps = [dt.datetime.fromisoformat(r["at"]) for r in rows]
    assert stamps == sorted(stamps)


def test_export_refuses_bad_arguments(service: Dispatcher) -> None:
    now = dt.datetime.now(dt.UTC)
    with pytest.raises(InvalidOptionError, match="since must be before until"):
        audit.export_csv(service.db, since=now, until=now - dt.timedelta(days=1))
    with pytest.raises(InvalidOptionError, match="say what to export"):
        audit.export_csv(service.db, since=None, until=None)
    with pytest.raises(InvalidOptionError, match="kind must be one of"):
        audit.export_csv(service.db, since=now, until=None, kind="everything")
    with pytest.raises(InvalidNumberError):
        audit.export_csv(service.db, since=None, until=None, number="12")
    with pytest.raises(NotFoundError):
        audit.export_csv(service.db, since=None, until=None, job_id="01M876N1S2PG3YHKSRFFCBQPGA")


def test_cells_that_a_spreadsheet_would_run_are_neutralised(service: Dispatcher) -> None:
    assert audit.safe_cell('=HYPERLINK("http://x")') == '\'=HYPERLINK("http://x")'
    assert audit.safe_cell("@SUM(A1)") == "'@SUM(A1)"
    assert audit.safe_cell("+44 7700 cmd|' /C calc'!A0") == "'+44 7700 cmd|' /C calc'!A0"
    assert audit.safe_cell("-12") == "-12", "a plain number stays a number"
    assert audit.safe_cell("447700900001") == "447700900001"
    job = service.enqueue([number(1), "=1+2"], SECRET, reference="=cmd|'/c calc'!A1").job_id

    rows = rows_of(
        audit.export_csv(service.db, since=None, until=None, job_id=job, kind="recipients")
    )

    assert {r["reference"] for r in rows} == {"'=cmd|'/c calc'!A1"}
    assert [r["number"] for r in rows] == [number(1), "'=1+2"]


@contextmanager
def api_for(service: Dispatcher) -> Iterator[str]:
    with ServerThread(create_app(service)) as server:
        yield server.base_url


def test_the_api_streams_every_job_to_operate_keys_and_none_to_others(
    service: Dispatcher,
) -> None:
    job = service.enqueue(number(1), SECRET).job_id
    keys = KeyStore(service.db)
    ops, _ = keys.create("ops", "read,operate", actor="test")
    reader, _ = keys.create("reader", "read", actor="test")

    with api_for(service) as base, requests.Session() as http:

        def get(token: str, **params: str) -> requests.Response:
            return http.get(
                base + "/v1/audit.csv",
                params=params,
                headers={"Authorization": f"Bearer {token}"},
                timeout=30,
            )

        ok = get(ops, number="+44 7700 900001", kind="recipients")
        assert ok.status_code == 200, ok.text
        assert ok.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(ok.text)))
        assert [(r["job_id"], r["number"]) for r in rows] == [(job, number(1))]
        assert SECRET not in ok.text

        # A job Python enqueued is no key's: an operator's to export, not a reader's.
        assert get(reader, job=job).status_code == 404
        assert list(csv.reader(io.StringIO(get(reader, number=number(1)).text)))[1:] == []
        backwards = get(ops, since="2026-01-02T00:00:00Z", until="2026-01-01T00:00:00Z")
        assert backwards.status_code == 422
        assert "since must be before until" in backwards.json()["error"]["message"]
        assert get(ops, number="12").status_code == 422
        assert get(ops).status_code == 422
        assert get(ops, job="01M876N1S2PG3YHKSRFFCBQPGA").status_code == 404


# --- message text stays out of attempts, lists, logs and webhooks ---------------------------


@pytest.mark.services
def test_message_text_never_leaves_the_job(
    pipeline: Pipeline, caplog: pytest.LogCaptureFixture
) -> None:
    """A one-time code is a secret: after a real run (accepted, refused, retried
    recipients) it is in no attempt row, job list, CLI listing, webhook body, log
    line or export; only on the job itself."""
    caplog.set_level(logging.DEBUG)
    pipeline.sim.configure(number_rules={number(2): "INVALID_NUMBER", number(3): "GATEWAY_ERROR*1"})
    [worker] = pipeline.start_workers(1)
    job = pipeline.enqueue([number(1), number(2), number(3)], SECRET).job_id
    pipeline.wait_for(job)

    attempts = attempts_of(pipeline.db, job)
    assert len(attempts) >= 2
    for a in attempts:
        for field in (a.numbers, a.request, a.raw_reply, a.error):
            assert SECRET not in (field or "")
    assert "482913" not in json.dumps([a.request for a in attempts])
    listed = pipeline.service.list_jobs(number=number(1))
    api_page, _ = pipeline.service.list_jobs_page(selection=store.JobFilter(), limit=10)
    with pipeline.db.transaction() as session:
        job_row = session.get(Job, job)
        assert job_row is not None
        webhook_body = json.dumps(job_to_dict(job_row, store.job_recipients(session, job_id=job)))
    cli_list = pipeline.cli("jobs")
    cli_json = pipeline.cli("jobs", "--json")
    assert cli_list.returncode == 0
    assert job in cli_list.stdout
    exported = "".join(audit.export_csv(pipeline.db, since=None, until=None, job_id=job))
    for shown in (
        json.dumps(listed),
        json.dumps(api_page),
        webhook_body,
        cli_list.stdout + cli_list.stderr,
        cli_json.stdout,
        worker.log(),
        caplog.text,
        exported,
    ):
        assert SECRET not in shown
    assert job_row.text == SECRET, "the job itself keeps it, for its own page"


def test_a_failed_statement_does_not_quote_its_parameters(database: Database) -> None:
    with pytest.raises(DBAPIError) as failure, database.transaction() as session:
        session.execute(text("SELECT CAST(:v AS INTEGER) / 0 FROM nothing_here"), {"v": SECRET})
    assert SECRET not in str(failure.value)


class _EchoHandler(http.server.BaseHTTPRequestHandler):
    """A broken gateway whose error page quotes the form it was sent."""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        page = b"<html>Server Error in request: " + body + b"</html>"
        self.send_response(500)
        self.send_header("Content-Length", str(len(page)))
        self.end_headers()
        self.wfile.write(page)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_an_echoed_text_is_masked_in_the_stored_reply() -> None:
    """The raw reply is kept for the audit; an error page that echoes the request must
    not carry the text (nor the password) into it."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _EchoHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    client = GatewayClient(
        GatewayConfig(
            url=f"http://127.0.0.1:{server.server_address[1]}/smsgateway",
            backup_url=None,
            username="user",
            password="pa55word-xyz",
        )
    )
    try:
        submission = client.submit(
            [number(1)], Message(text=SECRET, sender=None, maxconcat=1, message_type=1)
        )
    finally:
        client.close()
        server.shutdown()
        server.server_close()
    assert submission.raw_reply is not None
    assert "Server Error" in submission.raw_reply
    assert number(1) in submission.raw_reply, "the echo is there..."
    assert "482913" not in submission.raw_reply, "...but not the text"
    assert "pa55word" not in submission.raw_reply


# --- retention -----------------------------------------------------------------------------


def _finished_old_jobs(service: Dispatcher, simulator: GatewaySimulator) -> tuple[str, str, str]:
    simulator.configure(number_rules={number(2): "INVALID_NUMBER", number(4): "GATEWAY_ERROR"})
    old = service.enqueue([number(1), number(2), number(3)], SECRET).job_id
    waiting = service.enqueue(number(4), SECRET).job_id
    service.dispatch_due(worker="w")
    recent = service.enqueue(number(5), SECRET).job_id
    service.dispatch_due(worker="w")
    backdate(service.db, old, OLD)
    backdate(service.db, waiting, OLD)
    return old, waiting, recent


def test_purge_removes_text_and_numbers_and_keeps_the_counts(
    service: Dispatcher, simulator: GatewaySimulator
) -> None:
    old, waiting, recent = _finished_old_jobs(service, simulator)
    before = [
        (r.status, r.gateway_message_id, r.error_code, r.attempts)
        for r in recipients_of(service.db, old)
    ]
    assert any("," in (a.raw_reply or "") for a in attempts_of(service.db, old)), (
        "a multi-line reply"
    )

    dry = audit.purge(service.db, retention_days=30, dry_run=True)
    assert (dry.jobs, dry.recipients) == (1, 3)
    assert number(1) in everything_stored(service.db, old), "a dry run changes nothing"

    report = audit.purge(service.db, retention_days=30)

    assert (report.jobs, report.recipients) == (1, 3)
    stored = everything_stored(service.db, old)
    for n in (number(1), number(2), number(3)):
        assert n not in stored
    after = [
        (r.status, r.gateway_message_id, r.error_code, r.attempts)
        for r in recipients_of(service.db, old)
    ]
    assert after == before
    assert {r.number for r in recipients_of(service.db, old)} == {store.PURGED}
    with service.db.transaction() as session:
        jobs = {j.id: j for j in session.scalars(select(Job))}
    assert jobs[old].text == ""
    assert jobs[old].purged_at is not None
    assert jobs[old].recipient_count == 3
    # Still retrying, or too young: left alone.
    assert jobs[waiting].text == SECRET
    assert jobs[waiting].purged_at is None
    assert jobs[recent].text == SECRET
    assert jobs[recent].purged_at is None
    [action] = actions(service.db, "purge")
    assert (action.actor, action.affected) == ("retention", 1)
    assert audit.purge(service.db, retention_days=30).jobs == 0, "idempotent"
    assert len(actions(service.db, "purge")) == 1


def test_purge_works_in_batches(service: Dispatcher) -> None:
    jobs = [service.enqueue(number(i), SECRET).job_id for i in range(1, 6)]
    for job in jobs:
        service.cancel(job, actor="t")
        backdate(service.db, job, OLD)

    report = audit.purge(service.db, retention_days=30, jobs_per_transaction=2)

    assert report.jobs == 5
    assert [a.affected for a in actions(service.db, "purge")] == [2, 2, 1]


def test_the_sweeper_purges_at_most_once_per_interval(
    database: Database, simulator: GatewaySimulator, tmp_path: Path
) -> None:
    settings = make_settings(database, simulator, tmp_path, retention_days=30)
    svc = Dispatcher(settings, database=database)
    try:
        first = svc.enqueue(number(1), SECRET).job_id
        svc.cancel(first, actor="t")
        backdate(database, first, OLD)
        assert svc.sweep()["purged_jobs"] == 1
        second = svc.enqueue(number(2), SECRET).job_id
        svc.cancel(second, actor="t")
        backdate(database, second, OLD)
        assert svc.sweep()["purged_jobs"] == 0, "not again within the interval"
        svc.retention._next_at = 0.0
        assert svc.sweep()["purged_jobs"] == 1
    finally:
        svc.close()


def test_retention_days_is_validated() -> None:
    base = {"settings_file": os.devnull}
    assert load_settings(**base).retention_days is None
    assert load_settings(**base, retention_days="").retention_days is None
    assert load_settings(**base, retention_days="30").retention_days == 30
    with pytest.raises(ConfigurationError, match="DISPATCHER_RETENTION_DAYS"):
        load_settings(**base, retention_days="0")


# --- erasure --------------------------------------------------------------------------------


def test_erase_removes_one_number_everywhere(
    service: Dispatcher, simulator: GatewaySimulator
) -> None:
    alone = service.enqueue(number(1), SECRET).job_id
    shared = service.enqueue([number(1), number(2)], "Bulk news").job_id
    service.dispatch_due(worker="w")
    waiting = service.enqueue(number(1), SECRET).job_id

    counts = audit.erase(service.db, "+44 7700 900001", actor="ops:dpo")

    assert counts.recipients == 3
    assert counts.cancelled == 1
    for job in (alone, shared, waiting):
        assert number(1) not in everything_stored(service.db, job)
    assert number(2) in everything_stored(service.db, shared), "others keep theirs"
    shared_rows = {r.number: r for r in recipients_of(service.db, shared)}
    assert set(shared_rows) == {store.ERASED, number(2)}
    assert shared_rows[store.ERASED].gateway_message_id is not None
    [attempt] = attempts_of(service.db, shared)
    assert attempt.numbers == f"{store.ERASED},{number(2)}"
    assert {r.status for r in recipients_of(service.db, waiting)} == {"cancelled"}
    with service.db.transaction() as session:
        texts = {j.id: j.text for j in session.scalars(select(Job))}
    assert texts == {alone: "", shared: "Bulk news", waiting: ""}
    [action] = actions(service.db, "erase")
    assert action.actor == "ops:dpo"
    assert action.affected == 3
    assert "900001" not in (action.detail or "")
    assert action.target is None
    assert rows_of(audit.export_csv(service.db, since=None, until=None, number=number(1))) == []
    assert audit.erase(service.db, number(1), actor="ops:dpo").recipients == 0


# --- the CLI ----------------------------------------------------------------------------------


@pytest.fixture
def cli_env(
    tmp_path: Path, simulator: GatewaySimulator
) -> Iterator[tuple[DispatcherEnv, Dispatcher]]:
    """The embedded defaults in this test's folder, migrated, and a service on them."""
    env = DispatcherEnv(
        {
            ENV_PREFIX + "DATA_DIR": str(tmp_path / "data"),
            ENV_PREFIX + "SETTINGS_FILE": os.devnull,
        }
    )
    database = Database(env.settings().effective_database_url)
    migrate.upgrade(database)
    settings = make_settings(database, simulator, tmp_path / "data")
    svc = Dispatcher(settings, database=database)
    try:
        yield env, svc
    finally:
        svc.close()


def cli(env: DispatcherEnv, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(env, tmp_path, *args)


def test_cli_export_writes_csv_and_refuses_bad_arguments(
    cli_env: tuple[DispatcherEnv, Dispatcher], tmp_path: Path
) -> None:
    env, svc = cli_env
    job = svc.enqueue([number(1), number(2)], SECRET).job_id
    out = tmp_path / "audit.csv"

    done = cli(env, tmp_path, "export", "--number", "07700 900002", "--output", str(out))
    assert done.returncode == 0, done.stderr
    with out.open(newline="") as written:
        rows = list(csv.DictReader(written))
    assert [(r["job_id"], r["number"], r["to_status"]) for r in rows] == [
        (job, number(2), "queued")
    ]
    assert "wrote 1 rows" in done.stderr

    to_stdout = cli(
        env, tmp_path, "export", "--job", job, "--kind", "recipients", "--since", "2020-01-01"
    )
    assert to_stdout.returncode == 0, to_stdout.stderr
    assert len(list(csv.DictReader(io.StringIO(to_stdout.stdout)))) == 2

    for args, needle in (
        (["export"], "say what to export"),
        (["export", "--since", "2026-02-01", "--until", "2026-01-01"], "since must be before"),
        (["export", "--number", "12"], "12"),
        (["export", "--since", "yesterday"], "ISO 8601"),
    ):
        bad = cli(env, tmp_path, *args, "--output", str(tmp_path / "bad.csv"))
        assert bad.returncode == 2, (args, bad.stderr)
        assert needle in bad.stderr
        assert "Traceback" not in bad.stderr
        assert not (tmp_path / "bad.csv").exists()


def test_cli_purge_and_erase(cli_env: tuple[DispatcherEnv, Dispatcher], tmp_path: Path) -> None:
    env, svc = cli_env
    old = svc.enqueue(number(1), SECRET).job_id
    svc.cancel(old, actor="t")
    backdate(svc.db, old, OLD)

    unset = cli(env, tmp_path, "purge")
    assert unset.returncode == 2
    assert "DISPATCHER_RETENTION_DAYS" in unset.stderr
    dry = cli(env.with_vars(retention_days="30"), tmp_path, "purge", "--dry-run")
    assert dry.returncode == 0
    assert "would purge 1 jobs (1 recipients)" in dry.stdout
    done = cli(env.with_vars(retention_days="30"), tmp_path, "purge", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["jobs"] == 1

    svc.enqueue(number(2), SECRET)
    unconfirmed = cli(env, tmp_path, "erase", "07700900002")
    assert unconfirmed.returncode == 2
    assert "--yes" in unconfirmed.stderr
    assert number(2) in {r.number for r in recipients_of(svc.db, svc.list_jobs()[0]["id"])}
    erased = cli(env, tmp_path, "erase", "07700900002", "--yes")
    assert erased.returncode == 0, erased.stderr
    assert "1 recipients" in erased.stdout
    assert number(2) not in erased.stdout
    [action] = actions(svc.db, "erase")
    assert action.actor.startswith("cli:")
    bad = cli(env, tmp_path, "erase", "12", "--yes")
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr


def _unknown_job(svc: Dispatcher, simulator: GatewaySimulator) -> str:
    simulator.configure(drop_after_accept_rate=1.0)
    job = svc.enqueue(number(1), SECRET).job_id
    svc.dispatch_due(worker="w")
    simulator.configure(drop_after_accept_rate=0.0)
    assert {r.status for r in recipients_of(svc.db, job)} == {"unknown"}
    return job


def test_cli_retry_of_unknown_needs_the_flag_without_a_terminal(
    cli_env: tuple[DispatcherEnv, Dispatcher], tmp_path: Path, simulator: GatewaySimulator
) -> None:
    env, svc = cli_env
    job = _unknown_job(svc, simulator)

    refused = cli(env, tmp_path, "retry", "--job", job, "--status", "unknown")
    assert refused.returncode == 2
    assert "--yes-may-double-send" in refused.stderr
    assert {r.status for r in recipients_of(svc.db, job)} == {"unknown"}

    done = cli(
        env,
        tmp_path,
        "retry",
        "--number",
        "+447700900001",
        "--status",
        "unknown",
        "--since",
        "2020-01-01T00:00:00Z",
        "--yes-may-double-send",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert (answer["retried"], answer["jobs"], answer["held_back"]) == (1, [job], {})
    assert [r["number"] for r in answer["sample"]] == [number(1)]
    [action] = actions(svc.db, "retry")
    assert action.actor.startswith("cli:")


def test_cli_retry_of_unknown_asks_at_a_terminal(
    cli_env: tuple[DispatcherEnv, Dispatcher], tmp_path: Path, simulator: GatewaySimulator
) -> None:
    env, svc = cli_env
    job = _unknown_job(svc, simulator)

    def at_terminal(answer: bytes) -> str:
        leader, follower = pty.openpty()
        process = subprocess.Popen(
            [sys.executable, "-m", "dispatcher", "retry", "--job", job, "--status", "unknown"],
            env=env.process_env(),
            cwd=tmp_path,
            stdin=follower,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        os.close(follower)
        os.write(leader, answer)
        out, err = process.communicate(timeout=60)
        os.close(leader)
        return (out + err).decode()

    said_no = at_terminal(b"n\n")
    assert "may send them twice" in said_no
    assert "Aborted" in said_no
    assert {r.status for r in recipients_of(svc.db, job)} == {"unknown"}
    said_yes = at_terminal(b"y\n")
    assert "queued 1 recipients again" in said_yes
    assert {r.status for r in recipients_of(svc.db, job)} == {"queued"}


def test_cli_cancel_pause_and_resume_record_the_operator(
    cli_env: tuple[DispatcherEnv, Dispatcher], tmp_path: Path
) -> None:
    env, svc = cli_env
    job = svc.enqueue(number(1), SECRET).job_id
    for args in (["pause", "--reason", "audit"], ["resume"], ["cancel", job]):
        done = cli(env, tmp_path, *args)
        assert done.returncode == 0, done.stderr
    for action in ("pause", "resume", "cancel"):
        [row] = actions(svc.db, action)
        assert row.actor.startswith("cli:")
        assert "@" in row.actor
    assert {r.status for r in recipients_of(svc.db, job)} == {"cancelled"}
    assert {e.actor for e in events_of(svc.db, job) if e.to_status == "cancelled"} == {
        actions(svc.db, "cancel")[0].actor
    }


def test_retry_leaves_out_erased_recipients(
    service: Dispatcher, simulator: GatewaySimulator
) -> None:
    simulator.configure(number_rules={number(1): "INVALID_NUMBER", number(2): "INVALID_NUMBER"})
    job = service.enqueue([number(1), number(2)], "Bulk news").job_id
    service.dispatch_due(worker="w")
    assert {r.status for r in recipients_of(service.db, job)} == {"failed"}
    audit.erase(service.db, number(1), actor="ops:dpo")

    simulator.configure(number_rules={})
    retried = service.retry(actor="ops", job_id=job, error_code="INVALID_NUMBER")
    assert retried.affected == 1, "the erased recipient has no number left to send to"
    service.dispatch_due(worker="w")
    rows = {r.number: r.status for r in recipients_of(service.db, job)}
    assert rows == {store.ERASED: "failed", number(2): "sent"}
    assert store.ERASED not in {e["number"] for e in simulator.ledger()}
