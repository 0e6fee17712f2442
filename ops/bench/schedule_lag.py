"""How late scheduled jobs go: the lag from ``send_at`` to the claim and to acceptance.

Starts the gateway simulator in this process and one real ``dispatcher worker``
process on PostgreSQL and Redis (a scratch database, a Redis database index you
name), enqueues jobs scheduled a few seconds ahead at spread-out times, and
reads, per job, when its batch was claimed (``attempts.started_at``) and when the
gateway accepted it (the simulator's ledger). Nothing wakes a worker at enqueue:
the sweeper finds each job when it falls due, so the lag should stay under
``DISPATCHER_SWEEP_INTERVAL_S`` (x 1.2 jitter) plus the claim and the HTTP call.

Results go to ``ops/bench/results/schedule_lag.json``.

    .venv/bin/python ops/bench/schedule_lag.py                  # 40 jobs, sweep 5 s
    .venv/bin/python ops/bench/schedule_lag.py --jobs 10 --sweep-interval-s 1
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy import select

from dispatcher.config import load_settings
from dispatcher.gateway.simulator import GatewaySimulator, SimulatorConfig
from dispatcher.persistence import migrate
from dispatcher.persistence.db import Database
from dispatcher.persistence.models import Attempt, Job
from dispatcher.service.dispatcher import Dispatcher

RESULTS = Path(__file__).resolve().parent / "results" / "schedule_lag.json"


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _summary(values: list[float]) -> dict[str, float]:
    return {
        "min_s": round(min(values), 3),
        "median_s": round(statistics.median(values), 3),
        "p95_s": round(_percentile(values, 0.95), 3),
        "max_s": round(max(values), 3),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Enqueue scheduled jobs, wait until they are sent, and measure their lag."""
    name = f"dispatcher_bench_{secrets.token_hex(4)}"
    admin = f"host={args.pg_host} port={args.pg_port} user={args.pg_user} dbname=postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = f"postgresql+psycopg://{args.pg_user}@{args.pg_host}:{args.pg_port}/{name}"
    sim = GatewaySimulator(SimulatorConfig(username="bench", password=secrets.token_hex(8)))
    sim.start_in_thread()
    worker: subprocess.Popen[bytes] | None = None
    database = Database(url)
    try:
        migrate.upgrade(database)
        env = {k: v for k, v in os.environ.items() if not k.upper().startswith("DISPATCHER_")} | {
            "DISPATCHER_DATABASE_URL": url,
            "DISPATCHER_BROKER_URL": args.broker_url,
            "DISPATCHER_GATEWAY_URL": sim.base_url,
            "DISPATCHER_GATEWAY_BACKUP_URL": "",
            "DISPATCHER_GATEWAY_ALLOW_HTTP": "true",
            "DISPATCHER_GATEWAY_USERNAME": "bench",
            "DISPATCHER_GATEWAY_PASSWORD": sim.config().password,
            "DISPATCHER_SWEEP_INTERVAL_S": str(args.sweep_interval_s),
            "DISPATCHER_SETTINGS_FILE": os.devnull,
        }
        with tempfile.TemporaryDirectory() as workdir:
            log = open(Path(workdir) / "worker.log", "wb")  # noqa: SIM115 - lives with the worker
            worker = subprocess.Popen(
                [sys.executable, "-m", "dispatcher", "worker", "-c", "4", "-l", "WARNING"],
                env=env,
                cwd=workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            time.sleep(args.warmup_s)
            settings = load_settings(
                database_url=url, broker_url=args.broker_url, data_dir=Path(workdir)
            )
            producer = Dispatcher(settings, database=database)
            start = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=args.lead_s)
            ids = []
            for i in range(args.jobs):
                send_at = start + dt.timedelta(seconds=i * args.spread_s)
                ids.append(
                    producer.enqueue(f"4477009{i:05d}", f"bench {i}", send_at=send_at).job_id
                )
            deadline = time.monotonic() + args.lead_s + args.jobs * args.spread_s + 60
            while len(sim.ledger()) < args.jobs and time.monotonic() < deadline:
                time.sleep(0.2)
            log.close()
        accepted = {e["text"]: e["at"] for e in sim.ledger()}
        with database.transaction() as session:
            rows = session.execute(
                select(Job.text, Job.send_at, Attempt.started_at)
                .join(Attempt, Attempt.job_id == Job.id)
                .where(Job.id.in_(ids))
            ).all()
        timed = [(text, send_at, started) for text, send_at, started in rows if send_at]
        claim_lag = [(started - send_at).total_seconds() for _t, send_at, started in timed]
        accept_lag = [
            accepted[text] - send_at.timestamp() for text, send_at, _s in timed if text in accepted
        ]
        return {
            "jobs": args.jobs,
            "sent": len(accepted),
            "sweep_interval_s": args.sweep_interval_s,
            "promise_s": args.sweep_interval_s + 2,
            "claim_lag": _summary(claim_lag) if claim_lag else None,
            "acceptance_lag": _summary(accept_lag) if accept_lag else None,
            "early": sum(1 for lag in claim_lag if lag < 0),
        }
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(timeout=30)
        sim.stop()
        database.dispose()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def main() -> None:
    """Parse options, run, print and save the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--spread-s", type=float, default=0.5, help="Between send times.")
    parser.add_argument("--lead-s", type=float, default=3.0, help="First send_at from now.")
    parser.add_argument("--sweep-interval-s", type=float, default=5.0)
    parser.add_argument("--warmup-s", type=float, default=8.0, help="For the worker to start.")
    parser.add_argument(
        "--broker-url",
        default="redis://127.0.0.1:6379/15",
        help="A Redis database nothing else uses (the tests claim indexes 1..15).",
    )
    parser.add_argument("--pg-host", default="127.0.0.1")
    parser.add_argument("--pg-port", default="5432")
    parser.add_argument("--pg-user", default="postgres")
    result = run(parser.parse_args())
    print(json.dumps(result, indent=2))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
