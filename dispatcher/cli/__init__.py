"""The ``dispatcher`` command.

Every command prints one clear line and exits non-zero on a problem the user can
fix (exit 2: bad input or configuration; exit 1: the operation failed), never a
traceback. ``--json`` prints machine-readable output where a script reads it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
import threading
from collections.abc import Callable, Sequence
from functools import wraps
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import click
from sqlalchemy.exc import SQLAlchemyError

from dispatcher import __version__
from dispatcher.domain import redaction
from dispatcher.domain.storable import unstorable
from dispatcher.domain.times import parse_time, to_utc
from dispatcher.errors import ConfigurationError, DispatcherError, NotFoundError, ValidationError

if TYPE_CHECKING:
    from dispatcher.service.keys import KeyStore

P = ParamSpec("P")
R = TypeVar("R")

EXIT_FAILED = 1
EXIT_USAGE = 2


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    redaction.install()


def friendly_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Turn the project's exceptions into one line on stderr and an exit code."""

    @wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except (ValidationError, ConfigurationError) as exc:
            click.echo(f"error: {redaction.redact(str(exc))}", err=True)
            sys.exit(EXIT_USAGE)
        except NotFoundError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_FAILED)
        except DispatcherError as exc:
            click.echo(f"error: {redaction.redact(str(exc))}", err=True)
            sys.exit(EXIT_FAILED)
        except SQLAlchemyError as exc:
            # The driver's first line says what went wrong; the rest is SQL and
            # parameters, which may hold message text or numbers.
            detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            click.echo(f"error: database: {redaction.redact(detail)}", err=True)
            sys.exit(EXIT_FAILED)

    return wrapper


def _emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))


class IsoTime(click.ParamType[dt.datetime]):
    """An ISO 8601 date or time (``2026-11-24``, ``2026-11-24T09:00:00+01:00``,
    ``...Z``) in UTC; a time without a zone is read as UTC unless ``naive_as_utc`` is
    off, when it is refused (a send time must say its zone)."""

    name = "ISO_TIME"

    def __init__(self, *, naive_as_utc: bool = True) -> None:
        self.naive_as_utc = naive_as_utc

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> dt.datetime:
        field = param.name if param is not None and param.name else "time"
        try:
            if isinstance(value, dt.datetime):
                return to_utc(value, field, assume_utc=self.naive_as_utc)
            return parse_time(str(value), field, assume_utc=self.naive_as_utc)
        except ValidationError as exc:
            self.fail(str(exc), param, ctx)


