"""PostgreSQL's own paths and the generic (SQLite) paths write the same rows.

Where the databases differ (``dispatcher.persistence.dialect``) PostgreSQL takes
paths of its own: the claim reads the control row, claims with ``SKIP LOCKED`` and
reads the job and its recipients in one statement; an attempt's start and a reply
are one statement each, their rows travelling as JSON; a small job is one
statement, a large job's recipients go in by COPY, lists of ids bind as
``= ANY(array)``. SQLite takes the generic paths, several plain statements each.
If one side changes and the other does not, the embedded database and the
production one drift apart, and only the one in production shows it.

So one scenario runs three times and must leave the same rows: on PostgreSQL as it
is; on PostgreSQL with its own branches switched off, the store seeing a dialect
module whose ``is_postgresql`` says no (the generic statements, still run by
PostgreSQL, so only the statements differ); and on SQLite. The scenario has jobs in
three lanes, of one and of two batches, scheduled and expiring; replies with every
per-recipient outcome; a breaker count set and reset; a reply that arrives after
the sweeper gave its batch up. The clock is pinned and the retry jitter seeded, so
the runs' rows are equal once ids and times are normalised.
"""

from __future__ import annotations

import datetime as dt
import random
import sys
import types
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import Table, delete, event, select

from dispatcher.domain import times
from dispatcher.gateway.simulator import GatewaySimulator
from dispatcher.persistence import dialect, migrate
from dispatcher.persistence.db import Database
from dispatcher.persistence.models import (
    Attempt,
    Batch,
    DispatchControl,
    Job,
    Recipient,
    StatusEvent,
)
from dispatcher.persistence.store import enqueue as store_enqueue
from dispatcher.service.dispatcher import Claim, Dispatcher
from support.numbers import number
from support.reply_shapes import reply_submission
from support.services import truncate_all
from support.settings import SUBMITTING_TIMEOUT_S, make_service

pytestmark = [pytest.mark.services, pytest.mark.usefixtures("clean_env")]

WORKER = "parity-worker"
SEED = 14
HOUR = dt.timedelta(hours=1)

# What only PostgreSQL's own paths send: the one-statement claim and the sweeps'
# lock, rows as JSON (attempt start, reply, small job), ids as one array. COPY is
# counted apart: it goes to the driver's cursor, past SQLAlchemy.
POSTGRESQL_ONLY = ("SKIP LOCKED", "json_to_recordset", "json_array_elements", "= ANY (")

Rows = dict[str, list[dict[str, Any]]]
Checkpoint = Callable[[str, dict[str, str]], None]


# --- a pinned clock ------------------------------------------------------------------


class Clock:
    """The time every module of the dispatcher reads, moved only by the test."""

    def __init__(self, start: dt.datetime) -> None:
        self.start = start
        self.now = start

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, delta: dt.timedelta) -> None:
        self.now += delta


def _dispatcher_modules() -> Iterator[types.ModuleType]:
    for name, module in list(sys.modules.items()):
        if module is not None and (name == "dispatcher" or name.startswith("dispatcher.")):
            yield module


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """``utcnow`` pinned wherever the dispatcher reads it (the service and the store)."""
    pinned = Clock(times.utcnow().replace(microsecond=0))
    real = times.utcnow
    for module in _dispatcher_modules():
        if getattr(module, "utcnow", None) is real:
            monkeypatch.setattr(module, "utcnow", pinned)
    return pinned


# --- the generic paths on PostgreSQL -------------------------------------------------


