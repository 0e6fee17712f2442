"""Fixtures on the real services: PostgreSQL, Redis, the gateway simulator, worker processes.

PostgreSQL and Redis are never mocked and never skipped: when they do not answer,
every test that needs them fails with a message saying how to start them.

- one PostgreSQL database per session, built by the Alembic migrations and emptied
  (TRUNCATE) before each test that uses it;
- one Redis database index per session, claimed so that concurrent sessions on the
  same server keep apart, flushed before each test that uses it;
- a gateway simulator per test, over real HTTP;
- real ``dispatcher worker`` processes per test, whose log tails are attached to
  the report of a failed test.
"""

from __future__ import annotations

import os
import random
import secrets
from collections.abc import Generator, Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from dispatcher.config import ENV_PREFIX
from dispatcher.gateway.client import GatewayClient
from dispatcher.gateway.simulator import GatewaySimulator, SimulatorConfig
from dispatcher.persistence import migrate
from dispatcher.persistence.db import Database
from dispatcher.service.dispatcher import Dispatcher
from helpers import (
    PG_HOST,
    PG_PORT,
    REDIS_HOST,
    REDIS_PORT,
    DispatcherEnv,
    Pipeline,
    WorkerFactory,
    apply_env,
    make_settings,
    pg_admin,
    scratch_pg_database,
    truncate_all,
)

SIM_USER = "sim-user"
REDIS_CLAIM_KEY = "dispatcher-tests:claimed-by"
REDIS_CLAIM_TTL_S = 6 * 3600
WORKERS_KEY = pytest.StashKey[WorkerFactory]()

# Timeouts chosen so no test waits long: short backoffs, a fast sweeper, and gateway
# timeouts above the slowest simulated latency (3 s). The submitting timeout must
# exceed 2 x (connect + read) + 10 = 22 s.
PIPELINE_DEFAULTS = {
    "GATEWAY_BACKUP_URL": "",
    "GATEWAY_ALLOW_HTTP": "true",
    "GATEWAY_CONNECT_TIMEOUT_S": "1",
    "GATEWAY_READ_TIMEOUT_S": "5",
    "SUBMITTING_TIMEOUT_S": "23",
    "RETRY_BACKOFF_S": "0.2",
    "RETRY_BACKOFF_MAX_S": "1",
    "SWEEP_INTERVAL_S": "0.5",
    "WORKER_CONCURRENCY": "4",
    # No settings file from the machine or the working directory.
    "SETTINGS_FILE": os.devnull,
}


# --- the services ------------------------------------------------------------------


@pytest.fixture(scope="session")
def services() -> None:
    """Fail, never skip, unless PostgreSQL and Redis answer."""
    problems = []
    try:
        with pg_admin() as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        problems.append(f"PostgreSQL at {PG_HOST}:{PG_PORT} does not answer: {exc}".strip())
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, socket_connect_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        problems.append(f"Redis at {REDIS_HOST}:{REDIS_PORT} does not answer: {exc}")
    finally:
        client.close()
    if problems:
        pytest.fail(
            "; ".join(problems) + ". These tests need the real services: run scripts/services.",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def pg_database_url(services: None) -> Iterator[str]:
    """A fresh PostgreSQL database for this session, built by the migrations."""
    with scratch_pg_database() as url:
        database = Database(url, pool_size=2)
        try:
            migrate.upgrade(database)
        finally:
            database.dispose()
        yield url


@pytest.fixture
def pg_db(pg_database_url: str) -> Iterator[Database]:
    """The session's PostgreSQL database, emptied for this test."""
    database = Database(pg_database_url, pool_size=2)
    try:
        truncate_all(database)
        yield database
    finally:
        database.dispose()


def _claim_redis_index(token: str) -> int:
    for index in random.sample(range(1, 16), 15):
        client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=index)
        try:
            if client.set(REDIS_CLAIM_KEY, token, nx=True, ex=REDIS_CLAIM_TTL_S):
                return index
        finally:
            client.close()
    raise pytest.fail.Exception("every Redis database 1..15 is claimed by another test session")


@pytest.fixture(scope="session")
def redis_index(services: None) -> Iterator[int]:
    """A Redis database index (1..15) this session has to itself."""
    token = f"{os.getpid()}-{secrets.token_hex(4)}"
    index = _claim_redis_index(token)
    yield index
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=index)
    try:
        client.flushdb()
    finally:
        client.close()


@pytest.fixture
def broker_url(redis_index: int) -> str:
    """The session's Redis database, flushed for this test, as a broker URL."""
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=redis_index)
    try:
        client.flushdb()
        client.set(REDIS_CLAIM_KEY, f"{os.getpid()}", ex=REDIS_CLAIM_TTL_S)
    finally:
        client.close()
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/{redis_index}"


# --- the gateway and the dispatcher ------------------------------------------------