class _Commands(click.Group):
    """The top-level group: refuses an argument that is not text before any command runs."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # Bytes that are not UTF-8 reach Python as lone surrogates, which no database
        # can store and no look-up can match: one line here, not a traceback later.
        for arg in args:
            problem = unstorable(arg)
            if problem is not None:
                shown = arg if len(arg) <= 40 else arg[:40] + "..."
                click.echo(f"error: the argument {shown!r} {problem}", err=True)
                ctx.exit(EXIT_USAGE)
        return super().parse_args(ctx, args)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dispatcher")
@click.option(
    "--log-level",
    default="WARNING",
    show_default=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    help="How much the command logs to stderr.",
)
def main(log_level: str) -> None:
    """sms-dispatcher: queue, send and audit SMS through the IntelliSoftware gateway.

    Configuration comes from DISPATCHER_* environment variables (see the README);
    with none set, everything runs embedded: a SQLite file and a file-based broker
    under ./dispatcher-data.
    """
    _configure_logging(log_level)


@main.command()
@friendly_errors
def migrate() -> None:
    """Create or upgrade the database schema to this version."""
    from dispatcher import runtime
    from dispatcher.persistence import migrate as migrations

    database = runtime.service().db
    migrations.upgrade(database)
    revision = migrations.current_revision(database)
    click.echo(f"database at revision {revision}: {database.display_url}")


def _require_schema() -> None:
    from dispatcher import runtime
    from dispatcher.persistence import migrate as migrations

    database = runtime.service().db
    current, head = migrations.current_revision(database), migrations.head_revision(database)
    if current != head:
        raise ConfigurationError(
            f"database schema is at {current or 'nothing'}, this version needs {head}: "
            "run `dispatcher migrate` first"
        )


@main.command()
@click.option("--concurrency", "-c", type=click.IntRange(1, 1024), help="Threads (I/O-bound).")
@click.option("--loglevel", "-l", default="INFO", show_default=True, help="Celery's log level.")
@click.option("--hostname", "-n", default=None, help="Worker node name.")
@click.option("--migrate/--no-migrate", default=False, help="Migrate the schema before starting.")
@click.option(
    "--lanes",
    default=None,
    help="Priority lanes to serve, comma-separated (high, normal, bulk); default "
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
    _require_schema()
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
    if settings.effective_broker_url.startswith("filesystem://"):
        # The file broker has no broadcast channel for these worker-to-worker chats.
        argv += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    app.worker_main(argv=argv)


@main.command()
@click.option("--loop", is_flag=True, help="Keep sweeping every DISPATCHER_SWEEP_INTERVAL_S.")
@friendly_errors
def sweep(loop: bool) -> None:
    """Mark batches abandoned mid-call unknown, and wake workers for due work."""
    from dispatcher import runtime

    _require_schema()
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


@main.command()
@click.option("--json", "as_json", is_flag=True)
@friendly_errors
def rollup(as_json: bool) -> None:
    """Recompute the recent minutes of the dashboard's and /metrics' rollups now."""
    from dispatcher import runtime

    _require_schema()
    report = runtime.service().rollup(force=True)
    if report is None:
        raise click.ClickException("another rollup is running; try again in a moment")
    if as_json:
        _emit_json(
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


@main.command()
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

    _require_schema()
    if access_log:
        # The CLI's default level is WARNING; a server without its access log is blind.
        for name in ("dispatcher.api.access", "uvicorn.error"):
            logging.getLogger(name).setLevel(logging.INFO)
    run(create_app(runtime.service()), host=host, port=port)


@main.command()
@click.argument("text")
@click.option(
    "--to",
    "-t",
    "to",
    multiple=True,
    required=True,
    help="A number, or several separated by commas; repeatable.",
)
@click.option("--sender", "-f", default=None, help="Up to 11 alphanumerics or 15 digits.")
@click.option("--maxconcat", default=1, show_default=True, type=int, help="Most parts per SMS.")
@click.option("--kind", default="text", show_default=True, type=click.Choice(["text", "voice"]))
@click.option(
    "--at",
    "send_at",
    default=None,
    type=IsoTime(naive_as_utc=False),
    help="Send at this time, ISO 8601 with an offset (2026-11-24T09:00:00+01:00 or ...Z).",
)
@click.option(
    "--priority",
    default="normal",
    show_default=True,
    type=click.Choice(["high", "normal", "bulk"]),
    help="Lane: high (one-time passwords) goes before normal, normal before bulk.",
)
@click.option(
    "--valid-for",
    "valid_for_s",
    default=None,
    type=float,
    help="Seconds after its send time that the message may still go; later, unsent "
    "recipients end `expired`. Default DISPATCHER_DEFAULT_VALIDITY_S (none).",
)
@click.option("--reference", default=None, help="Your own label, searchable with `jobs`.")
@click.option("--json", "as_json", is_flag=True, help="Print the job as JSON.")
@friendly_errors
def send(
    text: str,
    to: Sequence[str],
    sender: str | None,
    maxconcat: int,
    kind: str,
    send_at: dt.datetime | None,
    priority: str,
    valid_for_s: float | None,
    reference: str | None,
    as_json: bool,
) -> None:
    """Queue TEXT for the given numbers and print the job id."""
    from dispatcher import runtime

    _require_schema()

    numbers = [n for item in to for n in item.split(",")]
    result = runtime.service().enqueue(
        numbers,
        text,
        sender=sender,
        maxconcat=maxconcat,
        kind=kind,
        send_at=send_at,
        priority=priority,
        valid_for_s=valid_for_s,
        reference=reference,
        actor="cli",
    )
    if as_json:
        _emit_json(
            {
                "id": result.job_id,
                "accepted": len(result.accepted),
                "refused": [{"number": n, "reason": r} for n, r in result.refused],
                "batches": result.batches,
                "parts": result.parts,
                "credits": result.credits,
                "priority": result.priority,
                "send_at": result.send_at.isoformat() if result.send_at else None,
                "expires_at": result.expires_at.isoformat() if result.expires_at else None,
            }
        )
        return
    click.echo(result.job_id)
    for number, reason in result.refused:
        click.echo(f"refused {number!r}: {reason}", err=True)


@main.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print the job as JSON.")
@friendly_errors
def status(job_id: str, as_json: bool) -> None:
    """Show a job and each recipient's status, gateway message ID and error."""
    from dispatcher import runtime

    _require_schema()

    view = runtime.service().job_view(job_id)
    if as_json:
        _emit_json(view)
        return
    counts = ", ".join(f"{k} {v}" for k, v in sorted(view["counts"].items()))  # type: ignore[attr-defined]
    click.echo(f"job {view['id']}  {view['status']}  ({counts})")
    click.echo(
        f"created {view['created_at']}  kind {view['kind']}  priority {view['priority']}  "
        f"parts {view['parts']}  credits {view['credits']} (estimated)"
    )
    if view["send_at"] or view["expires_at"]:
        click.echo(f"send at {view['send_at'] or 'once queued'}  expires {view['expires_at']}")
    if view["reference"]:
        click.echo(f"reference {view['reference']}")
    recipients: list[dict[str, Any]] = view["recipients"]  # type: ignore[assignment]
    for r in recipients:
        detail = r["gateway_message_id"] or r["error_code"] or ""
        click.echo(f"  {r['number']:<16} {r['status']:<11} {r['attempts']:>2}  {detail}")


