"""The operator's commands: ``pause``, ``resume``, ``state``, ``retry`` and ``cancel``.

What the person on call uses when the gateway or a job misbehaves. Every
action is audited under ``cli_actor()``; a retry of ``unknown`` recipients,
which may send them twice (docs/design.md section 3), must be confirmed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import click

from dispatcher.cli.common import (
    IsoTime,
    cli_actor,
    emit_json,
    friendly_errors,
    interactive,
    require_schema,
)
from dispatcher.domain.statuses import RETRYABLE_STATUSES


def _print_control(control: dict[str, Any], as_json: bool) -> None:
    if as_json:
        emit_json(control)
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


@click.command()
@click.option("--reason", default="paused by an operator", show_default=True)
@click.option("--json", "as_json", is_flag=True)
@friendly_errors
def pause(reason: str, as_json: bool) -> None:
    """Stop every worker claiming work (calls in flight finish); survives restarts."""
    from dispatcher import runtime

    require_schema()
    _print_control(runtime.service().pause(actor=cli_actor(), detail=reason), as_json)


@click.command()
@click.option("--json", "as_json", is_flag=True)
@friendly_errors
def resume(as_json: bool) -> None:
    """End a pause (manual, LOGIN_INVALID or credit) and wake workers for waiting work."""
    from dispatcher import runtime

    require_schema()
    _print_control(runtime.service().resume(actor=cli_actor()), as_json)


@click.command()
@click.option("--json", "as_json", is_flag=True)
@friendly_errors
def state(as_json: bool) -> None:
    """Show whether dispatch is paused (and why), the circuit breaker's state, the last
    balance, and the live and consuming workers of each lane."""
    from dispatcher import runtime

    require_schema()
    service = runtime.service()
    control, lanes = service.control(), service.lanes_served()
    if as_json:
        emit_json(control | {"workers": lanes})
        return
    _print_control(control, as_json=False)
    for lane, served in lanes.items():
        line = f"workers {lane:<6} {served['alive']} alive, {served['consuming']} consuming"
        if not served["consuming"]:
            line += "  (nothing in this lane is sent)"
        click.echo(line)


@click.command()
@click.option("--job", "job_id", default=None, help="Only this job's recipients.")
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice([s.value for s in RETRYABLE_STATUSES]),
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
@click.option(
    "--valid-for",
    "valid_for_s",
    type=click.FloatRange(min=1, max=30 * 86400),
    default=None,
    help="A new validity in seconds, from now, for what is retried; without it "
    "recipients whose job's validity has ended stay as they are.",
)
@click.option(
    "--dry-run", is_flag=True, help="Queue nothing: list what would go and why the rest would not."
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
    valid_for_s: float | None,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Queue failed (or, confirmed, unknown) recipients again that can succeed; audited.

    Left out unless asked for: failures for good (INVALID_NUMBER, INVALID_REQUEST,
    NO_*, LOGIN_INVALID before a resume) unless --error-code names their code, and
    recipients whose validity ended unless --valid-for gives a new one. Retrying
    `unknown` recipients may send them twice: it needs --yes-may-double-send, or a yes
    at the prompt when run at a terminal. --dry-run shows all of it first.
    """
    from dispatcher import runtime
    from dispatcher.domain.numbers import normalise
    from dispatcher.errors import ConfirmationRequiredError

    require_schema()
    if job_id is None and not (error_code or since or until or number):
        raise click.UsageError(
            "say which recipients: --job, --error-code, --number, --since or --until"
        )
    svc = runtime.service()
    numbers = [normalise(number, svc.settings.default_region)] if number else None

    def run(confirmed: bool) -> Any:
        return svc.retry(
            actor=cli_actor(),
            job_id=job_id,
            statuses=statuses,
            error_code=error_code,
            since=since,
            until=until,
            numbers=numbers,
            confirm_unknown=confirmed,
            valid_for_s=valid_for_s,
            dry_run=dry_run,
        )

    try:
        result = run(confirm_unknown)
    except ConfirmationRequiredError as exc:
        if not interactive():
            raise ConfirmationRequiredError(f"{exc}: pass --yes-may-double-send") from None
        click.confirm(f"{exc}. Retry them anyway?", abort=True, err=True)
        result = run(True)
    plan = result.plan or {}
    if as_json:
        emit_json(
            {
                "retried": result.affected,
                "jobs": result.jobs,
                "dry_run": dry_run,
                "sample": plan.get("sample", []),
                "held_back": plan.get("held_back", {}),
            }
        )
        return
    verb = "would queue" if dry_run else "queued"
    click.echo(f"{verb} {result.affected} recipients again in {len(result.jobs)} jobs")
    if dry_run:
        _print_recipients(plan.get("sample", []), result.affected)
    for reason, group in plan.get("held_back", {}).items():
        click.echo(f"left {group['count']} {reason}: {group['why']}")
        if dry_run:
            _print_recipients(group["sample"], group["count"])


