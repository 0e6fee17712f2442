"""End to end: the dispatcher against a baseline and a limit probe, on the same data.

    .venv/bin/python -m ops.bench.pipeline            # the full run (README table)
    .venv/bin/python -m ops.bench.pipeline --quick    # smaller counts, under a minute or so

Against real PostgreSQL (a scratch database, dropped afterwards), real Redis (a
spare database index, as the tests claim them) and the gateway simulator in its
own process at each ``--latencies`` value, every scenario is run by:

- **ours**: ``dispatcher.send()`` from producer processes and real
  ``dispatcher worker`` processes, as shipped;
- **baseline** (``ops/bench/baseline.py``): a Celery task, an HTTP request and an
  ORM commit per recipient, prefork pool with a process per core, prefetch 1. It is
  too slow to push the whole scenario through in reasonable time, so it sends
  the first ``--baseline-sample`` recipients of the same data (its rate is steady
  from the first few hundred on);
- **limit** (``ops/bench/limit.py``): only the essential work, no Celery, swept
  over ``--limit-threads`` and the fastest kept;
- **simulator**: ``ops/bench/simulator_rps.py`` alone, at the scenario's
  recipients per request.

Scenarios: ``bulk`` (10 jobs of 10,000 recipients, one text each) and
``transactional`` (20,000 single-recipient jobs, distinct texts). Figures:
recipients/s end to end (first enqueue to last accepted reply recorded), enqueue
recipients/s, p50/p99 enqueue-to-accepted, peak RSS of a worker process with its
children (psutil, every 0.2 s), ratios ours/baseline and ours/limit, and the
load average before each run (``os.getloadavg``), since the machine may be shared.
Every mode must see every recipient accepted, in its own table and in the
simulator's count, or the run fails. JSON and a PNG chart go to
``ops/bench/results/pipeline[_quick].json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import json
import multiprocessing
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import requests
from celery import Celery
from sqlalchemy import text
from sqlalchemy.orm import Session

from dispatcher.persistence import migrate
from dispatcher.persistence.db import Database
from ops.bench import baseline, limit
from ops.bench.api_throughput import scratch_database, spare_redis
from ops.bench.simulator_rps import PASSWORD, USERNAME, start_simulator

ROOT = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).resolve().parent / "results"
READY_TIMEOUT_S = 90.0
SAMPLE_INTERVAL_S = 0.2
MODES = ("ours", "baseline", "limit", "simulator")
Job = tuple[list[str], str]


@dataclass(frozen=True)
class Scenario:
    """One workload: its jobs (numbers, text)."""

    name: str
    jobs: list[Job]

    @property
    def recipients(self) -> int:
        return sum(len(numbers) for numbers, _ in self.jobs)

    def sample(self, recipients: int) -> list[Job]:
        """The first ``recipients`` recipients of the same data, as jobs."""
        taken: list[Job] = []
        left = recipients
        for numbers, message in self.jobs:
            if left <= 0:
                break
            taken.append((numbers[:left], message))
            left -= len(taken[-1][0])
        return taken


def bulk(jobs: int, per_job: int) -> Scenario:
    """``jobs`` jobs of ``per_job`` recipients, one text each (E.164, as bulk lists are)."""
    return Scenario(
        "bulk",
        [
            (
                [f"+4477009{i % 100_000:05d}" for i in range(per_job)],
                f"Offer {j}: 20% off everything this weekend. Reply STOP to opt out",
            )
            for j in range(jobs)
        ],
    )


def transactional(jobs: int) -> Scenario:
    """``jobs`` single-recipient jobs, each with its own text."""
    return Scenario(
        "transactional",
        [([f"+4477009{i % 100_000:05d}"], f"Your code is {i:06d}") for i in range(jobs)],
    )


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages: the machine may be shared."""
    return [round(x, 2) for x in os.getloadavg()]


# --- memory ------------------------------------------------------------------------


