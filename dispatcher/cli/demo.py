"""``dispatcher demo``: the whole pipeline once, embedded, with no server and no account.

It starts the gateway simulator, migrates a fresh SQLite database, starts a real
worker process (``dispatcher worker``) on the file broker, enqueues about a
thousand recipients across jobs (some refused at enqueue, some rejected by the
gateway, some hitting transient errors that are retried), shows progress, and
prints the audit summary from the database, checked against the simulator's
ledger.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import click

from dispatcher import runtime
from dispatcher.config import load_settings
from dispatcher.domain.statuses import FINAL_STATUSES
from dispatcher.gateway.simulator import GatewaySimulator, SimulatorConfig
from dispatcher.persistence import migrate
from dispatcher.service.dispatcher import Dispatcher

DEMO_MARKER = ".dispatcher-demo"
SIM_USER = "demo-user"


def _prepare_data_dir(path: Path) -> None:
    if path.exists():
        if not (path / DEMO_MARKER).exists():
            raise click.UsageError(
                f"{path} exists and was not made by the demo; choose another --data-dir"
            )
        shutil.rmtree(path)
    path.mkdir(parents=True)
    (path / DEMO_MARKER).write_text("made by `dispatcher demo`; safe to delete\n")


def _numbers(count: int, rng: random.Random) -> tuple[list[str], dict[str, str]]:
    """Demo numbers in the 07700 900xxx drama range, and the simulator's rules for some."""
    numbers = [f"07700 9{n:05d}" for n in rng.sample(range(100_000), count)]
    rules: dict[str, str] = {}
    for number in rng.sample(numbers, max(1, count // 50)):
        rules["44" + number.replace(" ", "")[1:]] = "INVALID_NUMBER"
    return numbers, rules


def _job_sizes(total: int) -> list[int]:
    sizes = [total // 2]
    rest = total - sizes[0]
    while rest > 0:
        size = min(rest, 40 if len(sizes) % 3 else 1)
        sizes.append(size)
        rest -= size
    return sizes


def run_demo(*, recipients: int, data_dir: str, timeout_s: float) -> int:
    """Run the demo; returns the process exit code."""
    rng = random.Random()
    root = Path(data_dir).resolve()
    _prepare_data_dir(root)
    # A fresh credential per run: the simulator checks it like the real gateway.
    password = os.urandom(9).hex()
    numbers, rules = _numbers(recipients, rng)
    simulator = GatewaySimulator(
        SimulatorConfig(
            username=SIM_USER,
            password=password,
            latency_ms=20,
            latency_jitter_ms=20,
            transient_error_rate=0.08,
            number_rules=rules,
        )
    )
    simulator.start_in_thread()
    env = {
        **os.environ,
        "DISPATCHER_DATA_DIR": str(root),
        "DISPATCHER_GATEWAY_URL": simulator.base_url,
        "DISPATCHER_GATEWAY_BACKUP_URL": "",
        "DISPATCHER_GATEWAY_ALLOW_HTTP": "true",
        "DISPATCHER_GATEWAY_USERNAME": SIM_USER,
        "DISPATCHER_GATEWAY_PASSWORD": password,
        "DISPATCHER_RETRY_BACKOFF_S": "1",
        "DISPATCHER_RETRY_BACKOFF_MAX_S": "4",
        "DISPATCHER_SWEEP_INTERVAL_S": "1",
    }
    for name in ("DISPATCHER_DATABASE_URL", "DISPATCHER_BROKER_URL", "DISPATCHER_SETTINGS_FILE"):
        env.pop(name, None)
    settings = load_settings(
        data_dir=root,
        database_url=None,
        broker_url=None,
        gateway_url=simulator.base_url,
        gateway_backup_url="",
        gateway_allow_http=True,
        gateway_username=SIM_USER,
        gateway_password=password,
        retry_backoff_s=1,
        retry_backoff_max_s=4,
        sweep_interval_s=1,
    )
    # The producer side writes and wakes through the same file broker the worker
    # reads: the worker gets these settings through its environment, this process
    # through the composition root, and this process's environment stays as it was.
    runtime.use(settings)
    service = runtime.service()
    migrate.upgrade(service.db)

    click.echo(f"simulator  {simulator.base_url}")
    click.echo(f"database   {settings.effective_database_url}")
    click.echo(f"broker     {settings.effective_broker_url} in {settings.broker_folder}")
    log_path = root / "worker.log"
    with log_path.open("wb") as log_file:
        worker = subprocess.Popen(
            [sys.executable, "-m", "dispatcher", "worker", "--loglevel", "WARNING", "-c", "8"],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        return _produce_and_watch(service, simulator, numbers, rng, worker, timeout_s, log_path)
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
        simulator.stop()
        runtime.reset()


def _produce_and_watch(
    service: Dispatcher,
    simulator: GatewaySimulator,
    numbers: list[str],
    rng: random.Random,
    worker: subprocess.Popen[bytes],
    timeout_s: float,
    log_path: Path,
) -> int:
    started = time.monotonic()
    job_ids: list[str] = []
    offset = 0
    refused_inputs = ["12345", "not a number", "+44 7700 900 123 456 789"]
    for index, size in enumerate(_job_sizes(len(numbers))):
        batch = numbers[offset : offset + size]
        offset += size
        if index % 7 == 1:
            batch = [*batch, rng.choice(refused_inputs)]
        result = service.enqueue(batch, f"Demo message {index + 1}: your code is {index:06d}")
        job_ids.append(result.job_id)
    enqueued_s = time.monotonic() - started
    total = len(numbers) + sum(1 for i in range(len(job_ids)) if i % 7 == 1)
    click.echo(f"enqueued   {total} recipients in {len(job_ids)} jobs in {enqueued_s:.2f} s")

    final = 0
    with click.progressbar(length=total, label="dispatching", show_pos=True) as bar:
        while final < total:
            if worker.poll() is not None:
                click.echo(f"\nworker exited with {worker.returncode}; see {log_path}", err=True)
                return 1
            if time.monotonic() - started > timeout_s:
                click.echo(f"\ntimed out after {timeout_s:g} s; see {log_path}", err=True)
                return 1
            time.sleep(0.25)
            summary = service.summary(job_ids)
            now_final = sum(n for s, n in summary["by_status"].items() if s in FINAL_STATUSES)
            bar.update(now_final - final)
            final = now_final
    elapsed_s = time.monotonic() - started
    return _report(service, simulator, job_ids, total, elapsed_s)


def _report(
    service: Dispatcher,
    simulator: GatewaySimulator,
    job_ids: list[str],
    total: int,
    elapsed_s: float,
) -> int:
    summary = service.summary(job_ids)
    click.echo("")
    click.echo("recipients by status")
    for status, count in sorted(summary["by_status"].items(), key=lambda kv: -kv[1]):
        click.echo(f"  {status:<12}{count:>6}")
    click.echo("recipients by last error code")
    for code, count in sorted(summary["by_error_code"].items(), key=lambda kv: -kv[1]):
        click.echo(f"  {code:<22}{count:>6}")
    outcomes = ", ".join(f"{k} {v}" for k, v in sorted(summary["attempts_by_outcome"].items()))
    click.echo(f"HTTP attempts       {summary['attempts']} ({outcomes})")
    if summary["mean_latency_ms"] is not None:
        click.echo(f"mean gateway latency {summary['mean_latency_ms']:.1f} ms")
    click.echo("some gateway message IDs")
    for number, message_id in summary["sample_ids"]:
        click.echo(f"  +{number}  {message_id}")
    click.echo(f"throughput          {total / elapsed_s:.0f} recipients/s over {elapsed_s:.1f} s")

    ledger = Counter((e["number"], e["text"]) for e in simulator.ledger())
    twice = [k for k, n in ledger.items() if n > 1]
    sent = summary["by_status"].get("sent", 0)
    click.echo(f"gateway ledger      {sum(ledger.values())} accepted, {len(twice)} accepted twice")
    click.echo(f"database            {service.db.url}")
    click.echo(
        f"inspect a job       DISPATCHER_DATA_DIR={service.settings.data_dir} "
        f"dispatcher status {job_ids[0]}"
    )
    if twice or sum(ledger.values()) != sent:
        click.echo("error: the database and the gateway ledger disagree", err=True)
        return 1
    return 0
