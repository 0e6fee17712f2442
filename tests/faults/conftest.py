"""Fixtures for the fault tests: private PostgreSQL and Redis, and a pipeline on them.

The servers are started once per session on spare ports (``services.py``) so a
test may kill, restart or flush them; each test gets them running and empty.
The gateway simulator and the worker processes are the shared fixtures'
(``simulator``, ``worker_factory``), so worker logs still reach a failed test's
report.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from dispatcher.config import ENV_PREFIX
from dispatcher.gateway.simulator import GatewaySimulator
from dispatcher.persistence import migrate
from dispatcher.persistence.db import Database
from dispatcher.persistence.models import Attempt
from faults.invariants import Outcome, check_fault_invariants
from ops.soak.services import PrivatePostgres, PrivateRedis, ServiceError
from support.pipeline import Pipeline
from support.reads import send_requests
from support.services import truncate_all
from support.settings import DispatcherEnv, apply_env
from support.workers import WorkerFactory, WorkerProcess

# The workers' settings in every fault test (names without the prefix). Gateway
# timeouts are short so an ambiguous call ends quickly, and the submitting timeout
# is the smallest the settings accept for them: 2 x (1 + 2) + 10 < 17.
FAULT_DEFAULTS = {
    "GATEWAY_BACKUP_URL": "",
    "GATEWAY_ALLOW_HTTP": "true",
    "GATEWAY_CONNECT_TIMEOUT_S": "1",
    "GATEWAY_READ_TIMEOUT_S": "2",
    "SUBMITTING_TIMEOUT_S": "17",
    "SWEEP_INTERVAL_S": "0.5",
    "RETRY_BACKOFF_S": "0.2",
    "RETRY_BACKOFF_MAX_S": "1",
    "BREAKER_PROBE_S": "1",
    "BREAKER_PROBE_MAX_S": "2",
    "WORKER_CONCURRENCY": "4",
    "SETTINGS_FILE": os.devnull,
}
SUBMITTING_TIMEOUT_S = float(FAULT_DEFAULTS["SUBMITTING_TIMEOUT_S"])


@pytest.fixture(scope="session")
def private_pg() -> Iterator[PrivatePostgres]:
    """A PostgreSQL server of this session's own, with the schema built by the migrations."""
    try:
        server = PrivatePostgres.create()
    except ServiceError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        database = Database(server.url, pool_size=2)
        try:
            migrate.upgrade(database)
        finally:
            database.dispose()
        yield server
    finally:
        server.destroy()


@pytest.fixture(scope="session")
def private_redis() -> Iterator[PrivateRedis]:
    """A Redis server of this session's own."""
    try:
        server = PrivateRedis.create()
    except ServiceError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture
def fault_db(private_pg: PrivatePostgres) -> Iterator[Database]:
    """The private database, running and emptied for this test."""
    private_pg.ensure_running()
    database = Database(private_pg.url, pool_size=2)
    try:
        truncate_all(database)
        yield database
    finally:
        database.dispose()


@pytest.fixture
def fault_redis(private_redis: PrivateRedis) -> PrivateRedis:
    """The private Redis, running and flushed for this test."""
    private_redis.ensure_running()
    private_redis.flushall()
    return private_redis


@dataclass(kw_only=True)
class FaultPipeline(Pipeline):
    """A Pipeline on the private services, with the means to break them."""

    pg: PrivatePostgres
    redis: PrivateRedis
    extra_ledgers: list[list[dict[str, Any]]] = field(default_factory=list)

    def ledger(self) -> list[dict[str, Any]]:
        """Every recipient the gateway accepted, over every simulator this test ran."""
        entries = [entry for ledger in self.extra_ledgers for entry in ledger]
        return entries + self.sim.ledger()

    def send_requests(self) -> int:
        """``sendmsg.aspx`` requests the current simulator has received."""
        return send_requests(self.sim)

    def check(self, **options: Any) -> Outcome:
        """The guarantees that survive faults (``invariants.check_fault_invariants``)."""
        options.setdefault("max_http_requests", self.send_requests())
        return check_fault_invariants(self.db, self.ledger(), **options)

    def state(self) -> dict[str, Any]:
        """``dispatcher state --json``, parsed."""
        done = self.cli("state", "--json")
        assert done.returncode == 0, done.stderr
        result: dict[str, Any] = json.loads(done.stdout)
        return result

    def worker_of(self, attempt: Attempt) -> WorkerProcess:
        """The worker process that made an attempt (its ``worker`` is host:pid:thread)."""
        assert attempt.worker, f"attempt {attempt.id} names no worker"
        pid = int(attempt.worker.split(":")[1])
        [worker] = [w for w in self.workers.workers if w.process.pid == pid]
        return worker

    def live_workers(self) -> list[WorkerProcess]:
        """The workers still running."""
        return [w for w in self.workers.workers if w.process.poll() is None]


def kill(worker: WorkerProcess) -> None:
    """SIGKILL a worker process: no warm shutdown, nothing recorded, nothing acked."""
    worker.process.send_signal(signal.SIGKILL)
    worker.process.wait(timeout=10)


@pytest.fixture
def fault_env(
    fault_db: Database,
    fault_redis: PrivateRedis,
    simulator: GatewaySimulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> DispatcherEnv:
    """DISPATCHER_* for the private services and the simulator, also set in this process."""
    config = simulator.config()
    values = {
        **FAULT_DEFAULTS,
        "DATABASE_URL": fault_db.url,
        "BROKER_URL": fault_redis.url,
        "DATA_DIR": str(tmp_path / "data"),
        "GATEWAY_URL": simulator.base_url,
        "GATEWAY_USERNAME": config.username,
        "GATEWAY_PASSWORD": config.password,
    }
    env = DispatcherEnv({ENV_PREFIX + name: value for name, value in values.items()})
    apply_env(env, monkeypatch)
    return env


@pytest.fixture
def faults(
    fault_env: DispatcherEnv,
    simulator: GatewaySimulator,
    fault_db: Database,
    worker_factory: WorkerFactory,
    private_pg: PrivatePostgres,
    private_redis: PrivateRedis,
) -> Iterator[FaultPipeline]:
    """Private PostgreSQL + private Redis + simulator + real workers (started by the test)."""
    worker_factory.env = fault_env
    stack = FaultPipeline(
        env=fault_env,
        sim=simulator,
        db=fault_db,
        workers=worker_factory,
        pg=private_pg,
        redis=private_redis,
    )
    try:
        yield stack
    finally:
        stack.close()
