"""One run of a scenario in each mode of the pipeline benchmark: ours, the baseline,
the limit probe and the simulator alone, each returning its figures as a dict (the
JSON of ``ops.bench.pipeline``).

The producers of ours run in spawned processes, so ``_producer_init`` and
``_produce`` live here, at module level, where the children can import them.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import json
import multiprocessing
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from dispatcher.persistence.db import Database
from ops.bench import baseline, limit
from ops.bench.harness import OPEN_BATCHES, ROOT, conninfo, simulator_accepted, wait_final
from ops.bench.samplers import CpuSampler, RssSampler
from ops.bench.scenarios import Job, Scenario


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
    """Empty the dispatcher's tables (public schema) between runs; the running
    workers' heartbeat rows stay, as they would in a deployment."""
    database = Database(database_url, pool_size=1)
    with database.engine.begin() as conn:
        names = conn.exec_driver_sql(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
            "AND tablename NOT IN ('alembic_version', 'worker_heartbeats')"
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
                open_query=OPEN_BATCHES,
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
