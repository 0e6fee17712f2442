"""The soak's checker (``ops.soak.check``) on runs made by hand: a run that kept every
guarantee holds, and each kind of breach breaks the invariant written for it.

The rows are written straight into a migrated database, as the pipeline would have
left them; the soak itself (tests/system/test_soak.py) shows the checker on a real
run and on a deliberately broken build.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import update

from dispatcher.domain.times import utcnow
from dispatcher.persistence.db import Database
from dispatcher.persistence.models import (
    Attempt,
    Batch,
    DispatchControl,
    Job,
    Recipient,
    StatusEvent,
)
from dispatcher.persistence.store.heartbeats import upsert_heartbeat
from ops.soak.check import Checked, check
from ops.soak.faults import Fired
from ops.soak.load import Acknowledged
from ops.soak.stack import HEARTBEAT_INTERVAL_S, REFUSED, SUBMITTING_TIMEOUT_S

NOW = utcnow()
SENT, LOST, REFUSED_NUMBER = "447700900001", "447700900002", REFUSED[0]


@dataclass
class Run:
    """What the checker reads besides the database."""

    ledger: list[dict[str, Any]] = field(default_factory=list)
    acknowledged: list[Acknowledged] = field(default_factory=list)
    fired: list[Fired] = field(default_factory=list)
    gateway_requests: int = 3
    workers: list[str] = field(default_factory=list)

    def check(self, db: Database) -> Checked:
        return check(
            db,
            ledger=self.ledger,
            acknowledged=self.acknowledged,
            fired=self.fired,
            gateway_requests=self.gateway_requests,
            submitting_timeout_s=SUBMITTING_TIMEOUT_S,
            now=NOW.timestamp(),
            workers=self.workers,
        )


def _job(session: Any, job_id: str, text: str, number: str, status: str, **recipient: Any) -> int:
    """A one-recipient job, its batch done and one attempt; the attempt's id."""
    at = NOW - dt.timedelta(seconds=60)
    session.add(
        Job(id=job_id, text=text, parts=1, encoding="gsm", recipient_count=1, created_at=at)
    )
    batch = Batch(job_id=job_id, status="done", due_at=at, attempts=1, created_at=at)
    session.add(batch)
    session.flush()
    outcome = {"sent": "accepted", "unknown": "abandoned", "failed": "rejected"}[status]
    attempt = Attempt(
        batch_id=batch.id,
        job_id=job_id,
        attempt_no=1,
        numbers=number,
        started_at=at,
        finished_at=at + dt.timedelta(seconds=1),
        outcome=outcome,
    )
    session.add(attempt)
    session.flush()
    row = Recipient(
        job_id=job_id,
        batch_id=batch.id,
        number=number,
        stored_status=status,
        attempts=1,
        created_at=at,
        **recipient,
    )
    session.add(row)
    session.flush()
    if status == "unknown":
        session.add(
            StatusEvent(
                recipient_id=row.id,
                job_id=job_id,
                at=at,
                from_status="submitting",
                to_status="unknown",
                cause="worker lost",
                actor="sweeper",
                attempt_id=attempt.id,
            )
        )
    return int(attempt.id)


@pytest.fixture
def run(database: Database) -> Run:
    """A run that kept every guarantee: one sent, one unknown during a worker kill (the
    gateway took it), one refused number."""
    with database.transaction() as session:
        _job(session, "J" * 26, "sent text", SENT, "sent", gateway_message_id="M1")
        lost_attempt = _job(
            session, "K" * 26, "lost text", LOST, "unknown", error_code="WORKER_LOST"
        )
        _job(
            session, "L" * 26, "refused text", REFUSED_NUMBER, "failed", error_code="INVALID_NUMBER"
        )
        started = session.get(Attempt, lost_attempt)
        assert started is not None
        began = started.started_at.timestamp()
    return Run(
        ledger=[
            {"number": SENT, "text": "sent text", "message_id": "M1"},
            {"number": LOST, "text": "lost text", "message_id": "M2"},
        ],
        acknowledged=[
            Acknowledged("J" * 26, "api", (SENT,), "sent text", 0.0),
            Acknowledged("K" * 26, "python", (LOST,), "lost text", 0.0),
            Acknowledged("L" * 26, "dropin", (REFUSED_NUMBER,), "refused text", 0.0),
        ],
        fired=[Fired("worker_kill", began + 0.5, began + 2.0)],
    )


def _broken(checked: Checked) -> dict[str, int]:
    return {i.name: i.broken for i in checked.invariants if not i.holds}


def test_a_run_that_kept_every_guarantee_holds(database: Database, run: Run) -> None:
    checked = run.check(database)
    assert _broken(checked) == {}
    assert checked.holds
    assert dict(checked.by_status) == {"sent": 1, "unknown": 1, "failed": 1}
    assert {i.name: i.checked for i in checked.invariants}["unknown_explained"] == 1


def _set_recipient(database: Database, number: str, **values: Any) -> None:
    with database.transaction() as session:
        session.execute(update(Recipient).where(Recipient.number == number).values(**values))


