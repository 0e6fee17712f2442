"""The cost of one batch in one dispatch thread: statements, commits and CPU time.

Counts the SQL statements a worker sends per batch (SQLAlchemy's
``before_cursor_execute``, plus ``commit`` events) and the thread's CPU time per
batch, with no Celery and no competing workers, against a scratch PostgreSQL
database (or SQLite) and the gateway simulator in this process::

    .venv/bin/python -m ops.bench.batch_cost                 # bulk: 100 per batch
    .venv/bin/python -m ops.bench.batch_cost --single        # one-recipient jobs
    .venv/bin/python -m ops.bench.batch_cost --show          # print each statement once
    .venv/bin/python -m ops.bench.batch_cost --profile       # pyinstrument, text

What it prints is what the statement count in README "Performance" comes from.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil
from sqlalchemy import event

from dispatcher.config import load_settings
from dispatcher.gateway.simulator import GatewaySimulator, SimulatorConfig
from dispatcher.persistence import migrate
from dispatcher.persistence.db import Database
from dispatcher.service.dispatcher import Dispatcher
from ops.bench.api_throughput import scratch_database


class StatementCounter:
    """Counts statements and commits on an engine, by their first words."""

    def __init__(self, database: Database) -> None:
        self.statements = 0
        self.commits = 0
        self.kinds: Counter[str] = Counter()
        self.first: dict[str, str] = {}
        event.listen(database.engine, "before_cursor_execute", self._on_execute)
        event.listen(database.engine, "commit", self._on_commit)

    def _on_execute(self, _conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        self.statements += 1
        words = " ".join(statement.split()[:4])
        self.kinds[words] += 1
        self.first.setdefault(words, statement)

    def _on_commit(self, _conn: Any) -> None:
        self.commits += 1

    def reset(self) -> None:
        """Forget what was counted so far (the enqueue's statements)."""
        self.statements = 0
        self.commits = 0
        self.kinds.clear()


def postgres_cpu_s() -> float:
    """CPU seconds used so far by the PostgreSQL server's processes on this machine
    (the server's, not only this database's: run it on a quiet machine)."""
    total = 0.0
    for process in psutil.process_iter(["name"]):
        if not (process.info["name"] or "").startswith("postgres"):
            continue
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def run(args: argparse.Namespace, database_url: str, data_dir: Path) -> None:
    """Enqueue, then dispatch everything in this thread, and print the cost per batch."""
    database = Database(database_url, pool_size=2)
    migrate.upgrade(database)
    with GatewaySimulator(SimulatorConfig(latency_ms=args.latency_ms)) as sim:
        config = sim.config()
        settings = load_settings(
            data_dir=data_dir,
            database_url=database.url,
            broker_url=None,
            gateway_url=sim.base_url,
            gateway_backup_url="",
            gateway_allow_http=True,
            gateway_username=config.username,
            gateway_password=config.password,
            # The bulk run sends every batch in one job, whatever the default cap.
            max_recipients_per_job=max(args.batches * 100, 1),
        )
        service = Dispatcher(settings, database=database)
        server0 = postgres_cpu_s()
        if args.single:
            for i in range(args.batches):
                service.enqueue(f"+4477009{i:05d}", f"one-time code {i}")
        else:
            numbers = [f"+4477009{i:05d}" for i in range(args.batches * 100)]
            service.enqueue(numbers, "bulk text")
        enqueue_server_s = postgres_cpu_s() - server0
        # One warm-up batch: compiled-statement caches, the HTTP connection.
        service.dispatch_one(worker="bench")
        counter = StatementCounter(database)
        profiler: Any = None
        if args.profile:
            from pyinstrument import Profiler

            profiler = Profiler(interval=0.0005)
            profiler.start()
        cpu0, wall0, server0 = time.thread_time(), time.perf_counter(), postgres_cpu_s()
        report = service.dispatch_due(worker="bench", budget_s=600.0)
        cpu_s, wall_s = time.thread_time() - cpu0, time.perf_counter() - wall0
        dispatch_server_s = postgres_cpu_s() - server0
        if profiler is not None:
            profiler.stop()
            print(profiler.output_text(unicode=True, color=False, show_all=False))
        service.close()
    batches = max(report.batches, 1)
    print(
        f"{database.dialect}: {report.batches} batches, "
        f"{counter.statements / batches:.1f} statements and {counter.commits / batches:.2f} "
        f"commits per batch, {1000 * cpu_s / batches:.2f} ms CPU per batch (this thread), "
        f"{report.batches / wall_s:.1f} batches/s"
    )
    if database.dialect == "postgresql":
        recipients = args.batches * (1 if args.single else 100)
        print(
            f"PostgreSQL server CPU per recipient: {1000 * enqueue_server_s / recipients:.4f} ms "
            f"at enqueue, {1000 * dispatch_server_s / (batches * (recipients // args.batches)):.4f}"
            " ms to claim and record"
        )
    for words, count in counter.kinds.most_common():
        print(f"  {count / batches:6.2f}  {words}")
        if args.show:
            print("          " + " ".join(counter.first[words].split())[:400])


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the options and run against a scratch database."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--single", action="store_true", help="one-recipient jobs")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--sqlite", action="store_true", help="a SQLite file, not PostgreSQL")
    parser.add_argument("--show", action="store_true", help="print each kind of statement")
    parser.add_argument("--profile", action="store_true", help="pyinstrument the dispatch")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        if args.sqlite:
            run(args, f"sqlite:///{tmp}/bench.db", Path(tmp))
        else:
            with scratch_database() as url:
                run(args, url, Path(tmp))


if __name__ == "__main__":
    main()
