"""Dashboard reads at scale: overview, search and job page over 1,000,000 recipients.

Builds a fresh PostgreSQL database with the migrations, seeds it with
``INSERT ... SELECT generate_series`` in realistic proportions (ten recipients per
job and batch, one attempt per batch plus retries, two or three status events per
recipient, 30 days of history, ~93% sent), runs the rollup, then times repeated runs of:

- ``stats.overview`` (the dashboard's overview),
- search by number, job id, reference and gateway message ID,
- the job page (``Dispatcher.job_view`` plus the job's attempts and events),
- the HTTP pages ``/``, ``/search?q=`` and ``/jobs/{id}`` when ``dispatcher.dashboard``
  is installed,

prints p50/p95 for each and the EXPLAIN (ANALYZE, BUFFERS) plan of every statement
they ran, flags sequential scans on the big tables, and writes everything to
``ops/bench/results/dashboard_scale.json``. The target is p95 <= 300 ms at 1M rows.

    .venv/bin/python ops/bench/dashboard_scale.py             # 1,000,000 recipients
    .venv/bin/python ops/bench/dashboard_scale.py --quick     # 20,000 recipients
    .venv/bin/python ops/bench/dashboard_scale.py --keep      # keep the database

Needs the PostgreSQL server of ``DISPATCHER_BENCH_PG`` (default the local one,
user postgres, trust).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import secrets
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy import event, select

from dispatcher.config import load_settings
from dispatcher.dashboard import queries as dashboard_queries
from dispatcher.domain.times import utcnow
from dispatcher.persistence import migrate
from dispatcher.persistence.db import Database
from dispatcher.persistence.models import Job, Recipient
from dispatcher.service import rollup
from dispatcher.service.dispatcher import Dispatcher

RESULTS = Path(__file__).resolve().parent / "results"
ADMIN_DSN = os.environ.get("DISPATCHER_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
TARGET_P95_MS = 300.0
BIG_TABLES = ("recipients", "status_events", "attempts", "jobs", "batches")
RECIPIENTS_PER_JOB = 10
HISTORY_DAYS = 30

SEED_SQL = """
INSERT INTO jobs (id, created_at, text, kind, maxconcat, parts, encoding, recipient_count,
                  refused_count, created_by, reference, priority)
SELECT 'J' || lpad(j::text, 25, '0'),
       %(now)s - make_interval(secs => (%(jobs)s - j) * %(job_gap_s)s),
       'bench message ' || j, 'text', 1, 1, 'gsm7', %(per_job)s, 0, 'bench',
       CASE WHEN j %% 3 = 0 THEN 'ref-' || j END, 'normal'
FROM generate_series(1, %(jobs)s) AS j;

INSERT INTO batches (id, job_id, status, due_at, attempts, created_at, updated_at, lane)
SELECT j, 'J' || lpad(j::text, 25, '0'),
       CASE WHEN j > %(jobs)s - %(pending_jobs)s THEN 'queued' ELSE 'done' END,
       %(now)s - make_interval(secs => (%(jobs)s - j) * %(job_gap_s)s),
       1, %(now)s - make_interval(secs => (%(jobs)s - j) * %(job_gap_s)s),
       %(now)s - make_interval(secs => (%(jobs)s - j) * %(job_gap_s)s), 1
FROM generate_series(1, %(jobs)s) AS j;

INSERT INTO recipients (id, job_id, batch_id, number, status, gateway_message_id, error_code,
                        attempts, created_at, updated_at)
SELECT r, 'J' || lpad(j::text, 25, '0'), j,
       '4477' || lpad(((r::bigint * 7919) %% 100000000)::text, 8, '0'),
       s.status,
       CASE WHEN s.status = 'sent' THEN (9000000000000000000 + j)::text END,
       CASE s.status WHEN 'failed' THEN
            (ARRAY['INVALID_NUMBER','GATEWAY_ERROR','NO_TEXT'])[1 + r %% 3]
            WHEN 'unknown' THEN 'NO_REPLY' END,
       CASE WHEN s.status = 'queued' THEN 0 ELSE 1 END,
       %(now)s - make_interval(secs => (%(jobs)s - j) * %(job_gap_s)s),
       %(now)s - make_interval(secs => (%(jobs)s - j) * %(job_gap_s)s - 2)
