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

This module is the command line; the parts live beside it, one job each:
``scenarios`` (the workloads and modes), ``runners`` (one run per mode),
``samplers`` (CPU and RSS while a run runs), ``harness`` (processes, services and
the machine) and ``report`` (the tables and the chart).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dispatcher.persistence import migrate
from dispatcher.persistence.db import Database
from ops.bench import baseline
from ops.bench.api_throughput import scratch_database, spare_redis
from ops.bench.harness import RESULTS, load_average, machine, processes, wait_for_workers
from ops.bench.report import chart, cpu_table, ratio, table
from ops.bench.runners import run_baseline, run_limit, run_ours, run_simulator_alone
from ops.bench.scenarios import MODES, bulk, transactional
from ops.bench.simulator_rps import PASSWORD, USERNAME, start_simulator


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
