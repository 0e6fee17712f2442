"""Per-process limits on calls to the gateway: how many at once, how many per second."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class CallLimiter:
    """A semaphore for calls in flight and a token bucket for calls per second.

    Taken *before* a batch is claimed, never between the claim and the HTTP
    call: time spent waiting here must not count against the submitting
    timeout, or the sweeper could call a batch `unknown` that was never sent.
    Zero disables a limit.
    """

    def __init__(
        self,
        *,
        max_in_flight: int = 0,
        max_per_second: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._slots = threading.BoundedSemaphore(max_in_flight) if max_in_flight > 0 else None
        self._rate = max_per_second
        # A burst of one second's worth at most, so a quiet spell does not bank
        # a flood for later.
        self._capacity = max(1.0, max_per_second)
        self._tokens = self._capacity
        self._clock = clock
        self._sleep = sleep
        self._refilled = clock()
        self._lock = threading.Lock()

    def _take_token(self) -> None:
        while True:
            with self._lock:
                now = self._clock()
                self._tokens = min(
                    self._capacity, self._tokens + (now - self._refilled) * self._rate
                )
                self._refilled = now
                if self._tokens >= 1:
                    self._tokens -= 1
                    return
                wait_s = (1 - self._tokens) / self._rate
            self._sleep(wait_s)

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one call's place for the duration of the block."""
        self.acquire()
        try:
            yield
        finally:
            self.release()

    @property
    def unlimited(self) -> bool:
        """Neither limit is set: places need not be taken one at a time."""
        return self._slots is None and self._rate <= 0

    def acquire(self) -> None:
        """Take one call's place (``slot`` split, for a call handed to another thread)."""
        if self._slots is not None:
            self._slots.acquire()
        try:
            if self._rate > 0:
                self._take_token()
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        """Give back a place ``acquire`` took."""
        if self._slots is not None:
            self._slots.release()