FROM generate_series(1, %(recipients)s) AS r,
     LATERAL (SELECT (r - 1) / %(per_job)s + 1 AS j) AS jj,
     LATERAL (SELECT CASE
         WHEN jj.j > %(jobs)s - %(pending_jobs)s THEN 'queued'
         WHEN r %% 100 < 93 THEN 'sent'
         WHEN r %% 100 < 96 THEN 'failed'
         WHEN r %% 100 < 97 THEN 'unknown'
         WHEN r %% 100 < 98 THEN 'cancelled'
         WHEN r %% 100 < 99 THEN 'retry_wait'
         ELSE 'expired' END AS status) AS s;

INSERT INTO attempts (id, batch_id, job_id, attempt_no, numbers, started_at, finished_at, host,
                      http_status, raw_reply, latency_ms, outcome, worker)
SELECT a, a, 'J' || lpad(a::text, 25, '0'), 1, '447700900000',
       %(now)s - make_interval(secs => (%(jobs)s - a) * %(job_gap_s)s - 1),
       %(now)s - make_interval(secs => (%(jobs)s - a) * %(job_gap_s)s - 2),
       'gateway.example', 200, 'ID:' || a, 20 + (a * 37) %% 900,
       (ARRAY['accepted','accepted','accepted','accepted','partial','transient'])[1 + a %% 6],
       'bench:1:t'
FROM generate_series(1, %(jobs)s - %(pending_jobs)s) AS a;

INSERT INTO status_events (recipient_id, job_id, at, from_status, to_status, cause, actor)
SELECT id, job_id, created_at, NULL, 'queued', 'enqueued', 'bench' FROM recipients;
INSERT INTO status_events (recipient_id, job_id, at, from_status, to_status, cause, actor)
SELECT id, job_id, created_at + interval '1 second', 'queued', 'submitting', 'claimed', 'bench'
FROM recipients WHERE status <> 'queued';
INSERT INTO status_events (recipient_id, job_id, at, from_status, to_status, cause, actor)
SELECT id, job_id, updated_at, 'submitting', status, coalesce(error_code, 'accepted'), 'bench'
FROM recipients WHERE status NOT IN ('queued', 'submitting');

