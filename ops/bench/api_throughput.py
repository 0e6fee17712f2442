"""How many jobs and recipients per second ``POST /v1/jobs`` commits, on PostgreSQL and Redis.

Creates a scratch PostgreSQL database (dropped afterwards), claims a spare Redis
database index (as the tests do), migrates, makes an API key with the CLI and
starts ``dispatcher serve`` in its own process, exactly as in production (the
real Celery waker puts a wake-up on Redis for every job; no worker consumes
them, so only the API is measured). Client threads, each with a keep-alive
``requests.Session``, then post jobs in two phases:

- ``small``: one recipient per job, the requests/s figure;
- ``bulk``: ``--bulk-recipients`` (1,000) per job, the recipients/s figure.

Every 201 is a committed job; the figures are checked against the rows in the
database afterwards, so nothing acknowledged may be missing. Results go to
``ops/bench/results/api_throughput.json`` (``--quick``: ``api_throughput_quick.json``).

    .venv/bin/python ops/bench/api_throughput.py            # 4000 small + 200 bulk jobs
    .venv/bin/python ops/bench/api_throughput.py --quick    # 400 small + 20 bulk jobs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import redis
import requests
from psycopg import sql
from requests.adapters import HTTPAdapter

ROOT = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).resolve().parent / "results"
PG_HOST = os.environ.get("DISPATCHER_TEST_PGHOST", "127.0.0.1")
PG_PORT = int(os.environ.get("DISPATCHER_TEST_PGPORT", "5432"))
PG_USER = os.environ.get("DISPATCHER_TEST_PGUSER", "postgres")
REDIS_HOST = os.environ.get("DISPATCHER_TEST_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("DISPATCHER_TEST_REDIS_PORT", "6379"))
# The same claim the test suite uses, so a benchmark never shares a Redis index with it.
REDIS_CLAIM_KEY = "dispatcher-tests:claimed-by"
REDIS_CLAIM_TTL_S = 3600
START_TIMEOUT_S = 60.0


@dataclass
class PhaseResult:
    """What the client threads of one phase saw."""

    jobs: int = 0
    recipients: int = 0
    errors: int = 0
    latencies_s: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def percentile(sorted_values: list[float], q: float) -> float:
    """The q-quantile of already sorted values."""
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system) a process has used so far; None off Linux."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pg_admin() -> psycopg.Connection[tuple[Any, ...]]:
    """An autocommit connection to the server's ``postgres`` database."""
    return psycopg.connect(
        host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres", autocommit=True
    )


@contextmanager
def scratch_database() -> Iterator[str]:
    """A new PostgreSQL database for the run; its URL. Dropped afterwards."""
    name = f"dispatcher_bench_{secrets.token_hex(4)}"
    with pg_admin() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        with pg_admin() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@contextmanager
def spare_redis() -> Iterator[str]:
    """A Redis database index nobody else has claimed, flushed before and after; its URL."""
    token = f"bench-{os.getpid()}-{secrets.token_hex(4)}"
    for index in range(15, 0, -1):
        client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=index)
        try:
            if client.set(REDIS_CLAIM_KEY, token, nx=True, ex=REDIS_CLAIM_TTL_S):
                break
        finally:
            client.close()
    else:
        raise SystemExit("every Redis database 1..15 is claimed; try again later")
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=index)
    try:
        client.flushdb()
        client.set(REDIS_CLAIM_KEY, token, ex=REDIS_CLAIM_TTL_S)
        yield f"redis://{REDIS_HOST}:{REDIS_PORT}/{index}"
    finally:
        client.flushdb()
        client.close()


