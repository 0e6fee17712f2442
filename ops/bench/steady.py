"""Steady load: one-recipient jobs arriving at a fixed rate, and how long each takes.

    .venv/bin/python -m ops.bench.steady              # 60 s at half of ours' measured maximum
    .venv/bin/python -m ops.bench.steady --rate 200   # 60 s at 200 jobs/s
    .venv/bin/python -m ops.bench.steady --quick      # a few seconds, for the test command

What a user sending one-time passwords cares about is not the throughput of a
flood but the time from ``send()`` to the gateway's acceptance, recorded, while
jobs keep arriving. So this is an open loop: producer processes call
``dispatcher.send()`` on a fixed schedule (job k at ``start + k / rate``), whether or
not the earlier ones are done, and each job's latency is measured from the time it
was *scheduled*, so a producer that falls behind counts against us instead of
hiding the wait (no coordinated omission).

Without ``--rate``, a closed-loop run of the transactional scenario
(``ops.bench.pipeline``) measures ours' maximum first, and the steady rate is
``--fraction`` (0.5) of it. The figures: p50, p99 and the maximum from the scheduled
send to the recipient's accepted reply recorded (``recipients.updated_at`` of the
``sent`` row: the record transaction's time), the rate achieved, how late the
producers were, and the gateway latency. Against real PostgreSQL, Redis, the
gateway simulator in its own process and ``dispatcher worker`` processes, as
``ops.bench.pipeline`` runs them. JSON goes to
``ops/bench/results/steady[_quick].json``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import text

from dispatcher.persistence import migrate
from dispatcher.persistence.db import Database
from ops.bench.api_throughput import scratch_database, spare_redis
from ops.bench.harness import (
    OPEN_BATCHES,
    RESULTS,
    load_average,
    machine,
    processes,
    wait_final,
    wait_for_workers,
)
from ops.bench.runners import run_ours, truncate_ours
from ops.bench.scenarios import transactional
from ops.bench.simulator_rps import PASSWORD, USERNAME, start_simulator

FINAL = "('sent', 'failed', 'unknown', 'cancelled', 'expired')"
REFERENCE_PREFIX = "steady-"


def _producer_init(env: dict[str, str]) -> None:
    os.environ.update(env)
    from dispatcher import runtime

    # Connected before the clock starts, as a long-running application is.
    runtime.service().db.ping()


def _produce(start: float, rate: float, ks: Sequence[int]) -> list[tuple[int, float, float]]:
    """Send job k at ``start + k / rate`` for each k of ``ks``; (k, scheduled, sent)."""
    from dispatcher import send

    done = []
    for k in ks:
        scheduled = start + k / rate
        wait_s = scheduled - time.time()
        if wait_s > 0:
            time.sleep(wait_s)
        send(f"+4477009{k % 100_000:05d}", f"your code is {k:06d}", reference=f"steady-{k}")
        done.append((k, scheduled, time.time()))
    return done


def _quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def run_steady(
    *,
    rate: float,
    duration_s: float,
    database_url: str,
    env: dict[str, str],
    producers: int,
    timeout_s: float,
) -> dict[str, Any]:
    """``rate`` one-recipient jobs a second for ``duration_s``; latency from schedule."""
    truncate_ours(database_url)
    jobs = max(1, round(rate * duration_s))
    shares = [range(i, jobs, producers) for i in range(producers)]
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(
        producers, mp_context=context, initializer=_producer_init, initargs=(env,)
    ) as pool:
        list(pool.map(time.sleep, [0.2] * producers))
        # A second's grace: every producer is waiting before job 0 is due.
        start = time.time() + 1.0
        shares_sent = pool.map(_produce, [start] * producers, [rate] * producers, shares)
        sent = [row for share in shares_sent for row in share]
        final = wait_final(
            database_url,
            f"SELECT count(*) FROM recipients WHERE status IN {FINAL}",
            jobs,
            timeout_s,
            open_query=OPEN_BATCHES,
        )
    scheduled = {k: at for k, at, _ in sent}
    database = Database(database_url, pool_size=1)
    with database.engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT j.reference, r.status, r.updated_at FROM jobs j "
                "JOIN recipients r ON r.job_id = j.id WHERE j.reference LIKE :prefix"
            ),
            {"prefix": REFERENCE_PREFIX + "%"},
        ).all()
        gateway_ms = conn.execute(
            text("SELECT avg(latency_ms) FROM attempts WHERE latency_ms IS NOT NULL")
        ).scalar_one()
    database.dispose()
    latencies_ms = [
        (updated_at.timestamp() - scheduled[int(reference.removeprefix(REFERENCE_PREFIX))]) * 1000
        for reference, status, updated_at in rows
        if status == "sent"
    ]
    late_ms = [(at - due) * 1000 for _, due, at in sent]
    last_sent = max(at for _, _, at in sent)
    return {
        "rate_per_s": rate,
        "duration_s": duration_s,
        "jobs": jobs,
        "final": final,
        "sent": len(latencies_ms),
        "complete": len(latencies_ms) == jobs,
        "achieved_per_s": round(jobs / (last_sent - start), 1) if last_sent > start else None,
        "p50_ms": round(_quantile(latencies_ms, 0.50), 1) if latencies_ms else None,
        "p99_ms": round(_quantile(latencies_ms, 0.99), 1) if latencies_ms else None,
        "max_ms": round(max(latencies_ms), 1) if latencies_ms else None,
        "mean_ms": round(statistics.fmean(latencies_ms), 1) if latencies_ms else None,
        "producer_late_p99_ms": round(_quantile(late_ms, 0.99), 1),
        "gateway_latency_ms": round(float(gateway_ms), 1) if gateway_ms is not None else None,
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a few seconds at a low rate")
    parser.add_argument("--rate", type=float, help="jobs/s; default --fraction of the maximum")
    parser.add_argument("--fraction", type=float, default=0.5)
    parser.add_argument("--duration-s", type=float)
    parser.add_argument("--max-jobs", type=int, help="jobs of the closed-loop maximum run")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="the gateway's latency")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--worker-concurrency", type=int, default=8)
    parser.add_argument("--producers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--database-pool-size", type=int, default=10)
    parser.add_argument("--timeout-s", type=float, default=600.0)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    if args.quick and args.rate is None:
        args.rate = 20.0
    args.duration_s = args.duration_s or (3.0 if args.quick else 60.0)
    args.max_jobs = args.max_jobs or 5_000
    args.output = args.output or RESULTS / ("steady_quick.json" if args.quick else "steady.json")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    """Measure (or take) the rate, run the steady load, print and write the figures."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("stopped (SIGTERM)"))
    with (
        scratch_database() as database_url,
        spare_redis() as broker_url,
        tempfile.TemporaryDirectory() as tmp,
    ):
        database = Database(database_url, pool_size=1)
        migrate.upgrade(database)
        database.dispose()
        sim, urls = start_simulator(args.latency_ms, seed=1)
        env = {
            **{k: v for k, v in os.environ.items() if not k.upper().startswith("DISPATCHER_")},
            "DISPATCHER_DATABASE_URL": database_url,
            "DISPATCHER_BROKER_URL": broker_url,
            "DISPATCHER_DATA_DIR": str(Path(tmp) / "data"),
            "DISPATCHER_SETTINGS_FILE": os.devnull,
            "DISPATCHER_GATEWAY_URL": urls["base_url"],
            "DISPATCHER_GATEWAY_BACKUP_URL": "",
            "DISPATCHER_GATEWAY_ALLOW_HTTP": "true",
            "DISPATCHER_GATEWAY_USERNAME": USERNAME,
            "DISPATCHER_GATEWAY_PASSWORD": PASSWORD,
            "DISPATCHER_WORKER_CONCURRENCY": str(args.worker_concurrency),
            "DISPATCHER_DATABASE_POOL_SIZE": str(args.database_pool_size),
        }
        tag = f"steady-{os.getpid()}"
        workers = [
            [
                sys.executable, "-m", "dispatcher", "worker", "--loglevel", "WARNING",
                "-c", str(args.worker_concurrency), "-n", f"{tag}-{i}@%h",
            ]
            for i in range(args.workers)
        ]  # fmt: skip
        try:
            with processes(workers, env, Path(tmp) / "workers") as pids:
                wait_for_workers(broker_url, tag, args.workers)
                maximum: dict[str, Any] | None = None
                rate = args.rate
                if rate is None:
                    print(f"ours' maximum: {args.max_jobs} one-recipient jobs ...", flush=True)
                    maximum = run_ours(
                        transactional(args.max_jobs),
                        database_url=database_url,
                        env=env,
                        worker_pids=pids,
                        simulator_pid=sim.pid,
                        control_url=urls["control_url"],
                        producers=args.producers,
                        timeout_s=args.timeout_s,
                    )
                    rate = round(args.fraction * float(maximum["recipients_per_s"]), 1)
                load_before = load_average()
                print(f"steady: {rate:g} jobs/s for {args.duration_s:g} s ...", flush=True)
                steady = run_steady(
                    rate=rate,
                    duration_s=args.duration_s,
                    database_url=database_url,
                    env=env,
                    producers=args.producers,
                    timeout_s=args.timeout_s,
                )
        finally:
            sim.send_signal(signal.SIGTERM)
            sim.communicate(timeout=30)
    figures = {
        "command": " ".join(["python -m ops.bench.steady", *(argv or sys.argv[1:])]),
        "quick": args.quick,
        "machine": machine(),
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "gateway_latency_setting_ms": args.latency_ms,
        "workers": args.workers,
        "worker_concurrency": args.worker_concurrency,
        "producers": args.producers,
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "maximum": maximum,
        "steady": steady,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(figures, indent=2, default=str) + "\n")
    if maximum is not None:
        print(f"ours' maximum      {maximum['recipients_per_s']} jobs/s (closed loop)")
    print(
        f"steady             {steady['rate_per_s']:g} jobs/s asked, "
        f"{steady['achieved_per_s']} sent, {steady['sent']}/{steady['jobs']} accepted\n"
        f"enqueue->accepted  p50 {steady['p50_ms']} ms  p99 {steady['p99_ms']} ms  "
        f"max {steady['max_ms']} ms (gateway {steady['gateway_latency_ms']} ms)\n"
        f"producers late     p99 {steady['producer_late_p99_ms']} ms\n"
        f"results: {args.output}"
    )
    if not steady["complete"]:
        raise SystemExit(f"only {steady['sent']} of {steady['jobs']} jobs were accepted")


if __name__ == "__main__":
    main()