def _print_recipients(sample: Sequence[dict[str, Any]], total: int) -> None:
    for row in sample:
        code = row["error_code"] or "-"
        click.echo(
            f"  {row['job_id']}  {row['number']:<16} {row['status']:<8} {code:<20} "
            f"attempts {row['attempts']}  {_age(row['age_s'])} ago"
        )
    if total > len(sample):
        click.echo(f"  ... and {total - len(sample)} more")


def _age(seconds: float) -> str:
    """A duration as an operator reads it: 45s, 12m, 5h, 3d."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


@click.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True)
@friendly_errors
def cancel(job_id: str, as_json: bool) -> None:
    """Cancel a job's recipients that no worker has claimed yet; audited."""
    from dispatcher import runtime

    require_schema()
    result = runtime.service().cancel(job_id, actor=cli_actor())
    if as_json:
        emit_json({"cancelled": result.affected, "job": job_id})
        return
    click.echo(f"cancelled {result.affected} recipients of {job_id}")


@click.command()
@click.argument("job_id")
@click.option(
    "--as",
    "status",
    required=True,
    type=click.Choice(["sent", "failed"]),
    help="What the gateway's own records say became of it.",
)
@click.option("--reason", required=True, help="The evidence, in a few words (audited).")
@click.option(
    "--number",
    "numbers",
    multiple=True,
    help="Only this recipient (any format); repeatable. Default: every unknown one.",
)
@click.option("--gateway-id", default=None, help="The gateway's message ID, for one `sent`.")
@click.option("--json", "as_json", is_flag=True)
@friendly_errors
def settle(
    job_id: str,
    status: str,
    reason: str,
    numbers: Sequence[str],
    gateway_id: str | None,
    as_json: bool,
) -> None:
    """Settle a job's `unknown` recipients as sent or failed, from the gateway's records.

    `unknown` means the dispatcher could not tell whether the gateway sent it; once
    the vendor's delivery reports or account history say, record it here. Audited,
    with the reason in each recipient's history. See docs/operating.md, "Settle".
    """
    from dispatcher import runtime
    from dispatcher.domain.numbers import normalise

    require_schema()
    svc = runtime.service()
    region = svc.settings.default_region
    result = svc.settle(
        job_id,
        status=status,
        reason=reason,
        actor=cli_actor(),
        numbers=[normalise(n, region) for n in numbers] if numbers else None,
        gateway_message_id=gateway_id,
    )
    if as_json:
        emit_json({"settled": result.settled, "job": result.job, "status": str(result.status)})
        return
    click.echo(f"settled {result.settled} unknown recipients of {result.job} as {result.status}")


@click.command("acknowledge-unknown")
@click.option("--json", "as_json", is_flag=True)
@friendly_errors
def acknowledge_unknown(as_json: bool) -> None:
    """Mark the unknown recipients so far as seen; audited.

    The UnknownRecipients alert then clears until new ones appear. Nothing about the
    recipients changes: settle or retry them when the gateway's records say what
    became of them (docs/operating.md, "Settle").
    """
    from dispatcher import runtime

    require_schema()
    seen = runtime.service().acknowledge_unknown(actor=cli_actor())
    if as_json:
        emit_json({"acknowledged": seen})
        return
    click.echo(f"acknowledged {seen} unknown recipients; the alert waits for new ones")


@click.command()
@click.option("--json", "as_json", is_flag=True)
@friendly_errors
def balance(as_json: bool) -> None:
    """Ask the gateway for the account's credit balance now (one call), and keep it as
    the last balance `dispatcher state` shows."""
    from dispatcher import runtime

    require_schema(upgrade_sqlite=True)
    credit = runtime.service().check_balance()
    if as_json:
        emit_json({"balance": credit})
        return
    click.echo(f"balance {credit:g}")
