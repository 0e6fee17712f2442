"""The services and processes a benchmark run drives: worker processes started and
stopped, Celery workers awaited, final rows polled for, the simulator's count read,
and what the machine was doing (load average, what it is).

Shared by ``ops.bench.pipeline`` and ``ops.bench.steady``, which run their workers the
same way.
"""

from __future__ import annotations

import os
import platform
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import requests
from celery import Celery
from sqlalchemy import text

from dispatcher.persistence.db import Database

ROOT = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).resolve().parent / "results"
READY_TIMEOUT_S = 90.0


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages: the machine may be shared."""
    return [round(x, 2) for x in os.getloadavg()]


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


OPEN_BATCHES = "SELECT count(*) FROM batches WHERE status IN ('queued', 'submitting')"
"""The dispatcher's batches still to send or in flight: read from the two small partial
indexes over those statuses, however many recipients the run has written."""


def wait_final(
    database_url: str,
    query: str,
    total: int,
    timeout_s: float,
    *,
    open_query: str | None = None,
) -> int:
    """Poll ``query`` (a count of final rows) until it reaches ``total``; the last count.

    With ``open_query`` (a cheap count of work still open) the count of final rows runs
    only once that is zero: it scans every recipient written, and polled every 0.1 s
    it cost PostgreSQL about a tenth of its CPU in a bulk run, load the limit probe's
    harness never put on it (docs/performance.md)."""
    engine = Database(database_url, pool_size=1)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            with engine.engine.connect() as conn:
                still_open = int(conn.execute(text(open_query)).scalar_one()) if open_query else 0
                done = int(conn.execute(text(query)).scalar_one()) if not still_open else -1
            if done >= total or time.monotonic() > deadline:
                if done < 0:
                    with engine.engine.connect() as conn:
                        done = int(conn.execute(text(query)).scalar_one())
                return done
            time.sleep(0.1)
    finally:
        engine.dispose()


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    return {
        "cpus": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
