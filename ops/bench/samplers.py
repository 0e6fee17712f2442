"""What a run costs the machine, sampled while it runs: peak RSS of process trees and
CPU seconds by part of the machine (psutil, every ``SAMPLE_INTERVAL_S``).

Used as context managers around the timed part of a run, so the figures cover
exactly what the clock covers.
"""

from __future__ import annotations

import os
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import psutil

SAMPLE_INTERVAL_S = 0.2


# --- memory ------------------------------------------------------------------------


class RssSampler:
    """Samples the RSS of process trees (a process and its children) in a thread."""

    def __init__(self, pids: Sequence[int]) -> None:
        self.pids = list(pids)
        self.peak_tree_bytes = 0
        self.peak_total_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _tree_rss(self, pid: int) -> int:
        try:
            root = psutil.Process(pid)
            processes = [root, *root.children(recursive=True)]
        except psutil.Error:
            return 0
        total = 0
        for process in processes:
            try:
                total += process.memory_info().rss
            except psutil.Error:
                continue
        return total

    def _run(self) -> None:
        while True:
            trees = [self._tree_rss(pid) for pid in self.pids]
            self.peak_tree_bytes = max(self.peak_tree_bytes, *trees, 0)
            self.peak_total_bytes = max(self.peak_total_bytes, sum(trees))
            if self._stop.wait(SAMPLE_INTERVAL_S):
                return

    def figures(self) -> dict[str, float]:
        return {
            "peak_worker_rss_mb": round(self.peak_tree_bytes / 2**20, 1),
            "peak_all_workers_rss_mb": round(self.peak_total_bytes / 2**20, 1),
        }


# --- CPU ---------------------------------------------------------------------------


class CpuSampler:
    """CPU seconds spent during a run, by part of the machine: PostgreSQL, Redis, the
    simulator, the dispatcher workers, the producers (this process's other children)
    and everything else. A thread polls every process's counters; a process that
    ends between two polls loses at most one interval."""

    def __init__(self, *, workers: Sequence[int], simulator: int | None) -> None:
        self.workers = list(workers)
        self.simulator = simulator
        self.first: dict[int, float] = {}
        self.last: dict[int, tuple[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)
        self._machine = psutil.cpu_times()
        self._started = time.monotonic()

    def __enter__(self) -> CpuSampler:
        self._poll(first=True)
        self._machine = psutil.cpu_times()
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self._poll(first=False)
        machine = psutil.cpu_times()
        self.machine_busy_s = sum(
            getattr(machine, f) - getattr(self._machine, f) for f in ("user", "system", "nice")
        )
        self.elapsed_s = time.monotonic() - self._started

    def _group(self, process: psutil.Process, trees: dict[int, str]) -> str:
        name = process.name()
        if name.startswith("postgres"):
            return "postgresql"
        if name.startswith("redis"):
            return "redis"
        for ancestor in [process, *process.parents()]:
            if ancestor.pid in trees:
                return trees[ancestor.pid]
        return "other"

    def _poll(self, *, first: bool) -> None:
        trees = dict.fromkeys(self.workers, "workers")
        if self.simulator is not None:
            trees[self.simulator] = "simulator"
        trees[os.getpid()] = "producers"
        for process in psutil.process_iter():
            try:
                with process.oneshot():
                    times = process.cpu_times()
                    used = times.user + times.system
                    group = self._group(process, trees)
            except psutil.Error:
                continue
            if first:
                self.first[process.pid] = used
            self.last[process.pid] = (group, used)

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_INTERVAL_S):
            self._poll(first=False)

    def figures(self, recipients: int) -> dict[str, Any]:
        """CPU seconds per group, and milliseconds of it per recipient."""
        spent: dict[str, float] = defaultdict(float)
        for pid, (group, used) in self.last.items():
            spent[group] += used - self.first.get(pid, 0.0)
        spent["machine"] = self.machine_busy_s
        per = max(recipients, 1)
        return {
            "cpu_s": {k: round(v, 2) for k, v in sorted(spent.items())},
            "cpu_ms_per_recipient": {k: round(1000 * v / per, 3) for k, v in sorted(spent.items())},
            "cpu_elapsed_s": round(self.elapsed_s, 2),
        }
