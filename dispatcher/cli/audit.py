"""The audit trail and personal data: ``export`` it as CSV, ``purge`` old jobs, ``erase`` a number.

What whoever answers for the data uses (an auditor, a data-protection request).
Each command calls ``dispatcher.service.audit``; ``erase`` asks before acting.
"""

from __future__ import annotations

import datetime as dt
import sys

import click

from dispatcher.cli.common import (
    IsoTime,
    cli_actor,
    emit_json,
    friendly_errors,
    interactive,
    require_schema,
)
from dispatcher.errors import ConfigurationError


@click.command()
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

    require_schema()
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
        actor=cli_actor(),
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


@click.command()
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

    require_schema()
    svc = runtime.service()
    retention_days = days or svc.settings.retention_days
    if retention_days is None:
        raise ConfigurationError("DISPATCHER_RETENTION_DAYS is not set: pass --days N")
    report = audit.purge(svc.db, retention_days=retention_days, dry_run=dry_run)
    if as_json:
        emit_json(asdict(report))
        return
    verb = "would purge" if dry_run else "purged"
    click.echo(
        f"{verb} {report.jobs} jobs ({report.recipients} recipients) created before "
        f"{report.cutoff.isoformat()}"
        + ("" if dry_run else f"; {report.attempts} attempts and {report.events} events rewritten")
    )


@click.command()
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

    require_schema()
    if number == "-":
        number = sys.stdin.readline().strip()
        if not yes:
            raise click.UsageError("reading the number from stdin needs --yes")
    svc = runtime.service()
    region = svc.settings.default_region
    preview = audit.erase_preview(svc.db, number, default_region=region)
    shown = "…" + preview.number[-4:]
    if not yes:
        if not interactive():
            raise click.UsageError("erase cannot be undone: confirm with --yes")
        click.confirm(
            f"Erase the number ending {shown} from {preview.recipients} recipients "
            "everywhere? This cannot be undone",
            abort=True,
            err=True,
        )
    counts = audit.erase(svc.db, number, actor=cli_actor(), default_region=region)
    if as_json:
        emit_json(asdict(counts))
        return
    click.echo(
        f"erased the number ending {shown}: {counts.recipients} recipients, "
        f"{counts.attempts} attempts, {counts.events} history rows changed; "
        f"{counts.cancelled} waiting recipients cancelled; text removed from {counts.jobs} jobs"
    )
