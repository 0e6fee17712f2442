"""Shared test helpers: polling, the pipeline's invariants, and real worker processes.

The fixtures that build these live in ``conftest.py``; the classes live here so test
modules can name them in their type hints.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest
from celery import Celery
from psycopg import sql
from sqlalchemy import event, func, select

from dispatcher import celery_app
from dispatcher.config import ENV_PREFIX, Settings, load_settings
from dispatcher.domain.lanes import QUEUE_DISPATCH, Priority
from dispatcher.domain.statuses import FINAL_STATUSES, AttemptOutcome, RecipientStatus
from dispatcher.gateway.client import GatewayClient
from dispatcher.gateway.protocol import SEND_PATH
from dispatcher.gateway.simulator import GatewaySimulator
from dispatcher.persistence.db import Database
from dispatcher.persistence.models import Attempt, Batch, Job, Recipient, StatusEvent
from dispatcher.service.dispatcher import Dispatcher, EnqueueResult

T = TypeVar("T")

PG_HOST = os.environ.get("DISPATCHER_TEST_PGHOST", "127.0.0.1")
PG_PORT = int(os.environ.get("DISPATCHER_TEST_PGPORT", "5432"))
PG_USER = os.environ.get("DISPATCHER_TEST_PGUSER", "postgres")
REDIS_HOST = os.environ.get("DISPATCHER_TEST_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("DISPATCHER_TEST_REDIS_PORT", "6379"))
CLI_TIMEOUT_S = 120.0

WORKER_READY_TIMEOUT_S = 60.0
WORKER_STOP_TIMEOUT_S = 20.0
LOG_TAIL_LINES = 60


def wait_until(
    predicate: Callable[[], T | None],
    timeout_s: float,
    *,
    interval_s: float = 0.05,
    message: str = "condition",
) -> T:
    """Poll ``predicate`` until it returns something truthy, and return that.

    Fails with ``message`` (and the last value seen) when ``timeout_s`` passes first.
    """
    deadline = time.monotonic() + timeout_s
    last: T | None = None
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {message}: {last!r}")
        time.sleep(interval_s)


def number(index: int) -> str:
    """A number of the 07700 900xxx drama range, in international digits."""
    return f"4477009{index:05d}"


# --- PostgreSQL ---------------------------------------------------------------------


def pg_admin() -> psycopg.Connection[tuple[Any, ...]]:
    """An autocommit connection to the server's ``postgres`` database."""
    return psycopg.connect(
        host=PG_HOST,
        port=PG_PORT,
        user=PG_USER,
        dbname="postgres",
        autocommit=True,
        connect_timeout=5,
    )


def pg_url(name: str) -> str:
    """The SQLAlchemy URL of database ``name`` on the test server."""
    return f"postgresql+psycopg://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"


@contextmanager
def scratch_pg_database(prefix: str = "dispatcher_test") -> Iterator[str]:
    """A new, empty PostgreSQL database for as long as the block runs; yields its URL."""
    name = f"{prefix}_{secrets.token_hex(6)}"
    with pg_admin() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield pg_url(name)
    finally:
        with pg_admin() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def truncate_all(db: Database) -> None:
    """Empty every table but Alembic's, on PostgreSQL, resetting the id sequences."""
    with db.engine.begin() as conn:
        # A lock left behind by a stuck connection fails the test instead of hanging it.
        conn.exec_driver_sql("SET LOCAL lock_timeout = '10s'")
        names = (
            conn.exec_driver_sql(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() "
                "AND tablename <> 'alembic_version'"
            )
            .scalars()
            .all()
        )
        if names:
            quoted = ", ".join(f'"{name}"' for name in names)
            conn.exec_driver_sql(f"TRUNCATE TABLE {quoted} RESTART IDENTITY CASCADE")


# --- configuration -----------------------------------------------------------------


