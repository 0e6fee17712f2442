"""Settling `unknown` recipients from the gateway's records (issue 16, item 2): as
`sent` with the gateway's ID, or `failed`, with the reason in their history, audited;
from the service, the CLI, the API (operate only) and the dashboard."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from dispatcher.domain.tenancy import own_jobs
from dispatcher.domain.times import utcnow
from dispatcher.errors import InvalidOptionError, NotFoundError
from dispatcher.gateway.simulator import GatewaySimulator
from dispatcher.persistence.models import OperatorAction
from dispatcher.service import stats
from dispatcher.service.dispatcher import Dispatcher
from support.numbers import number
from support.reads import events_of, recipients_of
from support.settings import DispatcherEnv
from support.workers import run_cli

pytestmark = pytest.mark.usefixtures("clean_env")


def unknown_job(service: Dispatcher, simulator: GatewaySimulator, *numbers: str) -> str:
    """A job whose ``numbers`` the gateway accepted but whose reply was lost."""
    simulator.configure(drop_after_accept_rate=1.0)
    job = service.enqueue(list(numbers), "maybe sent").job_id
    service.dispatch_due(worker="w")
    simulator.configure(drop_after_accept_rate=0.0)
    assert {str(r.status) for r in recipients_of(service.db, job)} == {"unknown"}
    return job


def settle_actions(service: Dispatcher) -> list[OperatorAction]:
    with service.db.transaction() as session:
        return list(
            session.scalars(select(OperatorAction).where(OperatorAction.action == "settle"))
        )


def test_settled_as_sent_with_the_gateways_id_and_the_reason_on_record(
    service: Dispatcher, simulator: GatewaySimulator
) -> None:
    job = unknown_job(service, simulator, number(1), number(2))
    [entry, *_] = [e for e in simulator.ledger() if e["number"] == number(1)]

    result = service.settle(
        job,
        status="sent",
        reason="vendor's account history shows it delivered",
        actor="ops:alice",
        numbers=[number(1)],
        gateway_message_id=entry["message_id"],
    )
    assert (result.settled, result.job, str(result.status)) == (1, job, "sent")
    rows = {r.number: r for r in recipients_of(service.db, job)}
    assert str(rows[number(1)].status) == "sent"
    assert rows[number(1)].gateway_message_id == entry["message_id"]
    assert str(rows[number(2)].status) == "unknown", "only the number named"
    [event] = [
        e
        for e in events_of(service.db, job)
        if e.recipient_id == rows[number(1)].id and e.to_status == "sent"
    ]
    assert (event.from_status, event.actor) == ("unknown", "ops:alice")
    assert event.cause == (
        "settled as sent by an operator: vendor's account history shows it delivered"
    )
    [action] = settle_actions(service)
    assert (action.actor, action.target, action.affected) == ("ops:alice", job, 1)
    assert json.loads(action.detail or "{}")["status"] == "sent"

    # Settled once: a second settle finds nothing unknown to move, and says so.
    again = service.settle(job, status="failed", reason="x", actor="ops", numbers=[number(1)])
    assert again.settled == 0


def test_settled_as_failed_stays_out_of_a_default_retry(
    service: Dispatcher, simulator: GatewaySimulator
) -> None:
    job = unknown_job(service, simulator, number(1))
    assert service.settle(job, status="failed", reason="no delivery report", actor="o").settled
    [row] = recipients_of(service.db, job)
    assert str(row.status) == "failed"
    assert row.error_detail == "settled as failed by an operator: no delivery report"
    assert service.retry(actor="o", job_id=job).affected == 0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"status": "queued", "reason": "r"}, "sent or failed"),
        ({"status": "sent", "reason": "  "}, "needs a reason"),
        ({"status": "sent", "reason": "r" * 401}, "at most 400"),
        ({"status": "failed", "reason": "r", "gateway_message_id": "abc"}, "as sent"),
        ({"status": "sent", "reason": "r", "gateway_message_id": "abc"}, "names one message"),
        ({"status": "sent", "reason": "bad\x00"}, "NUL"),
    ],
)
def test_refusals_name_the_problem_and_move_nothing(
    service: Dispatcher, simulator: GatewaySimulator, options: dict[str, str], message: str
) -> None:
    job = unknown_job(service, simulator, number(1), number(2))
    with pytest.raises(InvalidOptionError, match=message):
        service.settle(job, actor="o", **options)  # type: ignore[arg-type]
    assert {str(r.status) for r in recipients_of(service.db, job)} == {"unknown"}
    assert settle_actions(service) == []


def test_another_keys_job_is_as_if_missing(
    service: Dispatcher, simulator: GatewaySimulator
) -> None:
    job = unknown_job(service, simulator, number(1))
    with pytest.raises(NotFoundError):
        service.settle("01NOSUCHJOB0000000000000000", status="sent", reason="r", actor="o")
    with pytest.raises(NotFoundError):
        service.settle(job, status="sent", reason="r", actor="o", viewer=own_jobs(424242))
    assert {str(r.status) for r in recipients_of(service.db, job)} == {"unknown"}


def test_cli_settle(service: Dispatcher, simulator: GatewaySimulator, tmp_path: Path) -> None:
    job = unknown_job(service, simulator, number(1))
    # The CLI on the same database as the service.
    env = DispatcherEnv.on_database(service.db.url, tmp_path / "data")
    done = run_cli(
        env,
        tmp_path,
        "settle",
        job,
        "--as",
        "sent",
        "--reason",
        "delivery report 2026-12-07",
        "--number",
        "07700 900001",
        "--gateway-id",
        "MSG-42",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"settled": 1, "job": job, "status": "sent"}
    [row] = recipients_of(service.db, job)
    assert (str(row.status), row.gateway_message_id) == ("sent", "MSG-42")
    refused = run_cli(env, tmp_path, "settle", job, "--as", "queued", "--reason", "r")
    assert refused.returncode == 2
    assert "Traceback" not in refused.stderr


def unacknowledged(service: Dispatcher) -> int:
    with service.db.transaction() as session:
        return stats.snapshot(session, now=utcnow(), heartbeat_interval_s=30).unknown_unacknowledged


def test_the_unknown_alerts_count_falls_when_settled_or_acknowledged_and_rises_on_new(
    service: Dispatcher, simulator: GatewaySimulator, tmp_path: Path
) -> None:
    # sms_dispatcher_unknown_unacknowledged, which the UnknownRecipients alert reads.
    job = unknown_job(service, simulator, number(1), number(2))
    assert unacknowledged(service) == 2
    service.settle(job, status="failed", reason="no report", actor="o", numbers=[number(1)])
    assert unacknowledged(service) == 1

    assert service.acknowledge_unknown(actor="ops:alice") == 1
    assert unacknowledged(service) == 0
    assert [str(r.status) for r in recipients_of(service.db, job)].count("unknown") == 1
    [action] = [a for a in (_all_actions(service)) if a.action == "acknowledge_unknown"]
    assert (action.actor, action.affected) == ("ops:alice", 1)

    time.sleep(0.01)  # a later unknown is later than the acknowledgement on any clock
    unknown_job(service, simulator, number(3))
    assert unacknowledged(service) == 1

    env = DispatcherEnv.on_database(service.db.url, tmp_path / "data")
    done = run_cli(env, tmp_path, "acknowledge-unknown", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"acknowledged": 1}
    assert unacknowledged(service) == 0


def _all_actions(service: Dispatcher) -> list[OperatorAction]:
    with service.db.transaction() as session:
        return list(session.scalars(select(OperatorAction)))


def test_a_job_left_with_unknown_recipients_is_unresolved_until_they_are_settled(
    service: Dispatcher, simulator: GatewaySimulator
) -> None:
    job = unknown_job(service, simulator, number(1), number(2))
    assert service.job_view(job)["status"] == "unresolved"
    [listed] = [row for row in service.list_jobs() if row["id"] == job]
    assert listed["status"] == "unresolved"

    service.settle(job, status="sent", reason="vendor history", actor="o", numbers=[number(1)])
    assert service.job_view(job)["status"] == "unresolved", "one is still unknown"
    service.settle(job, status="failed", reason="no report", actor="o")
    assert service.job_view(job)["status"] == "completed"
