"""One test's whole pipeline (settings, simulator, database, real workers, a producer)
and the guarantees checked over it: nothing sent twice, every sent ID stored."""

from __future__ import annotations

import subprocess
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from celery import Celery
from sqlalchemy import select

from dispatcher import celery_app
from dispatcher.config import Settings
from dispatcher.domain.lanes import QUEUE_DISPATCH, Priority
from dispatcher.domain.statuses import (
    FINAL_STATUSES,
    AttemptOutcome,
    RecipientStatus,
    can_transition,
)
from dispatcher.gateway.simulator import GatewaySimulator
from dispatcher.persistence.db import Database
from dispatcher.persistence.models import Attempt, Job, Recipient, StatusEvent
from dispatcher.service.dispatcher import Dispatcher, EnqueueResult
from support.integrity import assert_references_whole
from support.reads import wait_for_jobs
from support.settings import DispatcherEnv
from support.workers import WorkerFactory, WorkerProcess, run_cli


class CeleryWaker:
    """A waker for a producer in the test process: real Celery messages on the broker.

    Built from the test's own settings with ``make_celery``, as the composition root
    builds a process's app from its settings.
    """

    def __init__(self, settings: Settings) -> None:
        self.app: Celery = celery_app.make_celery(settings)
        self.task_name = celery_app.TASK_DISPATCH
        self.expires_s = celery_app.WAKE_EXPIRES_S
        self.sent = 0

    def __call__(self, count: int, lane: Priority = Priority.NORMAL) -> None:
        for _ in range(count):
            self.send(queue=lane.queue)

    def send(self, task_id: str | None = None, *, queue: str = QUEUE_DISPATCH) -> None:
        """Send one wake-up; the same ``task_id`` twice is one message delivered twice."""
        self.app.send_task(self.task_name, queue=queue, expires=self.expires_s, task_id=task_id)
        self.sent += 1

    def close(self) -> None:
        """Close the app's broker connections."""
        self.app.close()


@dataclass
class Producer:
    """The producer side in the test process: a Dispatcher that wakes real workers."""

    service: Dispatcher
    waker: CeleryWaker

    @classmethod
    def build(cls, env: DispatcherEnv) -> Producer:
        """A producer configured like the workers of ``env``."""
        settings = env.settings()
        waker = CeleryWaker(settings)
        return cls(Dispatcher(settings, waker=waker), waker)

    def close(self) -> None:
        """Release the database and broker connections."""
        self.service.close()
        self.waker.close()


@dataclass
class Pipeline:
    """One test's whole pipeline: settings, simulator, database, workers, producer."""

    env: DispatcherEnv
    sim: GatewaySimulator
    db: Database
    workers: WorkerFactory
    _producer: Producer | None = None

    @property
    def producer(self) -> Producer:
        """The producer, built on first use."""
        if self._producer is None:
            self._producer = Producer.build(self.env)
        return self._producer

    @property
    def service(self) -> Dispatcher:
        """The producer's Dispatcher."""
        return self.producer.service

    def start_workers(self, count: int = 1, **extra_env: str) -> list[WorkerProcess]:
        """Start ``count`` real workers, with some variables changed for them only."""
        env = self.env.with_vars(**extra_env) if extra_env else self.env
        return self.workers.start(count, env=env)

    def enqueue(self, to: str | Iterable[str], text: str, **options: Any) -> EnqueueResult:
        """Enqueue a job through the producer (which wakes the workers)."""
        return self.service.enqueue(to, text, **options)

    def wait_for(self, *job_ids: str, timeout_s: float = 60.0) -> None:
        """Wait until every recipient of these jobs is final."""
        wait_for_jobs(self.db, job_ids, timeout_s)

    def check_invariants(self, **options: bool) -> None:
        """The pipeline's guarantees over this test's database and ledger."""
        check_invariants(self.db, self.sim, **options)

    def cli(self, *args: str, env: DispatcherEnv | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``dispatcher ARGS`` as a child process with this pipeline's environment."""
        return run_cli(env or self.env, self.workers.log_dir, *args)

    def close(self) -> None:
        """Release the producer's connections."""
        if self._producer is not None:
            self._producer.close()


def check_invariants(
    db: Database,
    sim: GatewaySimulator,
    *,
    allow_pending: bool = False,
    allow_in_flight: bool = False,
) -> None:
    """The pipeline's guarantees, checked over the whole (per-test) database and ledger.

    - every recipient is final (unless ``allow_pending``);
    - no (number, text) was accepted twice by the gateway;
    - every attempt row was completed (unless ``allow_in_flight``);
    - the ledger holds exactly one entry per ``sent`` recipient, and each sent
      recipient's gateway message ID is the one the ledger gave its number and text.
    """
    with db.transaction() as session:
        recipients: list[tuple[Recipient, str]] = [
            (r, t)
            for r, t in session.execute(
                select(Recipient, Job.text).join(Job, Job.id == Recipient.job_id)
            )
        ]
        attempts = list(session.scalars(select(Attempt)))
        assert_references_whole(session)

    if not allow_pending:
        pending = [
            (r.number, r.status)
            for r, _ in recipients
            if RecipientStatus(r.status) not in FINAL_STATUSES
        ]
        assert not pending, f"recipients not final: {pending}"

    # Every status change moved along the one table of allowed transitions.
    with db.transaction() as session:
        moves = set(session.execute(select(StatusEvent.from_status, StatusEvent.to_status)).all())
    illegal = sorted(
        (str(old), str(new))
        for old, new in moves
        if old is not None and not can_transition(RecipientStatus(old), RecipientStatus(new))
    )
    assert not illegal, f"status changes the design forbids: {illegal}"

    ledger = sim.ledger()
    accepted = Counter((entry["number"], entry["text"]) for entry in ledger)
    twice = {key: n for key, n in accepted.items() if n > 1}
    assert not twice, f"accepted more than once by the gateway: {twice}"

    if not allow_in_flight:
        open_attempts = [a.id for a in attempts if a.outcome == AttemptOutcome.IN_FLIGHT]
        assert not open_attempts, f"attempts still in flight: {open_attempts}"
        unfinished = [a.id for a in attempts if a.finished_at is None]
        assert not unfinished, f"attempts without finished_at: {unfinished}"

    sent = [(r, text) for r, text in recipients if r.status == RecipientStatus.SENT]
    assert len(ledger) == len(sent), f"{len(ledger)} ledger entries but {len(sent)} sent recipients"
    ids_by_key: Mapping[tuple[str, str], str] = {
        (entry["number"], entry["text"]): entry["message_id"] for entry in ledger
    }
    for recipient, text in sent:
        key = (recipient.number, text)
        assert key in ids_by_key, f"sent recipient {recipient.number} is not in the ledger"
        assert recipient.gateway_message_id == ids_by_key[key], (
            f"{recipient.number}: stored ID {recipient.gateway_message_id!r}, "
            f"gateway gave {ids_by_key[key]!r}"
        )