@dataclass(frozen=True)
class DispatcherEnv:
    """The DISPATCHER_* variables of one test: for worker processes, the CLI and producers."""

    variables: dict[str, str]

    def with_vars(self, **extra: str) -> DispatcherEnv:
        """A copy with some variables changed (names without the prefix, any case)."""
        changed = {ENV_PREFIX + name.upper(): value for name, value in extra.items()}
        return DispatcherEnv({**self.variables, **changed})

    def without(self, *names: str) -> DispatcherEnv:
        """A copy without some variables (names without the prefix, any case)."""
        dropped = {ENV_PREFIX + name.upper() for name in names}
        return DispatcherEnv({k: v for k, v in self.variables.items() if k not in dropped})

    def process_env(self) -> dict[str, str]:
        """The environment of a child process: ours minus stray DISPATCHER_*, plus these."""
        base = {k: v for k, v in os.environ.items() if not k.upper().startswith(ENV_PREFIX)}
        return {**base, **self.variables}

    def settings(self) -> Settings:
        """The Settings a process started with ``process_env()`` would build."""
        overrides: dict[str, Any] = {
            name.removeprefix(ENV_PREFIX).lower(): value
            for name, value in self.variables.items()
            if name != ENV_PREFIX + "SETTINGS_FILE"
        }
        for name in ("database_url", "broker_url"):
            overrides.setdefault(name, None)
        return load_settings(**overrides)


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


# --- worker processes --------------------------------------------------------------


@dataclass
class WorkerProcess:
    """A real ``dispatcher worker`` child process and its log file."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        """Everything the worker has written so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last lines of the worker's log."""
        return "\n".join(self.log().splitlines()[-lines:])

    def is_ready(self) -> bool:
        """True once Celery has logged that this worker is ready."""
        if self.process.poll() is not None:
            raise AssertionError(
                f"worker {self.name} exited with {self.process.returncode} before it was "
                f"ready; log tail:\n{self.log_tail()}"
            )
        return " ready." in self.log()

    def stop(self) -> None:
        """SIGTERM (warm shutdown), then SIGKILL if it lingers."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=WORKER_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=WORKER_STOP_TIMEOUT_S)


@dataclass
class WorkerFactory:
    """Starts real worker processes for a test and stops them all at its end."""

    env: DispatcherEnv
    log_dir: Path
    workers: list[WorkerProcess] = field(default_factory=list)

    def start(
        self, count: int = 1, *, env: DispatcherEnv | None = None, concurrency: int = 4
    ) -> list[WorkerProcess]:
        """Start ``count`` workers at once and return when every one is ready."""
        started = []
        for _ in range(count):
            name = f"w{len(self.workers) + 1}"
            log_path = self.log_dir / f"worker-{name}.log"
            with log_path.open("wb") as log_file:
                process = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "dispatcher",
                        "worker",
                        "--loglevel",
                        "INFO",
                        "-c",
                        str(concurrency),
                        "-n",
                        f"{name}-{os.getpid()}@%h",
                    ],
                    env=(env or self.env).process_env(),
                    cwd=self.log_dir,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                )
            worker = WorkerProcess(name, process, log_path)
            self.workers.append(worker)
            started.append(worker)
        for worker in started:
            wait_until(
                worker.is_ready,
                WORKER_READY_TIMEOUT_S,
                interval_s=0.1,
                message=f"worker {worker.name} to be ready (log: {worker.log_path})",
            )
        return started

    def stop_all(self) -> None:
        """Stop every worker this factory started."""
        for worker in self.workers:
            if worker.process.poll() is None:
                worker.process.send_signal(signal.SIGTERM)
        for worker in self.workers:
            worker.stop()

    def log_tails(self) -> str:
        """The tail of every worker's log, for a failure report."""
        return "\n\n".join(
            f"--- worker {w.name} (pid {w.process.pid}, exit {w.process.poll()}) ---\n"
            + w.log_tail()
            for w in self.workers
        )


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


def run_cli(env: DispatcherEnv, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m dispatcher ARGS`` in a child process; capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "dispatcher", *args],
        env=env.process_env(),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )


# --- reading the database ----------------------------------------------------------


def recipients_of(db: Database, job_id: str) -> list[Recipient]:
    """A job's recipients in insertion order."""
    with db.transaction() as session:
        return list(
            session.scalars(
                select(Recipient).where(Recipient.job_id == job_id).order_by(Recipient.id)
            )
        )


def attempts_of(db: Database, job_id: str | None = None) -> list[Attempt]:
    """Attempt rows, oldest first (of one job, or all)."""
    query = select(Attempt).order_by(Attempt.id)
    if job_id is not None:
        query = query.where(Attempt.job_id == job_id)
    with db.transaction() as session:
        return list(session.scalars(query))