class RssSampler:
    """Samples the RSS of process trees (a process and its children) in a thread."""

    def __init__(self, pids: Sequence[int]) -> None:
        self.pids = list(pids)
        self.peak_tree_bytes = 0
        self.peak_total_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _tree_rss(self, pid: int) -> int:
        try:
            root = psutil.Process(pid)
            processes = [root, *root.children(recursive=True)]
        except psutil.Error:
            return 0
        total = 0
        for process in processes:
            try:
                total += process.memory_info().rss
            except psutil.Error:
                continue
        return total

    def _run(self) -> None:
        while True:
            trees = [self._tree_rss(pid) for pid in self.pids]
            self.peak_tree_bytes = max(self.peak_tree_bytes, *trees, 0)
            self.peak_total_bytes = max(self.peak_total_bytes, sum(trees))
            if self._stop.wait(SAMPLE_INTERVAL_S):
                return

    def figures(self) -> dict[str, float]:
        return {
            "peak_worker_rss_mb": round(self.peak_tree_bytes / 2**20, 1),
            "peak_all_workers_rss_mb": round(self.peak_total_bytes / 2**20, 1),
        }


# --- CPU ---------------------------------------------------------------------------


class CpuSampler:
    """CPU seconds spent during a run, by part of the machine: PostgreSQL, Redis, the
    simulator, the dispatcher workers, the producers (this process's other children)
    and everything else. A thread polls every process's counters; a process that
    ends between two polls loses at most one interval."""

    def __init__(self, *, workers: Sequence[int], simulator: int | None) -> None:
        self.workers = list(workers)
        self.simulator = simulator
        self.first: dict[int, float] = {}
        self.last: dict[int, tuple[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)
        self._machine = psutil.cpu_times()
        self._started = time.monotonic()

    def __enter__(self) -> CpuSampler:
        self._poll(first=True)
        self._machine = psutil.cpu_times()
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self._poll(first=False)
        machine = psutil.cpu_times()
        self.machine_busy_s = sum(
            getattr(machine, f) - getattr(self._machine, f) for f in ("user", "system", "nice")
        )
        self.elapsed_s = time.monotonic() - self._started

    def _group(self, process: psutil.Process, trees: dict[int, str]) -> str:
        name = process.name()
        if name.startswith("postgres"):
            return "postgresql"
        if name.startswith("redis"):
            return "redis"
        for ancestor in [process, *process.parents()]:
            if ancestor.pid in trees:
                return trees[ancestor.pid]
        return "other"

    def _poll(self, *, first: bool) -> None:
        trees = dict.fromkeys(self.workers, "workers")
        if self.simulator is not None:
            trees[self.simulator] = "simulator"
        trees[os.getpid()] = "producers"
        for process in psutil.process_iter():
            try:
                with process.oneshot():
                    times = process.cpu_times()
                    used = times.user + times.system
                    group = self._group(process, trees)
            except psutil.Error:
                continue
            if first:
                self.first[process.pid] = used
            self.last[process.pid] = (group, used)

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_INTERVAL_S):
            self._poll(first=False)

    def figures(self, recipients: int) -> dict[str, Any]:
        """CPU seconds per group, and milliseconds of it per recipient."""
        spent: dict[str, float] = defaultdict(float)
        for pid, (group, used) in self.last.items():
            spent[group] += used - self.first.get(pid, 0.0)
        spent["machine"] = self.machine_busy_s
        per = max(recipients, 1)
        return {
            "cpu_s": {k: round(v, 2) for k, v in sorted(spent.items())},
            "cpu_ms_per_recipient": {k: round(1000 * v / per, 3) for k, v in sorted(spent.items())},
            "cpu_elapsed_s": round(self.elapsed_s, 2),
        }


# --- services and processes ----------------------------------------------------------


