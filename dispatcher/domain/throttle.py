"""At most once per interval: for the warning an outage would otherwise repeat on
every request (a broker away while producers keep sending), so an operator's log on
a bad day says what is wrong once a minute, not a thousand times."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable


class Every:
    """``due()`` is true the first time, then again only ``interval_s`` after the last
    time it was true. Safe from any thread."""

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._last = -math.inf
        self._lock = threading.Lock()

    def due(self) -> bool:
        """Whether the interval has passed since the last true answer (and start it again)."""
        now = self._clock()
        with self._lock:
            if now - self._last < self.interval_s:
                return False
            self._last = now
            return True
