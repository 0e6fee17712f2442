"""Priority lanes: their names in claim order and the Celery queues that wake them."""

from __future__ import annotations

import enum

from dispatcher.errors import InvalidOptionError

# Celery queue names, stable because workers and producers on different hosts and
# versions must agree on them. Each priority lane has its own wake-up queue; the
# normal lane keeps the original name, so workers of earlier versions still serve it.
QUEUE_DISPATCH = "dispatcher.dispatch"
QUEUE_DISPATCH_HIGH = "dispatcher.dispatch.high"
QUEUE_DISPATCH_BULK = "dispatcher.dispatch.bulk"
LANE_NAMES = ("high", "normal", "bulk")
"""Priority lanes in claim order: a batch's ``lane`` column is the index here."""
LANE_NUMBERS: tuple[int, ...] = tuple(range(len(LANE_NAMES)))
"""Every ``batches.lane`` value, in claim order."""
LANE_QUEUES = {"high": QUEUE_DISPATCH_HIGH, "normal": QUEUE_DISPATCH, "bulk": QUEUE_DISPATCH_BULK}
# Completion webhooks travel apart from dispatch, so a stalled receiver never holds
# a thread that a claim is waiting for.
QUEUE_WEBHOOKS = "dispatcher.webhooks"


class Priority(enum.StrEnum):
    """Which lane a job's batches are claimed in: ``high`` before ``normal`` before ``bulk``."""

    HIGH = "high"
    NORMAL = "normal"
    BULK = "bulk"

    @property
    def lane(self) -> int:
        """The ``batches.lane`` value: 0 high, 1 normal, 2 bulk (the claim order)."""
        return LANE_NAMES.index(self.value)

    @property
    def queue(self) -> str:
        """The Celery queue that carries this lane's wake-ups."""
        return LANE_QUEUES[self.value]

    @classmethod
    def of_lane(cls, lane: int) -> Priority:
        """The priority of a ``batches.lane`` value."""
        return cls(LANE_NAMES[lane])


def check_priority(priority: object) -> Priority:
    """The Priority named by ``priority``, or InvalidOptionError listing the choices."""
    if isinstance(priority, Priority):
        return priority
    if isinstance(priority, str):
        try:
            return Priority(priority.strip().lower())
        except ValueError:
            pass
    choices = ", ".join(p.value for p in Priority)
    raise InvalidOptionError(f"priority must be one of {choices}, got {priority!r}")