def conninfo(url: str) -> str:
    """A libpq URL from a SQLAlchemy one."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def simulator_accepted(control_url: str) -> int:
    """Recipients the simulator has accepted so far."""
    stats = requests.get(control_url + "/stats", timeout=30).json()
    return int(stats["recipients_accepted"])


def wait_for_workers(broker_url: str, prefix: str, count: int) -> None:
    """Return once ``count`` Celery workers whose names start with ``prefix`` answer a ping."""
    app = Celery("bench-ping", broker=broker_url)
    deadline = time.monotonic() + READY_TIMEOUT_S
    try:
        while True:
            replies = app.control.ping(timeout=1.0) or []
            names = [name for reply in replies for name in reply]
            if sum(name.startswith(prefix) for name in names) >= count:
                return
            if time.monotonic() > deadline:
                raise SystemExit(f"{prefix} workers did not answer in time: {names}")
    finally:
        app.close()


@contextmanager
def processes(
    commands: Sequence[list[str]], env: dict[str, str], logs: Path
) -> Iterator[list[int]]:
    """Start child processes (logs beside ``logs``); stop them (SIGTERM, then SIGKILL)."""
    started: list[subprocess.Popen[bytes]] = []
    try:
        for i, command in enumerate(commands):
            with (logs.parent / f"{logs.name}-{i}.log").open("wb") as log_file:
                started.append(
                    subprocess.Popen(
                        command, env=env, cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT
                    )
                )
        yield [p.pid for p in started]
    finally:
        for process in started:
            process.send_signal(signal.SIGTERM)
        for process in started:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_final(database_url: str, query: str, total: int, timeout_s: float) -> int:
    """Poll ``query`` (a count of final rows) until it reaches ``total``; the last count."""
    engine = Database(database_url, pool_size=1)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            with engine.engine.connect() as conn:
                done = int(conn.execute(text(query)).scalar_one())
            if done >= total or time.monotonic() > deadline:
                return done
            time.sleep(0.1)
    finally:
        engine.dispose()


def _summary(
    recipients: int,
    accepted: int,
    sim_accepted: int,
    started: float,
    last_accepted: dt.datetime | None,
    enqueue_s: float,
    p50_s: float | None,
    p99_s: float | None,
) -> dict[str, Any]:
    elapsed_s = (last_accepted.timestamp() - started) if last_accepted else float("nan")
    return {
        "recipients": recipients,
        "accepted": accepted,
        "simulator_accepted": sim_accepted,
        "complete": accepted == recipients == sim_accepted,
        "elapsed_s": round(elapsed_s, 3),
        "recipients_per_s": round(recipients / elapsed_s, 1) if elapsed_s > 0 else None,
        "enqueue_s": round(enqueue_s, 3),
        "enqueue_per_s": round(recipients / enqueue_s, 1) if enqueue_s > 0 else None,
        "p50_ms": round(p50_s * 1000, 1) if p50_s is not None else None,
        "p99_ms": round(p99_s * 1000, 1) if p99_s is not None else None,
    }


def _found_summary(
    found: dict[str, Any], recipients: int, sim_accepted: int, started: float, enqueue_s: float
) -> dict[str, Any]:
    """``_summary`` from a mode's ``timing`` figures."""
    return _summary(
        recipients,
        found["by_status"].get("sent", 0),
        sim_accepted,
        started,
        found["last_sent_at"],
        enqueue_s,
        found["p50_s"],
        found["p99_s"],
    )


# --- ours ----------------------------------------------------------------------------


def _producer_init(env: dict[str, str]) -> None:
    os.environ.update(env)
    from dispatcher import runtime

    # Connect before the clock starts, as a long-running application would have.
    with runtime.service().db.engine.connect() as conn:
        conn.execute(text("SELECT 1"))


def _produce(jobs: list[Job]) -> tuple[float, float, int]:
    from dispatcher import send

    started = time.time()
    for numbers, message in jobs:
        send(numbers, message)
    return started, time.time(), sum(len(numbers) for numbers, _ in jobs)


def truncate_ours(database_url: str) -> None:
    """Empty the dispatcher's tables (public schema) between runs."""
    database = Database(database_url, pool_size=1)
    with database.engine.begin() as conn:
        names = conn.exec_driver_sql(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
            "AND tablename <> 'alembic_version'"
        ).scalars()
        conn.exec_driver_sql(
            "TRUNCATE " + ", ".join(f'"{n}"' for n in names) + " RESTART IDENTITY CASCADE"
        )
    database.dispose()