@main.command()
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 1000))
@click.option("--number", default=None, help="Only jobs with this number (any format).")
@click.option(
    "--status",
    "status_",
    default=None,
    type=click.Choice(
        ["queued", "submitting", "retry_wait", "sent", "failed", "unknown", "cancelled", "expired"]
    ),
    help="Only jobs with a recipient in this status.",
)
@click.option("--reference", default=None, help="Only jobs with this reference (exact).")
@click.option("--json", "as_json", is_flag=True)
@friendly_errors
def jobs(
    limit: int, number: str | None, status_: str | None, reference: str | None, as_json: bool
) -> None:
    """List recent jobs with their recipients per status."""
    from dispatcher import runtime

    _require_schema()
    from dispatcher.domain.numbers import normalise
    from dispatcher.domain.statuses import RecipientStatus

    svc = runtime.service()
    wanted = normalise(number, svc.settings.default_region) if number else None
    rows = svc.list_jobs(
        limit=limit,
        number=wanted,
        status=RecipientStatus(status_) if status_ else None,
        reference=reference.strip() if reference else None,
    )
    if as_json:
        _emit_json(rows)
        return
    if not rows:
        click.echo("no jobs")
        return
    for row in rows:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(row["counts"].items()))
        label = f"  [{row['reference']}]" if row["reference"] else ""
        click.echo(
            f"{row['id']}  {row['created_at'][:19]}  {row['status']:<11}  {row['priority']:<6}  "
            f"{counts}{label}"
        )


def _operator() -> str:
    """Who is at the keyboard, for the audit trail."""
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"cli:{user}@{socket.gethostname()}"


def _print_control(control: dict[str, Any], as_json: bool) -> None:
    if as_json:
        _emit_json(control)
        return
    if control["paused"]:
        click.echo(
            f"dispatch PAUSED ({control['pause_reason']}) since {control['paused_at']} "
            f"by {control['paused_by']}: {control['pause_detail']}"
        )
    else:
        click.echo("dispatch running")
    breaker = control["breaker_state"]
    line = f"circuit breaker {breaker}"
    if breaker != "closed":
        line += f" since {control['breaker_opened_at']}; next probe {control['breaker_retry_at']}"
    click.echo(line)
    if control["last_balance"] is not None:
        click.echo(f"last balance {control['last_balance']:g} at {control['credit_checked_at']}")


@main.command()
@click.option("--reason", default="paused by an operator", show_default=True)
@click.option("--json", "as_json", is_flag=True)
@friendly_errors
def pause(reason: str, as_json: bool) -> None:
    """Stop every worker claiming work (calls in flight finish); survives restarts."""
    from dispatcher import runtime

    _require_schema()
    _print_control(runtime.service().pause(actor=_operator(), detail=reason), as_json)


@main.command()
@click.option("--json", "as_json", is_flag=True)
@friendly_errors
def resume(as_json: bool) -> None:
    """End a pause (manual, LOGIN_INVALID or credit) and wake workers for waiting work."""
    from dispatcher import runtime

    _require_schema()
    _print_control(runtime.service().resume(actor=_operator()), as_json)


