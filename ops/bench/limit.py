"""The limit probe: only the essential work of a dispatcher, as fast as it goes.

No Celery, no ORM, no audit rows: claim one due batch (one statement: the
batch ``queued`` to ``submitting`` with ``FOR UPDATE SKIP LOCKED``, joined to its
recipients), POST it to the gateway over a pooled keep-alive connection, write
its outcome in bulk (one statement for the batch and all its recipients). Worker
processes (one per core) each run ``threads`` such loops; the benchmark sweeps
``threads`` and keeps the fastest, which shows how close the dispatcher comes to
what this machine, this database and this simulator allow.

Its tables live in their own schema, ``probe``, of the benchmark's database.
"""

from __future__ import annotations

import datetime as dt
import io
import multiprocessing
import multiprocessing.synchronize
import queue
import threading
import time
from collections.abc import Sequence
from typing import Any

import psycopg
import requests
from requests.adapters import HTTPAdapter

from ops.bench.timing import timing, timing_query

SCHEMA = "probe"
POOL_SIZE = 8
"""Database connections per probe process."""

_DDL = f"""
CREATE SCHEMA IF NOT EXISTS {SCHEMA};
CREATE TABLE IF NOT EXISTS {SCHEMA}.batches (
    id integer PRIMARY KEY,
    text text NOT NULL,
    status text NOT NULL,
    gateway_id text
);
CREATE INDEX IF NOT EXISTS batches_due ON {SCHEMA}.batches (id) WHERE status = 'queued';
CREATE TABLE IF NOT EXISTS {SCHEMA}.recipients (
    id bigserial PRIMARY KEY,
    batch_id integer NOT NULL,
    number text NOT NULL,
    status text NOT NULL,
    gateway_id text,
    created_at timestamptz NOT NULL,
    sent_at timestamptz
);
CREATE INDEX IF NOT EXISTS recipients_batch ON {SCHEMA}.recipients (batch_id);
TRUNCATE {SCHEMA}.batches, {SCHEMA}.recipients RESTART IDENTITY;
"""

_CLAIM = f"""
WITH claimed AS (
    UPDATE {SCHEMA}.batches SET status = 'submitting'
    WHERE id = (
        SELECT id FROM {SCHEMA}.batches WHERE status = 'queued'
        ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED
    )
    RETURNING id, text
)
SELECT claimed.id, claimed.text, r.id, r.number
FROM claimed JOIN {SCHEMA}.recipients r ON r.batch_id = claimed.id
"""

_RECORD = f"""
WITH done AS (
    UPDATE {SCHEMA}.batches SET status = 'done', gateway_id = %(gateway_id)s
    WHERE id = %(batch)s
)
UPDATE {SCHEMA}.recipients
SET status = CASE WHEN number = ANY(%(rejected)s) THEN 'failed' ELSE %(status)s END,
    gateway_id = %(gateway_id)s, sent_at = now()
WHERE batch_id = %(batch)s
"""


def reset(conninfo: str) -> None:
    """Create (or empty) the probe's tables."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(_DDL)


def enqueue(conninfo: str, jobs: Sequence[tuple[Sequence[str], str]], batch_size: int = 100) -> int:
    """Write every job's batches and recipients with COPY; the recipients written."""
    now = dt.datetime.now(dt.UTC)
    batches = io.StringIO()
    recipients = io.StringIO()
    batch_id = 0
    count = 0
    for numbers, message in jobs:
        for start in range(0, len(numbers), batch_size):
            batch_id += 1
            batches.write(f"{batch_id}\t{_escape(message)}\tqueued\n")
            for number in numbers[start : start + batch_size]:
                recipients.write(f"{batch_id}\t{number}\tqueued\t{now.isoformat()}\n")
                count += 1
    with psycopg.connect(conninfo) as conn:
        # Recipients first: a batch is claimable only once its recipients are there.
        with conn.cursor().copy(
            f"COPY {SCHEMA}.recipients (batch_id, number, status, created_at) FROM STDIN"
        ) as copy:
            copy.write(recipients.getvalue())
        with conn.cursor().copy(f"COPY {SCHEMA}.batches (id, text, status) FROM STDIN") as copy:
            copy.write(batches.getvalue())
    return count


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")


