"""The soak's figures and its printed table.

Latency is from a job's enqueue (its ``send_at`` when scheduled) to its recipient's
accepted reply being recorded. "Between faults" keeps the recipients enqueued while
no fault was under way, about to strike (``LEAD_S``) or recovering (``RECOVERY_S``
after each ended): what the system does on a good minute of a bad day.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select

from dispatcher.domain.statuses import RecipientStatus
from dispatcher.persistence.db import Database
from dispatcher.persistence.models import Job, Recipient
from ops.soak.check import Checked, epoch
from ops.soak.faults import Fired

RECOVERY_S = 10.0
LEAD_S = 5.0
"""A job enqueued this long before a fault may still be waiting when it strikes."""


def _quantile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def figures(db: Database, fired: Sequence[Fired], started: float, ended: float) -> dict[str, Any]:
    """Throughput and latency, over the run and between faults."""
    with db.transaction() as session:
        rows = session.execute(
            select(func.coalesce(Job.send_at, Job.created_at), Recipient.updated_at)
            .join(Job, Job.id == Recipient.job_id)
            .where(Recipient.status == RecipientStatus.SENT)
        ).all()
    spans = [(f.began - LEAD_S, (f.ended or ended) + RECOVERY_S) for f in fired]
    latencies: list[float] = []
    quiet: list[float] = []
    last = started
    for enqueued, done in rows:
        at, finished = epoch(enqueued), epoch(done)
        latency = max(finished - at, 0.0)
        latencies.append(latency)
        last = max(last, finished)
        if not any(low <= at <= high for low, high in spans):
            quiet.append(latency)
    covered = _covered(spans, started, ended)
    quiet_s = max(ended - started - covered, 0.0)
    return {
        "sent": len(rows),
        "sent_per_s": round(len(rows) / max(last - started, 1e-9), 1),
        "p50_ms": _ms(_quantile(latencies, 0.50)),
        "p99_ms": _ms(_quantile(latencies, 0.99)),
        "between_faults": {
            "seconds": round(quiet_s, 1),
            "sent": len(quiet),
            "sent_per_s": round(len(quiet) / quiet_s, 1) if quiet_s > 0 else None,
            "p50_ms": _ms(_quantile(quiet, 0.50)),
            "p99_ms": _ms(_quantile(quiet, 0.99)),
        },
    }


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 1)


def _covered(spans: Sequence[tuple[float, float]], started: float, ended: float) -> float:
    """Seconds of [started, ended] inside any span."""
    total, reach = 0.0, started
    for low, high in sorted(spans):
        low, high = max(low, reach), min(high, ended)
        if high > low:
            total += high - low
            reach = high
    return total


def table(result: dict[str, Any], checked: Checked, fired: Sequence[Fired]) -> str:
    """The run as Markdown tables."""
    lines = [
        f"soak: seed {result['seed']}, {result['duration_s']:g} s of load, "
        f"{result['hosts']} host(s), {result['workers']} workers, "
        f"{result['load']['recipients_per_s']:g} recipients/s offered",
        "",
        "| fault | fired | seconds |",
        "|---|---|---|",
    ]
    counts: Counter[str] = Counter(f.kind for f in fired)
    seconds: dict[str, float] = dict.fromkeys(counts, 0.0)
    for f in fired:
        seconds[f.kind] += (f.ended or f.began) - f.began
    lines += [f"| {kind} | {counts[kind]} | {seconds[kind]:.1f} |" for kind in sorted(counts)]
    lines += ["", "| recipients | count |", "|---|---|"]
    lines += [f"| {status} | {n} |" for status, n in sorted(checked.by_status.items())]
    lines += [f"| (error code) {code} | {n} |" for code, n in sorted(checked.by_code.items())]
    lines += ["", "| invariant | checked | broken | holds |", "|---|---|---|---|"]
    for invariant in checked.invariants:
        mark = "yes" if invariant.holds else "**NO**"
        lines.append(f"| {invariant.name} | {invariant.checked} | {invariant.broken} | {mark} |")
    figures = result["figures"]
    quiet = figures["between_faults"]
    lines += [
        "",
        "| | sent | sent/s | p50 ms | p99 ms |",
        "|---|---|---|---|---|",
        f"| whole run | {figures['sent']} | {figures['sent_per_s']} | {figures['p50_ms']} | "
        f"{figures['p99_ms']} |",
        f"| between faults ({quiet['seconds']} s) | {quiet['sent']} | {quiet['sent_per_s']} | "
        f"{quiet['p50_ms']} | {quiet['p99_ms']} |",
        "",
        f"acknowledged jobs: {result['acknowledged']} ({result['acknowledged_by_kind']}); "
        f"requests given up: {result['given_up']}; attempts {checked.attempts}; "
        f"ledger {checked.ledger}; drained in {result['drain_s']} s",
    ]
    for invariant in checked.invariants:
        for example in invariant.examples:
            lines.append(f"  {invariant.name}: {example}")
    lines.append("verdict: " + ("every invariant holds" if checked.holds else "BROKEN"))
    return "\n".join(lines)