def generic_dialect() -> types.ModuleType:
    """``dispatcher.persistence.dialect`` as it answers for SQLite, for statement choice.

    A copy of the module whose ``is_postgresql`` says no, with its functions rebound
    to the copy, so that ``skip_locked``, ``id_in`` and ``try_advisory_lock`` take
    their generic branches exactly as written. Everything else still asks the real
    database: ``name_of`` and ``Functions`` (time functions), ``is_sqlite`` (how
    times are stored) and ``conflict_insert`` (an ``ON CONFLICT`` is the same
    statement on both, but SQLite's spelling of it cannot run on PostgreSQL).
    """
    copy = types.ModuleType(f"{dialect.__name__}[generic]", dialect.__doc__)
    namespace = copy.__dict__
    namespace.update(vars(dialect))

    def is_postgresql(target: dialect.Target) -> bool:
        return False

    keep = {"is_postgresql", "conflict_insert"}
    for name, value in vars(dialect).items():
        if (
            isinstance(value, types.FunctionType)
            and value.__module__ == dialect.__name__
            and name not in keep
        ):
            rebound = types.FunctionType(
                value.__code__, namespace, value.__name__, value.__defaults__, value.__closure__
            )
            rebound.__kwdefaults__ = value.__kwdefaults__
            namespace[name] = rebound
    namespace["is_postgresql"] = is_postgresql
    return copy