@pytest.fixture
def simulator() -> Iterator[GatewaySimulator]:
    """A gateway simulator over real HTTP, with a fresh password."""
    sim = GatewaySimulator(SimulatorConfig(username=SIM_USER, password=secrets.token_hex(8)))
    sim.start_in_thread()
    try:
        yield sim
    finally:
        sim.stop()


def gateway_vars(sim: GatewaySimulator) -> dict[str, str]:
    """The simulator's URL and credentials, plus the pipeline defaults, as DISPATCHER_*."""
    values = {
        **PIPELINE_DEFAULTS,
        "GATEWAY_URL": sim.base_url,
        "GATEWAY_USERNAME": sim.config().username,
        "GATEWAY_PASSWORD": sim.config().password,
    }
    return {ENV_PREFIX + name: value for name, value in values.items()}


@pytest.fixture
def pipeline_env(
    pg_db: Database,
    broker_url: str,
    simulator: GatewaySimulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> DispatcherEnv:
    """DISPATCHER_* for PostgreSQL, Redis and the simulator, also set in this process."""
    env = DispatcherEnv(
        {
            **gateway_vars(simulator),
            ENV_PREFIX + "DATABASE_URL": pg_db.url,
            ENV_PREFIX + "BROKER_URL": broker_url,
            ENV_PREFIX + "DATA_DIR": str(tmp_path / "data"),
        }
    )
    apply_env(env, monkeypatch)
    return env


@pytest.fixture
def embedded_env(
    simulator: GatewaySimulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> DispatcherEnv:
    """DISPATCHER_* for the embedded defaults (SQLite, file broker) and the simulator."""
    env = DispatcherEnv(
        {**gateway_vars(simulator), ENV_PREFIX + "DATA_DIR": str(tmp_path / "data")}
    )
    apply_env(env, monkeypatch)
    return env


@pytest.fixture
def worker_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[WorkerFactory]:
    """Starts real worker processes; stops them (SIGTERM, then SIGKILL) after the test."""
    factory = WorkerFactory(env=DispatcherEnv({}), log_dir=tmp_path)
    request.node.stash[WORKERS_KEY] = factory
    try:
        yield factory
    finally:
        factory.stop_all()


@pytest.fixture
def pipeline(
    pipeline_env: DispatcherEnv,
    simulator: GatewaySimulator,
    pg_db: Database,
    worker_factory: WorkerFactory,
) -> Iterator[Pipeline]:
    """PostgreSQL + Redis + simulator + real workers (started by the test)."""
    worker_factory.env = pipeline_env
    stack = Pipeline(env=pipeline_env, sim=simulator, db=pg_db, workers=worker_factory)
    try:
        yield stack
    finally:
        stack.close()


@pytest.fixture
def embedded_pipeline(
    embedded_env: DispatcherEnv, simulator: GatewaySimulator, worker_factory: WorkerFactory
) -> Iterator[Pipeline]:
    """SQLite + the file broker (the embedded defaults) + simulator + real workers."""
    worker_factory.env = embedded_env
    database = Database(embedded_env.settings().effective_database_url)
    migrate.upgrade(database)
    stack = Pipeline(env=embedded_env, sim=simulator, db=database, workers=worker_factory)
    try:
        yield stack
    finally:
        stack.close()
        database.dispose()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach the workers' log tails to the report of a test that failed."""
    report = yield
    factory = item.stash.get(WORKERS_KEY, None)
    if report.failed and factory is not None and factory.workers:
        report.sections.append(("worker logs", factory.log_tails()))
    return report


# --- a Dispatcher driven in-process (no worker) ------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings come from the test alone: no DISPATCHER_* and no settings file."""
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    monkeypatch.setenv(ENV_PREFIX + "SETTINGS_FILE", os.devnull)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A migrated database: a SQLite file, or the session's PostgreSQL emptied."""
    if request.param == "postgresql":
        pg: Database = request.getfixturevalue("pg_db")
        yield pg
        return
    sqlite = Database(f"sqlite:///{tmp_path / 'store.sqlite3'}")
    migrate.upgrade(sqlite)
    try:
        yield sqlite
    finally:
        sqlite.dispose()


@pytest.fixture
def service(
    database: Database, simulator: GatewaySimulator, tmp_path: Path
) -> Iterator[Dispatcher]:
    """A Dispatcher on ``database`` whose client calls the simulator over HTTP."""
    settings = make_settings(database, simulator, tmp_path)
    svc = Dispatcher(
        settings,
        database=database,
        client_factory=lambda: GatewayClient(settings.gateway_config()),
    )
    try:
        yield svc
    finally:
        svc.close()


@pytest.fixture
def observer(database: Database) -> Iterator[Database]:
    """A second engine on the same database, to see only what was committed."""
    other = Database(database.url)
    try:
        yield other
    finally:
        other.dispose()