@main.command()
@click.option("--json", "as_json", is_flag=True)
@friendly_errors
def state(as_json: bool) -> None:
    """Show whether dispatch is paused (and why) and the circuit breaker's state."""
    from dispatcher import runtime

    _require_schema()
    _print_control(runtime.service().control(), as_json)


@main.command()
@click.option("--job", "job_id", default=None, help="Only this job's recipients.")
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice(["failed", "unknown"]),
    default=["failed"],
    show_default=True,
    help="Which recipients; repeatable.",
)
@click.option("--error-code", default=None, help="Only recipients that failed with this code.")
@click.option("--since", default=None, type=IsoTime(), help="Changed at or after (ISO 8601).")
@click.option("--until", default=None, type=IsoTime(), help="Changed before (ISO 8601).")
@click.option("--number", default=None, help="Only recipients with this number (any format).")
@click.option(
    "--yes-may-double-send",
    "confirm_unknown",
    is_flag=True,
    help="Confirm retrying `unknown` recipients, which the gateway may already have sent.",
)
@click.option("--json", "as_json", is_flag=True)
@friendly_errors
def retry(
    job_id: str | None,
    statuses: Sequence[str],
    error_code: str | None,
    since: dt.datetime | None,
    until: dt.datetime | None,
    number: str | None,
    confirm_unknown: bool,
    as_json: bool,
) -> None:
    """Queue failed (or, confirmed, unknown) recipients again; audited.

    Retrying `unknown` recipients may send them twice: it needs
    --yes-may-double-send, or a yes at the prompt when run at a terminal.
    """
    from dispatcher import runtime
    from dispatcher.domain.numbers import normalise
    from dispatcher.errors import ConfirmationRequiredError

    _require_schema()
    if job_id is None and not (error_code or since or until or number):
        raise click.UsageError(
            "say which recipients: --job, --error-code, --number, --since or --until"
        )
    svc = runtime.service()
    numbers = [normalise(number, svc.settings.default_region)] if number else None

    def run(confirmed: bool) -> Any:
        return svc.retry(
            actor=_operator(),
            job_id=job_id,
            statuses=statuses,
            error_code=error_code,
            since=since,
            until=until,
            numbers=numbers,
            confirm_unknown=confirmed,
        )

    try:
        result = run(confirm_unknown)
    except ConfirmationRequiredError as exc:
        if not _interactive():
            raise ConfirmationRequiredError(f"{exc}: pass --yes-may-double-send") from None
        click.confirm(f"{exc}. Retry them anyway?", abort=True, err=True)
        result = run(True)
    if as_json:
        _emit_json({"retried": result.affected, "jobs": result.jobs})
        return
    click.echo(f"queued {result.affected} recipients again in {len(result.jobs)} jobs")


@main.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True)
@friendly_errors
def cancel(job_id: str, as_json: bool) -> None:
    """Cancel a job's recipients that no worker has claimed yet; audited."""
    from dispatcher import runtime

    _require_schema()
    result = runtime.service().cancel(job_id, actor=_operator())
    if as_json:
        _emit_json({"cancelled": result.affected, "job": job_id})
        return
    click.echo(f"cancelled {result.affected} recipients of {job_id}")


@main.group()
def keys() -> None:
    """API keys for the HTTP API and the drop-in endpoint."""


def _key_store() -> KeyStore:
    from dispatcher import runtime
    from dispatcher.service.keys import KeyStore

    _require_schema()
    return KeyStore(runtime.service().db)


@keys.command("create")
@click.argument("name")
@click.option(
    "--scope",
    "scopes",
    default="send,read",
    show_default=True,
    help="Comma-separated: send, read, operate, balance.",
)
@click.option(
    "--senders",
    default=None,
    help="Comma-separated senders granted to this key; without: the default sender only.",
)
@click.option("--json", "as_json", is_flag=True)
@friendly_errors
def keys_create(name: str, scopes: str, senders: str | None, as_json: bool) -> None:
    """Create a key; its token is printed once and never stored."""
    allowed = senders.split(",") if senders is not None else None
    token, info = _key_store().create(name, scopes, actor=_operator(), senders=allowed)
    if as_json:
        _emit_json(info.as_dict() | {"token": token})
        return
    click.echo(f"key {info.name} ({', '.join(sorted(info.scopes))}) created.")
    if info.allowed_senders:
        click.echo(f"allowed senders: {', '.join(info.allowed_senders)}")
    click.echo("token (shown once, keep it secret):")
    click.echo(token)