def take_generic_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every module of the dispatcher sees ``generic_dialect()`` instead of the real one."""
    generic = generic_dialect()
    for module in _dispatcher_modules():
        if module is dialect:
            continue
        for name, value in list(vars(module).items()):
            if value is dialect:
                monkeypatch.setattr(module, name, generic)
            elif isinstance(value, types.FunctionType) and value is getattr(dialect, name, None):
                monkeypatch.setattr(module, name, getattr(generic, name))
    # Whoever writes a job decides whether it is small enough for one statement, by
    # the database it talks to; no job is small for the generic paths.
    monkeypatch.setattr(store_enqueue, "SMALL_JOB_MAX_ROWS", 0)


@contextmanager
def statements_sent(db: Database, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every SQL statement sent on ``db`` while inside, COPY included."""
    seen: list[str] = []

    def watch(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        seen.append(statement)

    copy = psycopg.Cursor.copy

    def counted_copy(cursor: psycopg.Cursor[Any], statement: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(str(statement))
        return copy(cursor, statement, *args, **kwargs)

    engines = db.engines()
    for engine in engines:
        event.listen(engine, "before_cursor_execute", watch)
    try:
        with monkeypatch.context() as patch:
            patch.setattr(psycopg.Cursor, "copy", counted_copy)
            yield seen
    finally:
        for engine in engines:
            event.remove(engine, "before_cursor_execute", watch)


def postgresql_only(statements: Sequence[str]) -> dict[str, int]:
    """How many of ``statements`` use each thing only PostgreSQL's own paths use."""
    found = {marker: sum(marker in s for s in statements) for marker in POSTGRESQL_ONLY}
    found["COPY"] = sum(s.lstrip().startswith("COPY") for s in statements)
    return found


# --- the scenario --------------------------------------------------------------------


def lines(numbers: Sequence[str], line: Callable[[int, str], str | None]) -> bytes:
    """A reply of one line per number (``line`` gives it, or None to leave it out)."""
    made = [line(index, n) for index, n in enumerate(numbers)]
    return "\r\n".join(text for text in made if text is not None).encode()


def campaign_reply(index: int, n: str) -> str | None:
    """Every per-recipient outcome in one reply: sent, refused, an undocumented code
    (request invalid), transient, and no line at all (unknown)."""
    if index == 0:
        return f"{n},ERR:SOMETHING_NEW"
    match index % 5:
        case 0 | 1:
            return f"{n},ID:{9000 + index}"
        case 2:
            return f"{n},ERR:INVALID_NUMBER"
        case 3:
            return f"{n},ERR:GATEWAY_ERROR"
    return None


def every_other(index: int, n: str) -> str:
    """Transient and sent in turn, the transient first."""
    return f"{n},ID:{700 + index}" if index % 2 else f"{n},ERR:GATEWAY_ERROR"


def dispatch(service: Dispatcher, jobs: dict[str, str], label: str, reply: bytes | None) -> Claim:
    """Claim the next batch, which must be ``label``'s; record ``reply`` to it, if any."""
    claim = service.claim(worker=WORKER)
    assert claim is not None, f"nothing claimed; expected a batch of {label}"
    assert claim.job_id == jobs[label], f"claimed a batch of another job than {label}"
    if reply is not None:
        numbers = [r.number for r in claim.recipients]
        service.record(claim, reply_submission(numbers, reply), worker=WORKER)
    return claim


def play(service: Dispatcher, clock: Clock, checkpoint: Checkpoint) -> None:
    """Run the scenario, calling ``checkpoint`` (with the step's name and the jobs' ids
    by label) after each step: the rows are compared there, not only at the end,
    where later writes could cover a difference."""
    clock.now = clock.start
    random.seed(SEED)  # the retry jitter
    campaign = [number(100 + i) for i in range(130)]  # two batches, COPY on PostgreSQL
    jobs = {
        "otp": service.enqueue([number(1), number(2)], "code 1234", priority="high"),
        "campaign": service.enqueue([*campaign, "12", "not a number"], "Sale", maxconcat=2),
        "bulk": service.enqueue([number(3), number(4), number(5), "12"], "News", priority="bulk"),
        "later": service.enqueue([number(6), number(7)], "Later", send_at=clock.now + HOUR),
        "stale": service.enqueue(
            number(8), "Stale", priority="high", send_at=clock.now + HOUR / 6, valid_for_s=60
        ),
    }
    ids = {label: result.job_id for label, result in jobs.items()}
    checkpoint("the jobs enqueued", ids)

    # High lane first, then normal, then bulk; what is scheduled waits.
    clock.advance(dt.timedelta(seconds=1))
    dispatch(service, ids, "otp", b"ERR:GATEWAY_ERROR")  # all transient: a breaker count
    checkpoint("a transient reply", ids)
    dispatch(service, ids, "campaign", lines(campaign[:100], campaign_reply))  # resets it
    lost = dispatch(service, ids, "campaign", None)  # its worker dies mid-call
    dispatch(service, ids, "bulk", b"ID:900")  # the single-line form: one ID for all
    assert service.claim(worker=WORKER) is None
    checkpoint("the first claims and replies", ids)

    # The sweeper gives the lost batch up; then its reply arrives after all.
    clock.advance(dt.timedelta(seconds=SUBMITTING_TIMEOUT_S + 60))
    assert service.sweep()["abandoned_recipients"] == 30
    checkpoint("the sweep", ids)
    numbers = [r.number for r in lost.recipients]
    service.record(lost, reply_submission(numbers, lines(numbers, every_other)), worker=WORKER)
    checkpoint("the late reply", ids)

    # The retries that are due.
    dispatch(service, ids, "otp", lines([number(1), number(2)], every_other))
    dispatch(service, ids, "campaign", b"ID:802")
    assert service.claim(worker=WORKER) is None
    checkpoint("the retries", ids)

    # An hour on: the stale batch expires at its claim, the last retry gives up, the
    # scheduled job is due, and running out of credit pauses dispatch.
    clock.advance(HOUR)
    dispatch(service, ids, "otp", b"ERR:GATEWAY_ERROR")
    dispatch(service, ids, "campaign", b"ID:803")
    dispatch(service, ids, "later", b"ERR:INSUFFICIENT_CREDIT")
    assert service.claim(worker=WORKER) is None
    checkpoint("an hour later", ids)


# --- the rows, normalised ------------------------------------------------------------

TABLES: tuple[Table, ...] = tuple(
    model.__table__  # type: ignore[misc]
    for model in (Job, Batch, Recipient, Attempt, StatusEvent, DispatchControl)
)
# Rows referred to by id are numbered in id order; status events, whose ids
# follow the order each path happens to insert them in, are compared as a set.
NUMBERED = {"batches": "batch_id", "recipients": "recipient_id", "attempts": "attempt_id"}


def rows(db: Database, jobs: dict[str, str], start: dt.datetime) -> Rows:
    """Every row the scenario wrote: job ids by label, other ids by rank, times as
    offsets from the scenario's start."""
    labels = {job_id: label for label, job_id in jobs.items()}
    with db.transaction() as session:
        raw = {t.name: [dict(r._mapping) for r in session.execute(select(t))] for t in TABLES}
    ranks = {
        column: {row["id"]: rank for rank, row in enumerate(sorted(raw[table], key=_id))}
        for table, column in NUMBERED.items()
    }

    def normal(table: str, name: str, value: Any) -> Any:
        if isinstance(value, dt.datetime):
            return value - start
        if value is None:
            return None
        if name == "job_id" or (table == "jobs" and name == "id"):
            return labels[value]
        if table in NUMBERED and name == "id":
            return ranks[NUMBERED[table]][value]
        return ranks[name][value] if name in ranks else value

    found: Rows = {}
    for table, members in raw.items():
        kept = [
            {
                name: normal(table, name, value)
                for name, value in row.items()
                if not (name == "id" and table == "status_events")
            }
            for row in members
        ]
        if table in NUMBERED:
            found[table] = sorted(kept, key=_id)
        else:
            found[table] = sorted(kept, key=repr)
    return found


def _id(row: dict[str, Any]) -> int:
    return int(row["id"])


def run(database: Database, sim: GatewaySimulator, tmp_path: Path, clock: Clock) -> dict[str, Rows]:
    """The scenario on ``database`` (migrated, empty); the rows after each step.
    The simulator only lends its settings: no call is made, the replies are built
    as the client would classify them."""
    with database.transaction() as session:
        # From empty tables on both: truncate_all leaves PostgreSQL no control row,
        # and the migrations made SQLite's at the wall clock's time.
        session.execute(delete(DispatchControl))
    seen: dict[str, Rows] = {}

    def checkpoint(step: str, jobs: dict[str, str]) -> None:
        seen[step] = rows(database, jobs, clock.start)

    service = make_service(database, sim, tmp_path)
    try:
        play(service, clock, checkpoint)
    finally:
        service.close()
    return seen


def assert_same(mine: dict[str, Rows], theirs: dict[str, Rows], what: str) -> None:
    """The same rows in every table after every step."""
    assert list(mine) == list(theirs)
    for step, expected in theirs.items():
        for table, members in expected.items():
            assert mine[step][table] == members, f"{what}: {table} differ after {step}"


def assert_covered(found: Rows) -> None:
    """The scenario reached every status and outcome it means to compare."""
    assert {r["status"] for r in found["recipients"]} == {
        "sent",
        "failed",
        "unknown",
        "queued",
        "expired",
    }
    assert {r["status"] for r in found["batches"]} == {"done", "queued"}
    assert {a["outcome"] for a in found["attempts"]} >= {"accepted", "transient"}
    changes = {(e["from_status"], e["to_status"]) for e in found["status_events"]}
    assert ("submitting", "unknown") in changes, "the sweeper's guess"
    assert {("unknown", "sent"), ("unknown", "retry_wait")} <= changes, "a late reply"
    assert len({r["lane"] for r in found["batches"]}) == 3
    [control] = found["dispatch_control"]
    assert control["paused"]


# --- the tests -----------------------------------------------------------------------


def test_the_generic_paths_write_on_postgresql_what_its_own_paths_write(
    pg_db: Database,
    simulator: GatewaySimulator,
    tmp_path: Path,
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with statements_sent(pg_db, monkeypatch) as own_statements:
        own = run(pg_db, simulator, tmp_path, clock)
    used = postgresql_only(own_statements)
    assert all(used.values()), f"the scenario must take every PostgreSQL path: {used}"
    assert_covered(own["an hour later"])

    truncate_all(pg_db)
    with monkeypatch.context() as patch:
        take_generic_paths(patch)
        with statements_sent(pg_db, patch) as generic_statements:
            generic = run(pg_db, simulator, tmp_path, clock)
    used = postgresql_only(generic_statements)
    assert not any(used.values()), f"the generic paths must send none of these: {used}"

    assert_same(generic, own, "the generic paths on PostgreSQL and its own")


def test_sqlite_writes_what_postgresql_writes(
    pg_db: Database, simulator: GatewaySimulator, tmp_path: Path, clock: Clock
) -> None:
    own = run(pg_db, simulator, tmp_path / "postgresql", clock)
    sqlite = Database(f"sqlite:///{tmp_path / 'parity.sqlite3'}")
    migrate.upgrade(sqlite)
    try:
        theirs = run(sqlite, simulator, tmp_path / "sqlite", clock)
    finally:
        sqlite.dispose()
    assert_covered(theirs["an hour later"])
    assert_same(theirs, own, "SQLite and PostgreSQL")
