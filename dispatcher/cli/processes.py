"""The commands that run the dispatcher's processes: ``worker``, ``serve``, ``sweep``, ``rollup``.

What a deployment starts and keeps running (a supervisor, a container, cron):
the Celery worker, the HTTP server, and the sweeper and rollup jobs that the
processes also run on their own schedule.
"""

from __future__ import annotations

import logging
import socket
import sys
import threading

import click

from dispatcher.cli.common import emit_json, friendly_errors, require_schema
from dispatcher.domain.lanes import LANE_NAMES
from dispatcher.errors import ConfigurationError


@click.command()
@click.option("--concurrency", "-c", type=click.IntRange(1, 1024), help="Threads (I/O-bound).")
@click.option("--loglevel", "-l", default="INFO", show_default=True, help="Celery's log level.")
@click.option("--hostname", "-n", default=None, help="Worker node name.")
@click.option("--migrate/--no-migrate", default=False, help="Migrate the schema before starting.")
@click.option(
    "--lanes",
    default=None,
    help=f"Priority lanes to serve, comma-separated ({', '.join(LANE_NAMES)}); default "
    "DISPATCHER_WORKER_LANES (all). `--lanes high` makes a dedicated OTP worker.",
)
@friendly_errors
def worker(
    concurrency: int | None, loglevel: str, hostname: str | None, migrate: bool, lanes: str | None
) -> None:
    """Run a Celery worker that claims and sends due batches (and sweeps)."""
    from dispatcher import runtime

    overrides: dict[str, object] = {"worker_lanes": lanes} if lanes else {}
    if concurrency:
        # The threads the process really has: webhook deliveries take at most half.
        overrides["worker_concurrency"] = concurrency
    settings = runtime.configure(**overrides) if overrides else runtime.settings()
    if settings.gateway_username is None or settings.gateway_password is None:
        raise ConfigurationError(
            "DISPATCHER_GATEWAY_USERNAME and DISPATCHER_GATEWAY_PASSWORD must be set for a worker"
        )
    settings.gateway_config()
    if migrate:
        from dispatcher.persistence import migrate as migrations

        migrations.upgrade(runtime.service().db)
    require_schema(upgrade_sqlite=True)
    from dispatcher.celery_app import ensure_broker_folders, worker_queues

    app = runtime.celery()
    ensure_broker_folders(app)
    argv = [
        "worker",
        f"--loglevel={loglevel}",
        f"--concurrency={concurrency or settings.worker_concurrency}",
        "--pool=threads",
        "--queues=" + ",".join(worker_queues(settings.worker_lanes)),
    ]
    if hostname:
        argv.append(f"--hostname={hostname}")
    # Workers never talk to each other: the database is the queue and each worker's
    # health is its own heartbeat row (docs/operating.md). Celery's gossip (every
    # worker reading every other's events) and mingle (a start-up exchange) only cost
    # broker traffic and CPU, and gossip logs an error on each reconnect after a
    # broker restart (seen by the soak, docs/soak.md).
    argv += ["--without-gossip", "--without-mingle"]
    if settings.effective_broker_url.startswith("filesystem://"):
        # The file broker has no broadcast channel for event heartbeats either.
        argv.append("--without-heartbeat")
    app.worker_main(argv=argv)


@click.command()
@click.option("--loop", is_flag=True, help="Keep sweeping every DISPATCHER_SWEEP_INTERVAL_S.")
@friendly_errors
def sweep(loop: bool) -> None:
    """Mark batches abandoned mid-call unknown, and wake workers for due work."""
    from dispatcher import runtime

    require_schema()
    if loop:
        stop = threading.Event()
        try:
            runtime.sweep_forever(runtime.settings().sweep_interval_s, stop)
        except KeyboardInterrupt:
            stop.set()
        return
    result = runtime.service().sweep()
    click.echo(
        f"marked {result['abandoned_recipients']} recipients unknown (worker lost); "
        f"failed {result['overdue_failed']} past the retry age; "
        f"queued {result['webhooks_queued']} webhooks; woke {result['woken']} workers"
    )


@click.command()
@click.option("--json", "as_json", is_flag=True)
@friendly_errors
def rollup(as_json: bool) -> None:
    """Recompute the recent minutes of the dashboard's and /metrics' rollups now."""
    from dispatcher import runtime

    require_schema()
    report = runtime.service().rollup(force=True)
    if report is None:
        raise click.ClickException("another rollup is running; try again in a moment")
    if as_json:
        emit_json(
            {
                "ran_at": report.ran_at.isoformat(),
                "recomputed_from": report.recomputed_from.isoformat(),
                "sealed_before": report.sealed_before.isoformat(),
                "minute_rows": report.minute_rows,
                "duration_ms": round(report.duration_ms, 1),
            }
        )
        return
    click.echo(
        f"recomputed {report.minute_rows} minute rows from "
        f"{report.recomputed_from:%Y-%m-%d %H:%M} UTC in {report.duration_ms:.0f} ms"
    )


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--access-log/--no-access-log",
    default=True,
    show_default=True,
    help="Log each request's method, path (never its query string), status and duration.",
)
@friendly_errors
def serve(host: str, port: int, access_log: bool) -> None:
    """Serve the HTTP API (/v1), the gateway drop-in (/smsgateway) and /healthz."""
    from dispatcher import runtime
    from dispatcher.api import create_app
    from dispatcher.api.server import run

    require_schema()
    if access_log:
        # The CLI's default level is WARNING; a server without its access log is blind.
        for name in ("dispatcher.api.access", "uvicorn.error"):
            logging.getLogger(name).setLevel(logging.INFO)
    run(create_app(runtime.service()), host=host, port=port)


@click.command("healthcheck")
@click.option(
    "--worker",
    "hostname",
    flag_value=socket.gethostname(),
    default=None,
    help="Check the worker on this host (a container's health check).",
)
@friendly_errors
def healthcheck(hostname: str | None) -> None:
    """Exit 0 if this host's worker is alive and consuming from the broker (by its
    heartbeats, README "Worker health"), else 1 with the reason."""
    from dispatcher import runtime

    if hostname is None:
        raise click.UsageError("say what to check: --worker")
    alive, consuming = runtime.service().worker_health(hostname)
    if not alive:
        click.echo(f"unhealthy: no running worker on {hostname} has been seen lately", err=True)
        sys.exit(1)
    if not consuming:
        click.echo(
            f"unhealthy: the worker on {hostname} runs but has not consumed from the broker lately",
            err=True,
        )
        sys.exit(1)
    click.echo(f"healthy: the worker on {hostname} runs and consumes")
