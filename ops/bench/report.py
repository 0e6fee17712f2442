"""The pipeline benchmark's figures for people: Markdown tables (throughput, and CPU
per recipient by part of the machine) and a PNG chart.

Only reads the runs' dicts, so it can be changed without touching how they are
measured.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ops.bench.scenarios import MODES


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is missing."""
    return round(a / b, 2) if a and b else None


COLUMNS = (
    ("mode", 13, "mode"),
    ("recipients", 10, "recipients"),
    ("rec/s", 9, "recipients_per_s"),
    ("enqueue/s", 10, "enqueue_per_s"),
    ("p50 ms", 9, "p50_ms"),
    ("p99 ms", 9, "p99_ms"),
    ("peak MB", 8, "peak_worker_rss_mb"),
)


def table(runs: list[dict[str, Any]]) -> str:
    """The figures as a Markdown table (ours, baseline, limit, simulator per scenario)."""
    header = "| scenario | latency | " + " | ".join(name for name, _, _ in COLUMNS) + " |"
    lines = [header, "|" + "---|" * (len(COLUMNS) + 2)]
    for run in runs:
        for mode in MODES:
            if mode not in run:
                continue
            figures = {"mode": mode, **run[mode]}
            if mode == "limit":
                figures["mode"] = f"limit ({run['limit']['threads_per_process']}t)"
            cells = [str(figures.get(key, "")) for _, _, key in COLUMNS]
            lines.append(
                f"| {run['scenario']} | {run['latency_ms']:g} ms | " + " | ".join(cells) + " |"
            )
        lines.append(
            f"| {run['scenario']} | {run['latency_ms']:g} ms | ours/baseline "
            f"{run['ratios']['ours_over_baseline']} | ours/limit {run['ratios']['ours_over_limit']}"
            + " |"
            * (len(COLUMNS) - 1)
        )
    return "\n".join(lines)


CPU_GROUPS = ("producers", "workers", "postgresql", "redis", "simulator", "other", "machine")


def cpu_table(runs: list[dict[str, Any]]) -> str:
    """Where ours and the limit probe spent the machine's CPU: milliseconds per
    recipient, by part (the probe's "producers" is its bulk enqueue, in this process)."""
    header = "| scenario | latency | mode | " + " | ".join(CPU_GROUPS) + " |"
    lines = [header, "|" + "---|" * (len(CPU_GROUPS) + 3)]
    for run in runs:
        for mode in ("ours", "limit"):
            spent = run.get(mode, {}).get("cpu_ms_per_recipient")
            if not spent:
                continue
            cells = [str(spent.get(group, "")) for group in CPU_GROUPS]
            lines.append(
                f"| {run['scenario']} | {run['latency_ms']:g} ms | {mode} | "
                + " | ".join(cells)
                + " |"
            )
    return "\n".join(lines)


def chart(runs: list[dict[str, Any]], path: Path) -> None:
    """Recipients/s per scenario and mode, on a log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = MODES
    labels = [f"{r['scenario']}\n{r['latency_ms']:g} ms" for r in runs]
    width = 0.2
    figure, axes = plt.subplots(figsize=(9, 4.5))
    for i, mode in enumerate(modes):
        values = [r.get(mode, {}).get("recipients_per_s") or 0 for r in runs]
        axes.bar([x + (i - 1.5) * width for x in range(len(runs))], values, width, label=mode)
    axes.set_xticks(range(len(runs)), labels)
    axes.set_yscale("log")
    axes.set_ylabel("recipients / s (end to end)")
    axes.set_title("sms-dispatcher: ours, baseline, limit probe, simulator alone")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
