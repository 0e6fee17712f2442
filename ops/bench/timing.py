"""The enqueue-to-accepted figures every benchmark mode reads from its own table."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def timing_query(table: str, *, done_column: str, status: str = "sent") -> str:
    """SQL for the first enqueue, the last acceptance and the p50/p99 in between."""
    span = f"{done_column} - created_at"
    return (
        f"SELECT min(created_at), max({done_column}), "
        f"percentile_cont(0.5) WITHIN GROUP (ORDER BY {span}), "
        f"percentile_cont(0.99) WITHIN GROUP (ORDER BY {span}) "
        f"FROM {table} WHERE status = '{status}'"
    )


def timing(row: Sequence[Any], by_status: dict[str, int]) -> dict[str, Any]:
    """The figures from a ``timing_query`` row and the counts per status."""
    return {
        "by_status": by_status,
        "first_created_at": row[0],
        "last_sent_at": row[1],
        "p50_s": row[2].total_seconds() if row[2] is not None else None,
        "p99_s": row[3].total_seconds() if row[3] is not None else None,
    }
