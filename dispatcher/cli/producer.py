"""The producer's commands: ``send`` queues a message, ``status`` and ``jobs`` follow it.

What an application or a person sending SMS by hand uses; each call goes
through the service (docs/design.md section 6), never the store.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import click

from dispatcher.cli.common import IsoTime, emit_json, friendly_errors, require_schema
from dispatcher.domain.lanes import LANE_NAMES
from dispatcher.domain.numbers import normalise
from dispatcher.domain.statuses import RecipientStatus


@click.command()
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
    type=click.Choice(LANE_NAMES),
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

    require_schema(upgrade_sqlite=True)

    numbers = [n for item in to for n in item.split(",")]
    service = runtime.service()
    request = service.send_request(
        numbers,
        text,
        sender=sender,
        maxconcat=maxconcat,
        kind=kind,
        send_at=send_at,
        priority=priority,
        valid_for_s=valid_for_s,
        reference=reference,
    )
    result = service.enqueue_request(request, actor="cli")
    if result.batches and runtime.unserved_lane_news(request.priority):
        # On stderr: a script reading the id from stdout still gets only the id.
        click.echo(
            f"warning: no live worker consumes the {request.priority} lane; the job waits "
            "until one does (`dispatcher worker`; `dispatcher state` lists them)",
            err=True,
        )
    if as_json:
        emit_json(
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


@click.command()
@click.argument("job_id")
@click.option(
    "--limit",
    default=100,
    show_default=True,
    type=click.IntRange(min=0),
    help="Recipients listed (0: all); --json always gives all.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the job as JSON.")
@friendly_errors
def status(job_id: str, limit: int, as_json: bool) -> None:
    """Show a job and each recipient's status, attempts, gateway message ID or error,
    and when one waiting to retry is next tried."""
    from dispatcher import runtime

    require_schema()

    view = runtime.service().job_view(job_id)
    if as_json:
        emit_json(view)
        return
    counts = ", ".join(f"{k} {v}" for k, v in sorted(view["counts"].items()))
    click.echo(f"job {view['id']}  {view['status']}  ({counts})")
    click.echo(
        f"created {view['created_at']}  kind {view['kind']}  priority {view['priority']}  "
        f"parts {view['parts']}  credits {view['credits']} (estimated)"
    )
    if view["send_at"] or view["expires_at"]:
        click.echo(f"send at {view['send_at'] or 'once queued'}  expires {view['expires_at']}")
    if view["reference"]:
        click.echo(f"reference {view['reference']}")
    recipients = view["recipients"]
    shown = recipients if limit == 0 else recipients[:limit]
    click.echo(f"  {'number':<16} {'status':<11} {'tries':>5}  gateway ID, or error")
    for r in shown:
        detail = r["gateway_message_id"] or r["error_code"] or ""
        if r["status"] == "retry_wait" and r["next_attempt_at"]:
            detail = f"{detail}; next attempt {r['next_attempt_at']}".lstrip("; ")
        click.echo(f"  {r['number']:<16} {r['status']:<11} {r['attempts']:>5}  {detail}")
    if len(shown) < len(recipients):
        click.echo(
            f"  ... and {len(recipients) - len(shown)} more: --limit 0 lists all, --json "
            "gives every field"
        )


@click.command()
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 1000))
@click.option("--number", default=None, help="Only jobs with this number (any format).")
@click.option(
    "--status",
    "status_",
    default=None,
    type=click.Choice([s.value for s in RecipientStatus]),
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

    require_schema()

    svc = runtime.service()
    wanted = normalise(number, svc.settings.default_region) if number else None
    rows = svc.list_jobs(
        limit=limit,
        number=wanted,
        status=RecipientStatus(status_) if status_ else None,
        reference=reference.strip() if reference else None,
    )
    if as_json:
        emit_json(rows)
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