def run_ours(
    scenario: Scenario,
    *,
    database_url: str,
    env: dict[str, str],
    worker_pids: list[int],
    simulator_pid: int | None,
    control_url: str,
    producers: int,
    timeout_s: float,
) -> dict[str, Any]:
    """send() from producer processes; the workers already running do the rest."""
    truncate_ours(database_url)
    sim_before = simulator_accepted(control_url)
    shares = [scenario.jobs[i::producers] for i in range(producers)]
    context = multiprocessing.get_context("spawn")
    with (
        concurrent.futures.ProcessPoolExecutor(
            producers, mp_context=context, initializer=_producer_init, initargs=(env,)
        ) as pool,
        RssSampler(worker_pids) as sampler,
    ):
        list(pool.map(time.sleep, [0.2] * producers))
        with CpuSampler(workers=worker_pids, simulator=simulator_pid) as cpu:
            started = time.time()
            produced = list(pool.map(_produce, shares))
            done = wait_final(
                database_url,
                "SELECT count(*) FROM recipients WHERE status IN "
                "('sent', 'failed', 'unknown', 'cancelled', 'expired')",
                scenario.recipients,
                timeout_s,
            )
    enqueue_s = max(end for _, end, _ in produced) - min(start for start, _, _ in produced)
    database = Database(database_url, pool_size=1)
    with database.engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT count(*), max(updated_at), "
                "percentile_cont(0.5) WITHIN GROUP (ORDER BY updated_at - created_at), "
                "percentile_cont(0.99) WITHIN GROUP (ORDER BY updated_at - created_at) "
                "FROM recipients WHERE status = 'sent'"
            )
        ).one()
        attempts = int(conn.execute(text("SELECT count(*) FROM attempts")).scalar_one())
    database.dispose()
    summary = _summary(
        scenario.recipients,
        int(row[0]),
        simulator_accepted(control_url) - sim_before,
        started,
        row[1],
        enqueue_s,
        row[2].total_seconds() if row[2] is not None else None,
        row[3].total_seconds() if row[3] is not None else None,
    )
    return (
        summary
        | sampler.figures()
        | cpu.figures(scenario.recipients)
        | {"final": done, "attempts": attempts}
    )


# --- baseline --------------------------------------------------------------------------


def run_baseline(
    scenario: Scenario,
    *,
    database_url: str,
    broker_url: str,
    worker_pids: list[int],
    control_url: str,
    sample: int,
    timeout_s: float,
) -> dict[str, Any]:
    """The baseline on the first ``sample`` recipients of the same data."""
    baseline.create_schema(database_url)
    jobs = scenario.sample(sample)
    recipients = sum(len(numbers) for numbers, _ in jobs)
    sim_before = simulator_accepted(control_url)
    baseline.app.conf.update(broker_url=broker_url)
    database = Database(database_url, pool_size=1)
    with RssSampler(worker_pids) as sampler:
        started = time.time()
        with Session(database.engine) as session:
            for i, (numbers, message) in enumerate(jobs):
                baseline.enqueue(session, f"job-{i}", numbers, message)
        enqueue_s = time.time() - started
        wait_final(
            database_url,
            f"SELECT count(*) FROM {baseline.SCHEMA}.messages WHERE status <> 'queued'",
            recipients,
            timeout_s,
        )
    database.dispose()
    found = baseline.figures(database_url)
    sim_accepted = simulator_accepted(control_url) - sim_before
    return _found_summary(found, recipients, sim_accepted, started, enqueue_s) | sampler.figures()


# --- limit -----------------------------------------------------------------------------


def run_limit(
    scenario: Scenario,
    *,
    database_url: str,
    gateway: dict[str, str],
    control_url: str,
    threads: Sequence[int],
    processes_: int,
    simulator_pid: int | None = None,
) -> dict[str, Any]:
    """The probe at each thread count; the fastest run, with the sweep beside it."""
    sweep: list[dict[str, Any]] = []
    info = conninfo(database_url)
    for count in threads:
        limit.reset(info)
        sim_before = simulator_accepted(control_url)
        workers, enqueued = limit.start_workers(info, gateway, processes=processes_, threads=count)
        pids = [w.pid for w in workers if w.pid is not None]
        with (
            RssSampler(pids) as sampler,
            CpuSampler(workers=pids, simulator=simulator_pid) as cpu,
        ):
            started = time.time()
            recipients = limit.enqueue(info, scenario.jobs)
            enqueue_s = time.time() - started
            enqueued.set()
            for worker in workers:
                worker.join()
        found = limit.figures(info)
        sim_accepted = simulator_accepted(control_url) - sim_before
        run = _found_summary(found, recipients, sim_accepted, started, enqueue_s)
        sweep.append(
            run | sampler.figures() | cpu.figures(recipients) | {"threads_per_process": count}
        )
    best = max(sweep, key=lambda r: r["recipients_per_s"] or 0.0)
    return best | {"processes": processes_, "sweep": sweep}


# --- the simulator alone ----------------------------------------------------------------