def batches_of(db: Database, job_id: str | None = None) -> list[Batch]:
    """Batch rows in order (of one job, or all)."""
    query = select(Batch).order_by(Batch.id)
    if job_id is not None:
        query = query.where(Batch.job_id == job_id)
    with db.transaction() as session:
        return list(session.scalars(query))


def events_of(db: Database, job_id: str) -> list[StatusEvent]:
    """A job's status events, oldest first."""
    with db.transaction() as session:
        return list(
            session.scalars(
                select(StatusEvent).where(StatusEvent.job_id == job_id).order_by(StatusEvent.id)
            )
        )


def row_counts(db: Database) -> dict[str, int]:
    """Rows per table of the dispatcher's schema."""
    counts = {}
    with db.transaction() as session:
        for model in (Job, Batch, Recipient, Attempt, StatusEvent):
            counts[model.__tablename__] = int(
                session.execute(select(func.count()).select_from(model)).scalar_one()
            )
    return counts


def job_final(db: Database, job_id: str) -> bool:
    """True once every recipient of the job is in a final state."""
    rows = recipients_of(db, job_id)
    return bool(rows) and all(RecipientStatus(r.status) in FINAL_STATUSES for r in rows)


def wait_for_jobs(db: Database, job_ids: Iterable[str], timeout_s: float = 60.0) -> None:
    """Wait until every recipient of these jobs is final."""
    ids = list(job_ids)
    wait_until(
        lambda: all(job_final(db, job_id) for job_id in ids),
        timeout_s,
        interval_s=0.1,
        message=f"jobs {ids} to be final",
    )


def send_requests(sim: GatewaySimulator) -> int:
    """How many ``sendmsg.aspx`` requests the simulator has received."""
    return int(sim.stats()["requests_by_path"].get(SEND_PATH, 0))


# --- the invariants ----------------------------------------------------------------


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
            (r, t) for r, t in session.execute(select(Recipient, Job.text).join(Job))
        ]
        attempts = list(session.scalars(select(Attempt)))

    if not allow_pending:
        pending = [
            (r.number, r.status)
            for r, _ in recipients
            if RecipientStatus(r.status) not in FINAL_STATUSES
        ]
        assert not pending, f"recipients not final: {pending}"

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


# --- a Dispatcher driven in-process (no worker) ------------------------------------

# Long enough that nothing retries or expires by itself while a test looks.
BACKOFF_S = 30.0
SUBMITTING_TIMEOUT_S = 60.0


@contextmanager
def statements_starting(db: Database, prefix: str) -> Iterator[list[str]]:
    """The SQL statements sent on ``db`` while inside, that start with ``prefix``."""
    seen: list[str] = []

    def watch(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().startswith(prefix):
            seen.append(statement)

    event.listen(db.engine, "before_cursor_execute", watch)
    try:
        yield seen
    finally:
        event.remove(db.engine, "before_cursor_execute", watch)


def make_settings(
    database: Database, sim: GatewaySimulator, data_dir: Path, **overrides: Any
) -> Settings:
    """Settings for driving a Dispatcher in-process against ``database`` and ``sim``."""
    config = sim.config()
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "database_url": database.url,
        "broker_url": None,
        "gateway_url": sim.base_url,
        "gateway_backup_url": "",
        "gateway_allow_http": True,
        "gateway_username": config.username,
        "gateway_password": config.password,
        "gateway_connect_timeout_s": 1,
        "gateway_read_timeout_s": 1,
        "submitting_timeout_s": SUBMITTING_TIMEOUT_S,
        "retry_backoff_s": BACKOFF_S,
        "retry_backoff_max_s": 2 * BACKOFF_S,
        "max_attempts": 3,
    }
    return load_settings(**(values | overrides))


def make_service(
    database: Database, sim: GatewaySimulator, data_dir: Path, **overrides: Any
) -> Dispatcher:
    """A Dispatcher driven in-process, with ``make_settings`` and some settings changed."""
    settings = make_settings(database, sim, data_dir, **overrides)
    return Dispatcher(
        settings,
        database=database,
        client_factory=lambda: GatewayClient(settings.gateway_config()),
    )


def apply_env(env: DispatcherEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the test process's environment match the workers' (no stray DISPATCHER_*)."""
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    for name, value in env.variables.items():
        monkeypatch.setenv(name, value)
