"""A retry sends again only what can succeed, says why it leaves the rest, keeps each
recipient's attempt count, and never sends past a validity (issue 16, item 1;
``dispatcher.domain.retries``). On SQLite and PostgreSQL, against the simulator.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from dispatcher.domain.statuses import PauseReason
from dispatcher.domain.times import utcnow
from dispatcher.errors import ConfirmationRequiredError
from dispatcher.gateway.simulator import GatewaySimulator
from dispatcher.persistence.db import Database
from dispatcher.persistence.models import OperatorAction
from dispatcher.service.dispatcher import Dispatcher
from support.numbers import number
from support.reads import attempts_of, batches_of, events_of, recipients_of
from support.settings import DispatcherEnv, make_service
from support.workers import run_cli

pytestmark = pytest.mark.usefixtures("clean_env")


@pytest.fixture
def one_try(
    database: Database, simulator: GatewaySimulator, tmp_path: Path
) -> Iterator[Dispatcher]:
    """A service that gives up after one transient failure: failures come quickly."""
    service = make_service(database, simulator, tmp_path, max_attempts=1)
    try:
        yield service
    finally:
        service.close()


def status_of(service: Dispatcher, job_id: str) -> dict[str, str]:
    return {r.number: str(r.status) for r in recipients_of(service.db, job_id)}


def retry_actions(db: Database) -> list[OperatorAction]:
    with db.transaction() as session:
        return list(session.scalars(select(OperatorAction).where(OperatorAction.action == "retry")))


def test_permanent_failures_stay_unless_named_and_a_dry_run_writes_nothing(
    one_try: Dispatcher, simulator: GatewaySimulator
) -> None:
    simulator.configure(number_rules={number(1): "INVALID_NUMBER", number(2): "GATEWAY_ERROR*1"})
    job = one_try.enqueue([number(1), number(2), number(3)], "mixed").job_id
    one_try.dispatch_due(worker="w")
    before = status_of(one_try, job)
    assert before == {number(1): "failed", number(2): "failed", number(3): "sent"}

    dry = one_try.retry(actor="ops", job_id=job, dry_run=True)
    assert (dry.affected, dry.jobs) == (1, [job])
    assert dry.plan is not None
    assert [r["error_code"] for r in dry.plan["sample"]] == ["GATEWAY_ERROR"]
    held = dry.plan["held_back"]
    assert list(held) == ["permanent"]
    assert held["permanent"]["count"] == 1
    assert held["permanent"]["sample"][0]["error_code"] == "INVALID_NUMBER"
    assert "name the error code" in held["permanent"]["why"]
    assert status_of(one_try, job) == before
    assert retry_actions(one_try.db) == [], "a dry run is not an action"

    done = one_try.retry(actor="ops", job_id=job)
    assert done.affected == 1
    assert status_of(one_try, job)[number(1)] == "failed"
    assert status_of(one_try, job)[number(2)] == "queued"
    [action] = retry_actions(one_try.db)
    assert '"held_back": {"permanent": 1}' in (action.detail or "")

    named = one_try.retry(actor="ops", job_id=job, error_code="INVALID_NUMBER")
    assert named.affected == 1
    assert status_of(one_try, job)[number(1)] == "queued"


def test_attempts_count_across_a_retry_and_the_limit_counts_from_it(
    one_try: Dispatcher, simulator: GatewaySimulator
) -> None:
    simulator.configure(number_rules={number(1): "GATEWAY_ERROR*2"})
    job = one_try.enqueue(number(1), "again and again").job_id
    one_try.dispatch_due(worker="w")
    [failed] = recipients_of(one_try.db, job)
    assert (str(failed.status), failed.attempts) == ("failed", 1)

    assert one_try.retry(actor="ops", job_id=job).affected == 1
    [queued] = recipients_of(one_try.db, job)
    assert (str(queued.status), queued.attempts, queued.attempts_base) == ("queued", 1, 1)
    one_try.dispatch_due(worker="w")
    # Fails again (the second GATEWAY_ERROR): one attempt allowed since the retry.
    [again] = recipients_of(one_try.db, job)
    assert (str(again.status), again.attempts) == ("failed", 2)
    causes = [e.cause for e in events_of(one_try.db, job) if e.to_status == "failed"]
    assert causes[-1] == (
        "GATEWAY_ERROR; gave up after attempt 2 (1 of 1 since the operator's retry)"
    )

    assert one_try.retry(actor="ops", job_id=job).affected == 1
    one_try.dispatch_due(worker="w")
    [sent] = recipients_of(one_try.db, job)
    assert (str(sent.status), sent.attempts) == ("sent", 3)
    # The history's attempt numbers keep increasing across the retries' new batches.
    assert [a.attempt_no for a in attempts_of(one_try.db, job)] == [1, 2, 3]


def test_a_validity_that_ended_holds_a_retry_back_until_a_new_one_is_given(
    one_try: Dispatcher, simulator: GatewaySimulator
) -> None:
    simulator.configure(number_rules={number(1): "GATEWAY_ERROR*1"})
    job = one_try.enqueue(number(1), "Your code is 123456", valid_for_s=1.0).job_id
    one_try.dispatch_due(worker="w")
    assert status_of(one_try, job) == {number(1): "failed"}
    time.sleep(1.2)

    held = one_try.retry(actor="ops", job_id=job)
    assert held.affected == 0
    assert held.plan is not None
    assert held.plan["held_back"]["validity_ended"]["count"] == 1
    assert status_of(one_try, job) == {number(1): "failed"}

    before = utcnow()
    renewed = one_try.retry(actor="ops", job_id=job, valid_for_s=120)
    assert renewed.affected == 1
    newest = max(batches_of(one_try.db, job), key=lambda b: b.id)
    assert newest.expires_at is not None
    assert before + dt.timedelta(seconds=119) <= newest.expires_at
    assert newest.expires_at <= utcnow() + dt.timedelta(seconds=120)
    one_try.dispatch_due(worker="w")
    assert status_of(one_try, job) == {number(1): "sent"}


def test_a_retry_within_the_validity_keeps_it(
    one_try: Dispatcher, simulator: GatewaySimulator
) -> None:
    simulator.configure(number_rules={number(1): "GATEWAY_ERROR*1"})
    job = one_try.enqueue(number(1), "Your code is 654321", valid_for_s=600.0).job_id
    one_try.dispatch_due(worker="w")
    [first] = batches_of(one_try.db, job)
    assert one_try.retry(actor="ops", job_id=job).affected == 1
    retried = max(batches_of(one_try.db, job), key=lambda b: b.id)
    assert retried.id != first.id
    assert retried.expires_at == first.expires_at, "not sent after the job's validity"


def test_login_invalid_waits_for_a_resume_before_a_retry_takes_it(
    one_try: Dispatcher, simulator: GatewaySimulator
) -> None:
    simulator.configure(number_rules={number(1): "LOGIN_INVALID"})
    job = one_try.enqueue(number(1), "wrong password").job_id
    one_try.dispatch_due(worker="w")
    assert status_of(one_try, job) == {number(1): "failed"}
    assert one_try.control()["pause_reason"] == PauseReason.LOGIN_INVALID

    held = one_try.retry(actor="ops", job_id=job)
    assert held.affected == 0
    assert held.plan is not None
    assert list(held.plan["held_back"]) == ["credentials_unchanged"]

    # The operator fixes the credentials and resumes: now a retry takes it.
    simulator.configure(number_rules={})
    one_try.resume(actor="ops")
    assert one_try.retry(actor="ops", job_id=job).affected == 1
    one_try.dispatch_due(worker="w")
    assert status_of(one_try, job) == {number(1): "sent"}


def test_unknown_recipients_show_their_age_and_still_need_confirmation(
    one_try: Dispatcher, simulator: GatewaySimulator
) -> None:
    simulator.configure(drop_after_accept_rate=1.0)
    job = one_try.enqueue(number(1), "maybe sent").job_id
    one_try.dispatch_due(worker="w")
    simulator.configure(drop_after_accept_rate=0.0)
    assert status_of(one_try, job) == {number(1): "unknown"}
    time.sleep(0.2)

    dry = one_try.retry(actor="ops", job_id=job, statuses=["unknown"], dry_run=True)
    assert dry.affected == 0
    assert dry.plan is not None
    [listed] = dry.plan["held_back"]["unknown_unconfirmed"]["sample"]
    assert listed["age_s"] >= 0.2
    with pytest.raises(ConfirmationRequiredError):
        one_try.retry(actor="ops", job_id=job, statuses=["unknown"])
    confirmed = one_try.retry(actor="ops", job_id=job, statuses=["unknown"], confirm_unknown=True)
    assert confirmed.affected == 1


def test_cli_status_shows_when_a_recipient_waiting_to_retry_is_next_tried(
    service: Dispatcher, simulator: GatewaySimulator, tmp_path: Path
) -> None:
    simulator.configure(number_rules={number(1): "GATEWAY_ERROR*1"})
    job = service.enqueue(number(1), "soon again").job_id
    service.dispatch_due(worker="w")
    [row] = recipients_of(service.db, job)
    assert (str(row.status), row.next_attempt_at is not None) == ("retry_wait", True)
    env = DispatcherEnv.on_database(service.db.url, tmp_path / "data")
    shown = run_cli(env, tmp_path, "status", job)
    assert shown.returncode == 0, shown.stderr
    assert row.next_attempt_at is not None
    assert f"GATEWAY_ERROR; next attempt {row.next_attempt_at.isoformat()}" in shown.stdout