BREACHES: dict[str, Callable[[Database, Run], None]] = {
    "acknowledged_kept": lambda db, run: run.acknowledged.append(
        Acknowledged("M" * 26, "api", (SENT,), "never written", 0.0)
    ),
    "accepted_once": lambda db, run: run.ledger.append(
        {"number": SENT, "text": "sent text", "message_id": "M9"}
    ),
    "final_or_waiting": lambda db, run: _set_recipient(db, SENT, stored_status="queued"),
    "nothing_stale_submitting": lambda db, run: _stale_batch(db),
    "unknown_explained": lambda db, run: run.fired.clear(),
    "accepted_ids_stored": lambda db, run: _set_recipient(db, SENT, gateway_message_id="M7"),
    "calls_audited": lambda db, run: setattr(run, "gateway_requests", 4),
    "unknown_not_resubmitted": lambda db, run: _resubmit_lost(db),
    "refused_never_sent": lambda db, run: _set_recipient(
        db, REFUSED_NUMBER, stored_status="sent", error_code=None
    ),
}


def _resubmit_lost(database: Database) -> None:
    """A later attempt carrying the unknown recipient: an automatic resend."""
    with database.transaction() as session:
        [lost] = session.query(Recipient).filter(Recipient.number == LOST).all()
        session.add(
            Attempt(
                batch_id=lost.batch_id,
                job_id=lost.job_id,
                attempt_no=2,
                numbers=f"{SENT},{LOST}",
                started_at=NOW,
                finished_at=NOW,
                outcome="transient",
            )
        )


def _stale_batch(database: Database) -> None:
    claimed = NOW - dt.timedelta(seconds=SUBMITTING_TIMEOUT_S + 60)
    with database.transaction() as session:
        session.add(Batch(job_id="J" * 26, status="submitting", due_at=claimed, claimed_at=claimed))


@pytest.mark.parametrize("name", sorted(BREACHES))
def test_each_breach_breaks_its_own_invariant(database: Database, run: Run, name: str) -> None:
    BREACHES[name](database, run)
    checked = run.check(database)
    assert not checked.holds
    assert name in _broken(checked), _broken(checked)
    invariant = {i.name: i for i in checked.invariants}[name]
    assert invariant.examples, f"{name} broke without an example"


def test_a_number_given_twice_is_one_recipient(database: Database, run: Run) -> None:
    """A job keeps the first of each duplicate number: the producer's list is not the
    job's recipients one for one."""
    sent = run.acknowledged[0]
    run.acknowledged[0] = Acknowledged(sent.job_id, sent.kind, (SENT, SENT), sent.text, 0.0)
    assert "acknowledged_kept" not in _broken(run.check(database))
    run.acknowledged[0] = Acknowledged(sent.job_id, sent.kind, (SENT, LOST), sent.text, 0.0)
    assert "acknowledged_kept" in _broken(run.check(database))


def test_a_pause_shows_why_recipients_still_wait(database: Database, run: Run) -> None:
    _set_recipient(database, SENT, stored_status="queued")
    with database.transaction() as session:
        session.merge(
            DispatchControl(id=1, paused=True, pause_reason="credit", pause_detail="out of credit")
        )
    assert "final_or_waiting" not in _broken(run.check(database))


def test_an_operators_retry_of_an_unknown_may_send_it_again(database: Database, run: Run) -> None:
    run.ledger.append({"number": LOST, "text": "lost text", "message_id": "M3"})
    assert "accepted_once" in _broken(run.check(database))
    with database.transaction() as session:
        [lost] = session.query(Recipient).filter(Recipient.number == LOST).all()
        session.add(
            StatusEvent(
                recipient_id=lost.id,
                job_id=lost.job_id,
                at=NOW,
                from_status="unknown",
                to_status="queued",
                cause="operator retry, confirmed",
                actor="cli",
            )
        )
    assert "accepted_once" not in _broken(run.check(database))


def test_a_worker_that_did_not_rejoin_is_named(database: Database, run: Run) -> None:
    """After a partition from the broker heals, its worker must consume again."""

    def beat(name: str, consumed_ago_s: float) -> None:
        with database.transaction() as session:
            upsert_heartbeat(
                session,
                {
                    "name": name,
                    "hostname": "soak-w1",
                    "pid": 1,
                    "queues": "dispatch.normal",
                    "started_at": NOW,
                    "seen_at": NOW,
                    "consumed_at": NOW - dt.timedelta(seconds=consumed_ago_s),
                    "batches": 0,
                    "state": "running",
                },
            )

    beat("back@soak-w1", 0.0)
    beat("cut@soak-w2", 10 * HEARTBEAT_INTERVAL_S)
    run.workers = ["back@soak-w1"]
    assert run.check(database).holds
    run.workers = ["back@soak-w1", "cut@soak-w2", "never@soak-w1"]
    checked = run.check(database)
    assert _broken(checked) == {"workers_rejoined": 2}