class _Pool:
    """A few autocommit connections shared by a process's threads, each held only for
    one statement (the server's connection limit is shared with everyone)."""

    def __init__(self, conninfo: str, size: int) -> None:
        self._idle: queue.Queue[psycopg.Connection[Any]] = queue.Queue()
        for _ in range(size):
            self._idle.put(psycopg.connect(conninfo, autocommit=True))

    def execute(self, query: str, params: dict[str, Any] | None = None) -> list[Any]:
        conn = self._idle.get()
        try:
            cursor = conn.execute(query, params)
            return cursor.fetchall() if cursor.description else []
        finally:
            self._idle.put(conn)


def _loop(pool: _Pool, gateway: dict[str, str], enqueued: Any) -> None:
    form = {"username": gateway["username"], "password": gateway["password"]}
    url = gateway["url"] + "/sendmsg.aspx"
    with requests.Session() as http:
        http.mount("http://", HTTPAdapter(pool_connections=1, pool_maxsize=1))
        while True:
            rows = pool.execute(_CLAIM)
            if not rows:
                if enqueued.is_set():
                    return
                time.sleep(0.01)
                continue
            batch, message = rows[0][0], rows[0][1]
            numbers = [row[3] for row in rows]
            reply = http.post(
                url, data={**form, "to": ",".join(numbers), "text": message}, timeout=30
            )
            lines = [line.strip() for line in reply.text.splitlines() if line.strip()]
            gateway_id = None
            rejected: list[str] = []
            for line in lines:
                number, _, outcome = line.rpartition(",")
                if outcome.startswith("ID:"):
                    gateway_id = outcome[3:]
                elif number:
                    rejected.append(number)
            pool.execute(
                _RECORD,
                {
                    "batch": batch,
                    "gateway_id": gateway_id,
                    "status": "sent" if gateway_id else "failed",
                    "rejected": rejected,
                },
            )


def worker_process(
    conninfo: str, gateway: dict[str, str], threads: int, enqueued: Any, ready: Any
) -> None:
    """One worker process: ``threads`` claim-send-record loops until the work is done."""
    pool = _Pool(conninfo, min(threads, POOL_SIZE))
    ready.release()
    loops = [threading.Thread(target=_loop, args=(pool, gateway, enqueued)) for _ in range(threads)]
    for loop in loops:
        loop.start()
    for loop in loops:
        loop.join()


def start_workers(
    conninfo: str, gateway: dict[str, str], *, processes: int, threads: int
) -> tuple[list[multiprocessing.process.BaseProcess], multiprocessing.synchronize.Event]:
    """Start the probe's worker processes; set the event once everything is enqueued."""
    context = multiprocessing.get_context("spawn")
    enqueued = context.Event()
    ready = context.Semaphore(0)
    workers = [
        context.Process(target=worker_process, args=(conninfo, gateway, threads, enqueued, ready))
        for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    # Started and connected before the clock starts, as the dispatcher's workers are.
    for _ in workers:
        if not ready.acquire(timeout=60):
            raise RuntimeError("a limit probe process did not start")
    return list(workers), enqueued


def figures(conninfo: str) -> dict[str, Any]:
    """Counts per status and the enqueue-to-sent times, from the probe's tables."""
    with psycopg.connect(conninfo) as conn:
        by_status: dict[str, int] = dict(
            conn.execute(f"SELECT status, count(*) FROM {SCHEMA}.recipients GROUP BY status")
        )
        row = conn.execute(timing_query(f"{SCHEMA}.recipients", done_column="sent_at")).fetchone()
    assert row is not None
    return timing(row, {str(k): int(v) for k, v in by_status.items()})
