"""The retry policy for transient failures: how many attempts, how long between them."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter, capped, for up to ``max_attempts`` submissions.

    The delay before attempt n+1 is drawn from [d/2, d] where
    d = min(backoff_max_s, backoff_s x 2^(n-1)): half of it fixed so retries keep
    their spacing, half random so recipients that failed together (an outage)
    do not all come back in the same second.
    """

    max_attempts: int = 5
    backoff_s: float = 10.0
    backoff_max_s: float = 3600.0

    def exhausted(self, attempts_made: int) -> bool:
        """True when no further attempt is allowed after ``attempts_made``."""
        return attempts_made >= self.max_attempts

    def delay_s(self, attempts_made: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before the next attempt, after ``attempts_made`` attempts."""
        exponent = max(attempts_made - 1, 0)
        # Cap the exponent first: 2**n for large n is a huge int, not a float overflow.
        ceiling: float = min(self.backoff_max_s, self.backoff_s * float(2 ** min(exponent, 62)))
        return ceiling / 2 + (rng or random).uniform(0, ceiling / 2)
