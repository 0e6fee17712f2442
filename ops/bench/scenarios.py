"""What the pipeline benchmark runs: the workloads (jobs of numbers and a text) and
the modes that run each.

Kept apart from the runners so that ``ops.bench.steady`` and the report can name a
scenario or a mode without importing the processes and services behind them.
"""

from __future__ import annotations

from dataclasses import dataclass

MODES = ("ours", "baseline", "limit", "simulator")
Job = tuple[list[str], str]


@dataclass(frozen=True)
class Scenario:
    """One workload: its jobs (numbers, text)."""

    name: str
    jobs: list[Job]

    @property
    def recipients(self) -> int:
        return sum(len(numbers) for numbers, _ in self.jobs)

    def sample(self, recipients: int) -> list[Job]:
        """The first ``recipients`` recipients of the same data, as jobs."""
        taken: list[Job] = []
        left = recipients
        for numbers, message in self.jobs:
            if left <= 0:
                break
            taken.append((numbers[:left], message))
            left -= len(taken[-1][0])
        return taken


def bulk(jobs: int, per_job: int) -> Scenario:
    """``jobs`` jobs of ``per_job`` recipients, one text each (E.164, as bulk lists are)."""
    return Scenario(
        "bulk",
        [
            (
                [f"+4477009{i % 100_000:05d}" for i in range(per_job)],
                f"Offer {j}: 20% off everything this weekend. Reply STOP to opt out",
            )
            for j in range(jobs)
        ],
    )


def transactional(jobs: int) -> Scenario:
    """``jobs`` single-recipient jobs, each with its own text."""
    return Scenario(
        "transactional",
        [([f"+4477009{i % 100_000:05d}"], f"Your code is {i:06d}") for i in range(jobs)],
    )
