"""Waiting for a condition: polling, never sleeping a fixed time and hoping."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T | None],
    timeout_s: float,
    *,
    interval_s: float = 0.05,
    message: str = "condition",
) -> T:
    """Poll ``predicate`` until it returns something truthy, and return that.

    Fails with ``message`` (and the last value seen) when ``timeout_s`` passes first.
    """
    deadline = time.monotonic() + timeout_s
    last: T | None = None
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {message}: {last!r}")
        time.sleep(interval_s)