def free_port() -> int:
    """A TCP port free at the moment of asking."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def dispatcher(env: dict[str, str], cwd: Path, *args: str) -> str:
    """Run ``dispatcher ARGS`` and return its output; stop the benchmark if it fails."""
    done = subprocess.run(
        [sys.executable, "-m", "dispatcher", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"dispatcher {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


@contextmanager
def serve(env: dict[str, str], cwd: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``dispatcher serve`` in a child process; its base URL once it answers."""
    port = free_port()
    with (cwd / "serve.log").open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "dispatcher", "serve", "--port", str(port), "--no-access-log"],
            env=env,
            cwd=cwd,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                raise SystemExit("dispatcher serve exited:\n" + (cwd / "serve.log").read_text())
            try:
                if requests.get(base_url + "/healthz", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("dispatcher serve did not answer in time")
            time.sleep(0.1)
        yield base_url, process
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def client(
    url: str, token: str, jobs: int, recipients: int, offset: int, result: PhaseResult
) -> None:
    """Post ``jobs`` jobs of ``recipients`` numbers each over one keep-alive connection."""
    headers = {"Authorization": f"Bearer {token}"}
    with requests.Session() as session:
        session.mount("http://", HTTPAdapter(pool_connections=1, pool_maxsize=1))
        for i in range(jobs):
            first = (offset + i * recipients) % 100_000
            numbers = [f"4477009{(first + n) % 100_000:05d}" for n in range(recipients)]
            started = time.perf_counter()
            try:
                response = session.post(
                    url,
                    json={"to": numbers, "text": f"bench {offset}-{i}"},
                    headers=headers,
                    timeout=(5, 60),
                )
            except requests.RequestException:
                with result.lock:
                    result.errors += 1
                continue
            elapsed_s = time.perf_counter() - started
            with result.lock:
                if response.status_code == 201:
                    result.jobs += 1
                    result.recipients += int(response.json()["accepted"])
                    result.latencies_s.append(elapsed_s)
                else:
                    result.errors += 1


def run_phase(
    base_url: str, token: str, *, jobs: int, recipients: int, threads: int, pid: int
) -> dict[str, Any]:
    """One phase: ``jobs`` jobs spread over ``threads`` clients; its figures."""
    result = PhaseResult()
    shares = [jobs // threads + (1 if i < jobs % threads else 0) for i in range(threads)]
    workers = [
        threading.Thread(
            target=client,
            args=(base_url + "/v1/jobs", token, share, recipients, i * 10_000, result),
        )
        for i, share in enumerate(shares)
    ]
    cpu_before = cpu_seconds(pid)
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed_s = time.perf_counter() - started
    cpu_after = cpu_seconds(pid)
    latencies = sorted(result.latencies_s)
    server_cpu_s = (
        cpu_after - cpu_before if cpu_before is not None and cpu_after is not None else None
    )
    return {
        "jobs": result.jobs,
        "recipients_per_job": recipients,
        "recipients": result.recipients,
        "errors": result.errors,
        "elapsed_s": round(elapsed_s, 3),
        "requests_per_s": round(result.jobs / elapsed_s, 1),
        "recipients_per_s": round(result.recipients / elapsed_s, 1),
        "latency_p50_ms": round(percentile(latencies, 0.5) * 1000, 2),
        "latency_p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
        "server_cpu_busy": round(server_cpu_s / elapsed_s, 3) if server_cpu_s else None,
    }


def count_rows(database_url: str) -> tuple[int, int]:
    """(jobs, recipients) in the database."""
    with psycopg.connect(database_url) as conn:
        jobs = conn.execute("SELECT count(*) FROM jobs").fetchone()
        recipients = conn.execute("SELECT count(*) FROM recipients").fetchone()
    assert jobs is not None
    assert recipients is not None
    return int(jobs[0]), int(recipients[0])


def main() -> None:
    """Run both phases and write the figures."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--small-jobs", type=int, default=4000)
    parser.add_argument("--bulk-jobs", type=int, default=200)
    parser.add_argument("--bulk-recipients", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=8, help="client threads (connections)")
    parser.add_argument("--quick", action="store_true", help="a tenth of the jobs")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    small_jobs = args.small_jobs // 10 if args.quick else args.small_jobs
    bulk_jobs = args.bulk_jobs // 10 if args.quick else args.bulk_jobs
    output = args.output or RESULTS / (
        "api_throughput_quick.json" if args.quick else "api_throughput.json"
    )

    with (
        scratch_database() as database_url,
        spare_redis() as broker_url,
        tempfile.TemporaryDirectory() as tmp,
    ):
        workdir = Path(tmp)
        env = {
            **{k: v for k, v in os.environ.items() if not k.upper().startswith("DISPATCHER_")},
            "DISPATCHER_DATABASE_URL": database_url,
            "DISPATCHER_BROKER_URL": broker_url,
            "DISPATCHER_DATA_DIR": str(workdir / "data"),
            "DISPATCHER_SETTINGS_FILE": os.devnull,
            # The limit is per key and this is one key: measure the API, not the limiter's refusals.
            "DISPATCHER_API_RATE_PER_S": "0",
        }
        dispatcher(env, workdir, "migrate")
        token = json.loads(dispatcher(env, workdir, "keys", "create", "bench", "--json"))["token"]
        with serve(env, workdir) as (base_url, process):
            # A few requests first, so connection pools and caches are warm.
            run_phase(base_url, token, jobs=20, recipients=1, threads=2, pid=process.pid)
            small = run_phase(
                base_url,
                token,
                jobs=small_jobs,
                recipients=1,
                threads=args.threads,
                pid=process.pid,
            )
            bulk = run_phase(
                base_url,
                token,
                jobs=bulk_jobs,
                recipients=args.bulk_recipients,
                threads=args.threads,
                pid=process.pid,
            )
        jobs_in_db, recipients_in_db = count_rows(database_url)

    acknowledged_jobs = 20 + small["jobs"] + bulk["jobs"]
    acknowledged_recipients = 20 + small["recipients"] + bulk["recipients"]
    figures = {
        "small": small,
        "bulk": bulk,
        "client_threads": args.threads,
        "quick": args.quick,
        "database_jobs": jobs_in_db,
        "database_recipients": recipients_in_db,
        "every_acknowledged_job_in_database": jobs_in_db == acknowledged_jobs
        and recipients_in_db == acknowledged_recipients,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
    print(
        f"small jobs: {small['requests_per_s']} requests/s "
        f"(p50 {small['latency_p50_ms']} ms, p99 {small['latency_p99_ms']} ms); "
        f"bulk jobs of {args.bulk_recipients}: {bulk['recipients_per_s']} recipients/s; "
        f"written to {output.relative_to(ROOT) if output.is_relative_to(ROOT) else output}"
    )
    if not figures["every_acknowledged_job_in_database"] or small["errors"] or bulk["errors"]:
        raise SystemExit("errors, or acknowledged jobs missing from the database")


if __name__ == "__main__":
    main()