@keys.command("list")
@click.option("--json", "as_json", is_flag=True)
@friendly_errors
def keys_list(as_json: bool) -> None:
    """List keys (names and scopes; tokens are never stored)."""
    infos = _key_store().list()
    if as_json:
        _emit_json([i.as_dict() for i in infos])
        return
    for info in infos:
        state = f"revoked {info.revoked_at}" if info.revoked_at else "active"
        senders = ",".join(info.allowed_senders) or "default-only"
        click.echo(
            f"{info.name:<24} {','.join(sorted(info.scopes)):<20} {state:<10} senders {senders}"
        )


@keys.command("update")
@click.argument("name")
@click.option("--scope", "scopes", default=None, help="Replace its scopes: send, read, operate.")
@click.option(
    "--grant-sender",
    "grant",
    multiple=True,
    help="A sender it may use from now on (repeat, or comma-separate).",
)
@click.option(
    "--revoke-sender", "revoke", multiple=True, help="A granted sender it may no longer use."
)
@click.option("--json", "as_json", is_flag=True)
@friendly_errors
def keys_update(
    name: str, scopes: str | None, grant: Sequence[str], revoke: Sequence[str], as_json: bool
) -> None:
    """Rescope a key or grant and revoke its senders; audited, effective at once."""
    info = _key_store().update(
        name,
        actor=_operator(),
        scopes=scopes,
        grant=[s for item in grant for s in item.split(",")],
        revoke=[s for item in revoke for s in item.split(",")],
    )
    if as_json:
        _emit_json(info.as_dict())
        return
    senders = ", ".join(info.allowed_senders) or "the default only"
    click.echo(f"key {info.name}: scopes {','.join(sorted(info.scopes))}; senders {senders}")


@keys.command("revoke")
@click.argument("name")
@friendly_errors
def keys_revoke(name: str) -> None:
    """Revoke a key at once."""
    info = _key_store().revoke(name, actor=_operator())
    click.echo(f"key {info.name} revoked at {info.revoked_at}")


def _interactive() -> bool:
    """Whether a person at a terminal can answer a question."""
    return sys.stdin.isatty()


@main.command()
@click.option("--since", default=None, type=IsoTime(), help="From this time (ISO 8601).")
@click.option("--until", default=None, type=IsoTime(), help="Before this time (ISO 8601).")
@click.option("--number", default=None, help="Only this number (any format).")
@click.option("--job", "job_id", default=None, help="Only this job.")
@click.option(
    "--kind",
    default="events",
    show_default=True,
    type=click.Choice(["events", "recipients"]),
    help="events: one row per status change; recipients: one row per recipient.",
)
@click.option(
    "--output",
    "-o",
    default="-",
    show_default=True,
    type=click.Path(dir_okay=False, allow_dash=True),
    help="CSV file to write; - for standard output.",
)
@friendly_errors
def export(
    since: dt.datetime | None,
    until: dt.datetime | None,
    number: str | None,
    job_id: str | None,
    kind: str,
    output: str,
) -> None:
    """Write the audit of a time range, a number or a job as CSV (no message text).

    Times are ISO 8601 with their zone. --kind events answers "what happened to the
    SMS to this number on Tuesday" step by step; --kind recipients gives where each
    recipient of the jobs created in the range ended.
    """
    from pathlib import Path

    from dispatcher import runtime
    from dispatcher.service.audit import export_csv

    _require_schema()
    svc = runtime.service()
    # Checked before the file is opened: a bad argument leaves nothing behind.
    lines = export_csv(
        svc.db,
        since=since,
        until=until,
        number=number,
        job_id=job_id,
        kind=kind,
        default_region=svc.settings.default_region,
        actor=_operator(),
    )
    if output == "-":
        for line in lines:
            sys.stdout.write(line)
        sys.stdout.flush()
        return
    path = Path(output)
    rows = -1
    try:
        with path.open("w", encoding="utf-8", newline="") as out:
            for line in lines:
                out.write(line)
                rows += 1
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    click.echo(f"wrote {rows} rows to {path}", err=True)