SELECT setval(pg_get_serial_sequence('batches', 'id'), %(jobs)s);
SELECT setval(pg_get_serial_sequence('recipients', 'id'), %(recipients)s);
SELECT setval(pg_get_serial_sequence('attempts', 'id'), %(jobs)s);
"""


@contextmanager
def scratch_database(keep: bool) -> Iterator[str]:
    """A new database on the bench server; yields its SQLAlchemy URL."""
    name = f"dispatcher_bench_{secrets.token_hex(4)}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    base = ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    try:
        yield f"{base}/{name}"
    finally:
        if keep:
            print(f"kept database {name}")
        else:
            with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )


def seed(db: Database, recipients: int, now: dt.datetime) -> dict[str, int]:
    """Fill the tables; returns their row counts."""
    jobs = recipients // RECIPIENTS_PER_JOB
    params = {
        "now": now,
        "jobs": jobs,
        "recipients": jobs * RECIPIENTS_PER_JOB,
        "per_job": RECIPIENTS_PER_JOB,
        "pending_jobs": max(1, jobs // 200),
        "job_gap_s": HISTORY_DAYS * 86400 / jobs,
    }
    raw = db.engine.raw_connection()
    try:
        cursor = raw.cursor()
        for statement in SEED_SQL.split(";\n"):
            if statement.strip():
                cursor.execute(statement, params)
        raw.commit()
    finally:
        raw.close()
    with psycopg.connect(
        db.url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True
    ) as conn:
        conn.execute("VACUUM ANALYZE")
        return {
            table: int(conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
                sql.Identifier(table))).fetchone()[0])  # type: ignore[index]
            for table in BIG_TABLES
        }  # fmt: skip


class Recorder:
    """Collects the SELECT statements an operation runs, to EXPLAIN them afterwards."""

    def __init__(self, db: Database) -> None:
        self.statements: list[tuple[str, Any]] = []
        self.active = False
        event.listen(db.engine, "before_cursor_execute", self._record)

    def _record(self, _conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if self.active and statement.lstrip().upper().startswith("SELECT"):
            self.statements.append((statement, parameters))

    @contextmanager
    def recording(self) -> Iterator[list[tuple[str, Any]]]:
        self.statements = []
        self.active = True
        try:
            yield self.statements
        finally:
            self.active = False


def explain(db: Database, statements: list[tuple[str, Any]]) -> list[dict[str, Any]]:
    """EXPLAIN (ANALYZE, BUFFERS) of each statement; flags sequential scans of big tables."""
    plans = []
    with db.engine.connect() as conn:
        for statement, parameters in statements:
            rows = conn.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS) " + statement, parameters).all()
            plan = "\n".join(row[0] for row in rows)
            seq = [t for t in BIG_TABLES if f"Seq Scan on {t}" in plan]
            plans.append({"sql": " ".join(statement.split()), "plan": plan, "seq_scans": seq})
        conn.rollback()
    return plans


def timed(func: Callable[[], object], runs: int) -> dict[str, Any]:
    """p50/p95/max in ms over ``runs`` calls (after one warm-up)."""
    func()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        func()
        samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    return {
        "p50_ms": round(statistics.median(samples), 2),
        "p95_ms": round(samples[max(0, int(len(samples) * 0.95) - 1)], 2),
        "max_ms": round(samples[-1], 2),
        "runs": runs,
    }


def operations(service: Dispatcher, recipients: int) -> dict[str, Callable[[], object]]:
    """The reads the dashboard makes, on rows spread over the table."""
    db = service.db
    jobs = recipients // RECIPIENTS_PER_JOB
    middle = jobs // 2
    job_id = f"J{middle:025d}"
    with db.transaction() as session:
        sample = session.execute(
            select(Recipient.number, Recipient.gateway_message_id)
            .where(Recipient.job_id == job_id, Recipient.gateway_message_id.is_not(None))
            .limit(1)
        ).one()
        reference = session.execute(
            select(Job.reference).where(Job.reference.is_not(None), Job.id >= job_id).limit(1)
        ).scalar_one()
    number, gateway_id = sample
    if reference is None or gateway_id is None:
        raise RuntimeError("the seeded data has no reference or gateway ID to search for")

    # The very functions behind the pages, so the figures are the pages' own reads.
    region = service.settings.default_region

    def overview() -> object:
        return dashboard_queries.overview(db)

    def by_number() -> object:
        return dashboard_queries.search(db, number, region=region)

    def by_job_id() -> object:
        return dashboard_queries.search(db, job_id, region=region)

    def by_reference() -> object:
        return dashboard_queries.search(db, reference, region=region)

    def by_gateway_id() -> object:
        return dashboard_queries.search(db, gateway_id, region=region)

    def job_page() -> object:
        return dashboard_queries.job_page(db, job_id)

    ops: dict[str, Callable[[], object]] = {
        "overview": overview,
        "search_number": by_number,
        "search_job_id": by_job_id,
        "search_reference": by_reference,
        "search_gateway_id": by_gateway_id,
        "job_page": job_page,
    }
    ops.update(http_pages(service, {"number": number, "job_id": job_id}))
    return ops


CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def http_pages(service: Dispatcher, sample: dict[str, str]) -> dict[str, Callable[[], object]]:
    """The dashboard's pages over HTTP (rendering included), logged in with an operate key."""
    from fastapi.testclient import TestClient

    from dispatcher.api import create_app
    from dispatcher.service.keys import KeyStore

    token, _info = KeyStore(service.db).create("bench-operator", "operate,read", actor="bench")
    client = TestClient(create_app(service))
    form = CSRF.search(client.get("/login").text)
    if form is None:
        raise RuntimeError("the login page has no CSRF token")
    answer = client.post(
        "/login", data={"secret": token, "csrf": form.group(1)}, follow_redirects=False
    )
    if answer.status_code != 303:
        raise RuntimeError(f"dashboard login answered {answer.status_code}")
    pages = {
        "page_overview": "/",
        "page_search": f"/search?q={sample['number']}",
        "page_job": f"/jobs/{sample['job_id']}",
    }
    for name, path in pages.items():
        response = client.get(path, follow_redirects=False)
        if response.status_code != 200:
            raise RuntimeError(f"{name}: {path} answered {response.status_code}")
    return {name: (lambda p=path: client.get(p)) for name, path in pages.items()}  # type: ignore[misc]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 when every p95 meets the target."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipients", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="20,000 recipients, fewer runs")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    parser.add_argument("--output", type=Path, default=RESULTS / "dashboard_scale.json")
    parser.add_argument("--quiet-plans", action="store_true", help="do not print the plans")
    args = parser.parse_args(argv)
    recipients = 20_000 if args.quick else args.recipients
    runs = 10 if args.quick else args.runs
    now = utcnow()
    with scratch_database(args.keep) as url:
        db = Database(url, pool_size=2)
        migrate.upgrade(db)
        start = time.perf_counter()
        rows = seed(db, recipients, now)
        seed_s = time.perf_counter() - start
        print(f"seeded {rows} in {seed_s:.1f} s")
        backfill = rollup.run(db)
        steady = rollup.run(db)
        assert backfill is not None
        assert steady is not None
        print(
            f"rollup: first run (all history) {backfill.duration_ms:.0f} ms, "
            f"steady run {steady.duration_ms:.0f} ms"
        )
        settings = load_settings(database_url=url, broker_url=None, gateway_allow_http=True)
        service = Dispatcher(settings, database=db)
        recorder = Recorder(db)
        results: dict[str, Any] = {}
        for name, func in operations(service, recipients).items():
            figures = timed(func, runs)
            with recorder.recording() as statements:
                func()
            figures["plans"] = explain(db, list(statements))
            results[name] = figures
        with recorder.recording() as statements:
            rollup.run(db)
        rollup_plans = explain(db, list(statements))
        service.close()
    report = {
        "at": now.isoformat(),
        "recipients": recipients,
        "rows": rows,
        "seed_s": round(seed_s, 1),
        "rollup_first_ms": round(backfill.duration_ms, 1),
        "rollup_steady_ms": round(steady.duration_ms, 1),
        "rollup_plans": rollup_plans,
        "target_p95_ms": TARGET_P95_MS,
        "operations": results,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2))
    print(f"\n{'operation':<20} {'p50 ms':>9} {'p95 ms':>9} {'max ms':>9}  seq scans")
    ok = True
    for name, figures in results.items():
        seqs = sorted({t for plan in figures["plans"] for t in plan["seq_scans"]})
        ok = ok and figures["p95_ms"] <= TARGET_P95_MS
        print(
            f"{name:<20} {figures['p50_ms']:>9.1f} {figures['p95_ms']:>9.1f} "
            f"{figures['max_ms']:>9.1f}  {', '.join(seqs) or '-'}"
        )
    if not args.quiet_plans:
        for name, figures in {**results, "rollup": {"plans": rollup_plans}}.items():
            for plan in figures["plans"]:
                print(f"\n--- {name}: {plan['sql'][:300]}\n{plan['plan']}")
    print(f"\nresults: {args.output}; every p95 <= {TARGET_P95_MS:g} ms: {ok}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