def run_simulator_alone(
    *, latency_ms: float, per_request: int, requests_: int, threads: int, output: Path
) -> dict[str, Any]:
    """``simulator_rps.py`` at this latency and recipients per request."""
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "ops" / "bench" / "simulator_rps.py"),
            "--requests",
            str(requests_),
            "--latency-ms",
            str(latency_ms),
            "--min-recipients",
            str(per_request),
            "--max-recipients",
            str(per_request),
            "--threads",
            str(threads),
            "--output",
            str(output),
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=600,
    )
    figures: dict[str, Any] = json.loads(output.read_text())
    return {
        "requests_per_s": figures["requests_per_s"],
        "recipients_per_s": figures["recipients_per_s"],
        "p50_ms": figures["latency_p50_ms"],
        "p99_ms": figures["latency_p99_ms"],
        "client_threads": figures["client_threads"],
        "client_processes": figures["client_processes"],
        "complete": bool(figures["replies_agree_with_server"]),
    }


# --- reporting ---------------------------------------------------------------------------


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is missing."""
    return round(a / b, 2) if a and b else None


COLUMNS = (
    ("mode", 13, "mode"),
    ("recipients", 10, "recipients"),
    ("rec/s", 9, "recipients_per_s"),
    ("enqueue/s", 10, "enqueue_per_s"),
    ("p50 ms", 9, "p50_ms"),
    ("p99 ms", 9, "p99_ms"),
    ("peak MB", 8, "peak_worker_rss_mb"),
)


def table(runs: list[dict[str, Any]]) -> str:
    """The figures as a Markdown table (ours, baseline, limit, simulator per scenario)."""
    header = "| scenario | latency | " + " | ".join(name for name, _, _ in COLUMNS) + " |"
    lines = [header, "|" + "---|" * (len(COLUMNS) + 2)]
    for run in runs:
        for mode in MODES:
            if mode not in run:
                continue
            figures = {"mode": mode, **run[mode]}
            if mode == "limit":
                figures["mode"] = f"limit ({run['limit']['threads_per_process']}t)"
            cells = [str(figures.get(key, "")) for _, _, key in COLUMNS]
            lines.append(
                f"| {run['scenario']} | {run['latency_ms']:g} ms | " + " | ".join(cells) + " |"
            )
        lines.append(
            f"| {run['scenario']} | {run['latency_ms']:g} ms | ours/baseline "
            f"{run['ratios']['ours_over_baseline']} | ours/limit {run['ratios']['ours_over_limit']}"
            + " |"
            * (len(COLUMNS) - 1)
        )
    return "\n".join(lines)


CPU_GROUPS = ("producers", "workers", "postgresql", "redis", "simulator", "other", "machine")


def cpu_table(runs: list[dict[str, Any]]) -> str:
    """Where ours and the limit probe spent the machine's CPU: milliseconds per
    recipient, by part (the probe's "producers" is its bulk enqueue, in this process)."""
    header = "| scenario | latency | mode | " + " | ".join(CPU_GROUPS) + " |"
    lines = [header, "|" + "---|" * (len(CPU_GROUPS) + 3)]
    for run in runs:
        for mode in ("ours", "limit"):
            spent = run.get(mode, {}).get("cpu_ms_per_recipient")
            if not spent:
                continue
            cells = [str(spent.get(group, "")) for group in CPU_GROUPS]
            lines.append(
                f"| {run['scenario']} | {run['latency_ms']:g} ms | {mode} | "
                + " | ".join(cells)
                + " |"
            )
    return "\n".join(lines)


def chart(runs: list[dict[str, Any]], path: Path) -> None:
    """Recipients/s per scenario and mode, on a log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = MODES
    labels = [f"{r['scenario']}\n{r['latency_ms']:g} ms" for r in runs]
    width = 0.2
    figure, axes = plt.subplots(figsize=(9, 4.5))
    for i, mode in enumerate(modes):
        values = [r.get(mode, {}).get("recipients_per_s") or 0 for r in runs]
        axes.bar([x + (i - 1.5) * width for x in range(len(runs))], values, width, label=mode)
    axes.set_xticks(range(len(runs)), labels)
    axes.set_yscale("log")
    axes.set_ylabel("recipients / s (end to end)")
    axes.set_title("sms-dispatcher: ours, baseline, limit probe, simulator alone")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    return {
        "cpus": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


# --- main ----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (``--quick`` sets the smaller counts it names)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts, one sweep point")
    parser.add_argument("--bulk-jobs", type=int)
    parser.add_argument("--bulk-recipients", type=int, help="recipients per bulk job")
    parser.add_argument("--transactional-jobs", type=int)
    parser.add_argument("--latencies", type=float, nargs="+", default=[0.0, 150.0])
    parser.add_argument("--scenarios", nargs="+", default=["bulk", "transactional"])
    parser.add_argument(
        "--modes",
        nargs="+",
        choices=MODES,
        default=list(MODES),
        help="which to run (all four by default; ratios need ours and the other)",
    )
    parser.add_argument("--baseline-sample", type=int, help="recipients the baseline sends")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument(
        "--worker-concurrency",
        type=int,
        nargs=2,
        default=[16, 128],
        metavar=("AT_0_MS", "OTHERWISE"),
        help="threads per dispatcher worker without latency, and with",
    )
    parser.add_argument(
        "--database-pool-size", type=int, default=8, help="per dispatcher worker process"
    )
    parser.add_argument("--producers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--limit-threads", type=int, nargs="+")
    parser.add_argument("--sim-requests", type=int)
    parser.add_argument("--timeout-s", type=float, default=900.0)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    quick = args.quick
    args.bulk_jobs = args.bulk_jobs or (4 if quick else 10)
    args.bulk_recipients = args.bulk_recipients or (1_000 if quick else 10_000)
    args.transactional_jobs = args.transactional_jobs or (300 if quick else 20_000)
    args.sim_requests = args.sim_requests or (300 if quick else 10_000)
    args.output = args.output or RESULTS / ("pipeline_quick.json" if quick else "pipeline.json")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    """Run every scenario at every latency in every mode; print and write the figures."""
    args = parse_args(argv)
    # Stopped from outside, still drop the scratch database and stop the children.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("stopped (SIGTERM)"))
    scenarios = {
        "bulk": bulk(args.bulk_jobs, args.bulk_recipients),
        "transactional": transactional(args.transactional_jobs),
    }
    cores = os.cpu_count() or 2
    runs: list[dict[str, Any]] = []
    with (
        scratch_database() as database_url,
        spare_redis() as broker_url,
        tempfile.TemporaryDirectory() as tmp,
    ):
        workdir = Path(tmp)
        database = Database(database_url, pool_size=1)
        migrate.upgrade(database)
        database.dispose()
        for latency in args.latencies:
            slow = latency > 0
            concurrency = args.worker_concurrency[1 if slow else 0]
            sample = args.baseline_sample or (
                (30 if args.quick else 400) if slow else (100 if args.quick else 3_000)
            )
            limit_threads = args.limit_threads or (
                ([64] if args.quick else [32, 96, 192])
                if slow
                else ([8] if args.quick else [2, 8, 32])
            )
            sim, urls = start_simulator(latency, seed=1)
            gateway = {"url": urls["base_url"], "username": USERNAME, "password": PASSWORD}
            ours_env = {
                **{k: v for k, v in os.environ.items() if not k.upper().startswith("DISPATCHER_")},
                "DISPATCHER_DATABASE_URL": database_url,
                "DISPATCHER_BROKER_URL": broker_url,
                "DISPATCHER_DATA_DIR": str(workdir / "data"),
                "DISPATCHER_SETTINGS_FILE": os.devnull,
                "DISPATCHER_GATEWAY_URL": urls["base_url"],
                "DISPATCHER_GATEWAY_BACKUP_URL": "",
                "DISPATCHER_GATEWAY_ALLOW_HTTP": "true",
                "DISPATCHER_GATEWAY_USERNAME": USERNAME,
                "DISPATCHER_GATEWAY_PASSWORD": PASSWORD,
                "DISPATCHER_WORKER_CONCURRENCY": str(concurrency),
                # The server's 100 connections are shared with everything else here.
                "DISPATCHER_DATABASE_POOL_SIZE": str(args.database_pool_size),
                # A bulk job larger than the default cap is the operator's choice here.
                "DISPATCHER_MAX_RECIPIENTS_PER_JOB": str(max(args.bulk_recipients, 1)),
            }
            baseline_env = {
                **ours_env,
                "BENCH_BASELINE_DATABASE_URL": database_url,
                "BENCH_BASELINE_BROKER_URL": broker_url,
                "BENCH_BASELINE_GATEWAY_URL": urls["base_url"],
                "BENCH_BASELINE_GATEWAY_USERNAME": USERNAME,
                "BENCH_BASELINE_GATEWAY_PASSWORD": PASSWORD,
            }
            tag = f"{int(latency)}ms-{os.getpid()}"
            ours_commands = [
                [
                    sys.executable, "-m", "dispatcher", "worker", "--loglevel", "WARNING",
                    "-c", str(concurrency), "-n", f"bench-ours-{i}-{tag}@%h",
                ]
                for i in range(args.workers)
            ]  # fmt: skip
            baseline_command = [
                sys.executable, "-m", "celery", "-A", "ops.bench.baseline", "worker",
                "--pool", "prefork", "--concurrency", str(cores), "--prefetch-multiplier", "1",
                "--queues", baseline.QUEUE, "--loglevel", "WARNING",
                "-n", f"bench-baseline-{tag}@%h",
            ]  # fmt: skip
            modes = set(args.modes)
            try:
                with (
                    processes(
                        ours_commands if "ours" in modes else [], ours_env, workdir / f"ours-{tag}"
                    ) as ours_pids,
                    processes(
                        [baseline_command] if "baseline" in modes else [],
                        baseline_env,
                        workdir / f"base-{tag}",
                    ) as b_pids,
                ):
                    if "ours" in modes:
                        wait_for_workers(broker_url, "bench-ours-", args.workers)
                    if "baseline" in modes:
                        wait_for_workers(broker_url, "bench-baseline-", 1)
                    for name in args.scenarios:
                        scenario = scenarios[name]
                        per_request = 100 if name == "bulk" else 1
                        run: dict[str, Any] = {
                            "scenario": name,
                            "latency_ms": latency,
                            "load_average": load_average(),
                            "worker_processes": args.workers,
                            "worker_concurrency": concurrency,
                            "producers": args.producers,
                        }
                        if "ours" in modes:
                            print(f"{name} at {latency:g} ms: ours ...", flush=True)
                            run["ours"] = run_ours(
                                scenario,
                                database_url=database_url,
                                env=ours_env,
                                worker_pids=ours_pids,
                                simulator_pid=sim.pid,
                                control_url=urls["control_url"],
                                producers=args.producers,
                                timeout_s=args.timeout_s,
                            )
                        if "baseline" in modes:
                            print(f"{name} at {latency:g} ms: baseline ...", flush=True)
                            run["baseline"] = run_baseline(
                                scenario,
                                database_url=database_url,
                                broker_url=broker_url,
                                worker_pids=b_pids,
                                control_url=urls["control_url"],
                                sample=sample,
                                timeout_s=args.timeout_s,
                            )
                        if "limit" in modes:
                            print(f"{name} at {latency:g} ms: limit ...", flush=True)
                            run["limit"] = run_limit(
                                scenario,
                                database_url=database_url,
                                gateway=gateway,
                                control_url=urls["control_url"],
                                threads=limit_threads,
                                processes_=cores,
                                simulator_pid=sim.pid,
                            )
                        if "simulator" in modes:
                            print(f"{name} at {latency:g} ms: simulator alone ...", flush=True)
                            run["simulator"] = run_simulator_alone(
                                latency_ms=latency,
                                per_request=per_request,
                                requests_=args.sim_requests,
                                threads=max(16, limit_threads[-1]) if slow else 16,
                                output=workdir / f"sim-{name}-{tag}.json",
                            )
                        run["load_average_after"] = load_average()
                        ours_rate = run.get("ours", {}).get("recipients_per_s")
                        run["ratios"] = {
                            f"ours_over_{other}": ratio(
                                ours_rate, run.get(other, {}).get("recipients_per_s")
                            )
                            for other in ("baseline", "limit", "simulator")
                        }
                        runs.append(run)
                        print(json.dumps(run, default=str), flush=True)
            finally:
                sim.send_signal(signal.SIGTERM)
                sim.communicate(timeout=30)

    figures = {
        "command": " ".join(["python -m ops.bench.pipeline", *(argv or sys.argv[1:])]),
        "quick": args.quick,
        "machine": machine(),
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "runs": runs,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(figures, indent=2, default=str) + "\n")
    chart(runs, args.output.with_suffix(".png"))
    print(table(runs))
    print("\nCPU milliseconds per recipient, by part of the machine:")
    print(cpu_table(runs))
    print(f"results: {args.output} and {args.output.with_suffix('.png')}")
    incomplete = [
        f"{r['scenario']} {r['latency_ms']:g} ms {mode}"
        for r in runs
        for mode in MODES
        if mode in r and not r[mode]["complete"]
    ]
    if incomplete:
        raise SystemExit("not every recipient was accepted in: " + ", ".join(incomplete))


if __name__ == "__main__":
    main()