@main.command()
@click.option("--dry-run", is_flag=True, help="Count what would be purged; change nothing.")
@click.option(
    "--days",
    default=None,
    type=click.IntRange(min=1),
    help="Purge jobs older than this (default: DISPATCHER_RETENTION_DAYS).",
)
@click.option("--json", "as_json", is_flag=True)
@friendly_errors
def purge(dry_run: bool, days: int | None, as_json: bool) -> None:
    """Remove the text and numbers of finished jobs past the retention period.

    Counts, statuses, gateway IDs, error codes and times stay. Audited as actor
    `retention`. The sweeper does the same on its own when DISPATCHER_RETENTION_DAYS
    is set.
    """
    from dataclasses import asdict

    from dispatcher import runtime
    from dispatcher.service import audit

    _require_schema()
    svc = runtime.service()
    retention_days = days or svc.settings.retention_days
    if retention_days is None:
        raise ConfigurationError("DISPATCHER_RETENTION_DAYS is not set: pass --days N")
    report = audit.purge(svc.db, retention_days=retention_days, dry_run=dry_run)
    if as_json:
        _emit_json(asdict(report))
        return
    verb = "would purge" if dry_run else "purged"
    click.echo(
        f"{verb} {report.jobs} jobs ({report.recipients} recipients) created before "
        f"{report.cutoff.isoformat()}"
        + ("" if dry_run else f"; {report.attempts} attempts and {report.events} events rewritten")
    )


@main.command()
@click.argument("number")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True)
@friendly_errors
def erase(number: str, yes: bool, as_json: bool) -> None:
    """Remove one person's NUMBER (any format) everywhere; - reads it from stdin.

    Recipients with it get a marker instead, attempts and history lose it, and the
    text of jobs sent only to it goes; waiting ones are cancelled first. Audited
    without the number. Reading it from stdin keeps it out of shell history.
    """
    from dataclasses import asdict

    from dispatcher import runtime
    from dispatcher.service import audit

    _require_schema()
    if number == "-":
        number = sys.stdin.readline().strip()
        if not yes:
            raise click.UsageError("reading the number from stdin needs --yes")
    svc = runtime.service()
    region = svc.settings.default_region
    preview = audit.erase_preview(svc.db, number, default_region=region)
    shown = "…" + preview.number[-4:]
    if not yes:
        if not _interactive():
            raise click.UsageError("erase cannot be undone: confirm with --yes")
        click.confirm(
            f"Erase the number ending {shown} from {preview.recipients} recipients "
            "everywhere? This cannot be undone",
            abort=True,
            err=True,
        )
    counts = audit.erase(svc.db, number, actor=_operator(), default_region=region)
    if as_json:
        _emit_json(asdict(counts))
        return
    click.echo(
        f"erased the number ending {shown}: {counts.recipients} recipients, "
        f"{counts.attempts} attempts, {counts.events} history rows changed; "
        f"{counts.cancelled} waiting recipients cancelled; text removed from {counts.jobs} jobs"
    )


@main.command(
    "gateway-sim",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
)
@click.pass_context
def gateway_sim(ctx: click.Context) -> None:
    """Run the gateway simulator (SPEC section 1); `dispatcher gateway-sim --help` for knobs.

    Options are those of `python -m dispatcher.gateway.simulator`: --host, --port,
    --prefix, credentials, --credit, --latency-ms, error rates, --number-rule
    NUMBER=CODE[*N], --seed. Knobs can also be changed at run time with
    POST /_sim/config.
    """
    from dispatcher.gateway import simulator

    argv = list(ctx.args)
    if not any(a == "--port" or a.startswith("--port=") for a in argv):
        argv += ["--port", str(simulator.DEFAULT_CLI_PORT)]
    simulator.main(argv)


@main.command()
@click.option("--recipients", default=1000, show_default=True, type=click.IntRange(10, 100_000))
@click.option(
    "--data-dir",
    default="dispatcher-demo",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Where the demo's SQLite database and broker folder go (emptied first).",
)
@click.option("--timeout-s", default=300.0, show_default=True, type=float)
@friendly_errors
def demo(recipients: int, data_dir: str, timeout_s: float) -> None:
    """Run the whole pipeline once, embedded: simulator, worker, producer, audit summary."""
    from dispatcher.cli.demo import run_demo

    sys.exit(run_demo(recipients=recipients, data_dir=data_dir, timeout_s=timeout_s))
