"""Per-key rate limits: a token bucket per API key name.

Each key may make ``burst`` requests at once, refilled at ``rate_per_s``. With a
Redis broker the bucket lives in Redis, updated by one Lua script (atomic, and
timed by the Redis server's clock), so every API process on every host shares
it; otherwise it lives in this process.

A limiter that cannot reach Redis lets the request through and says so in the
log: the limit protects the service, and refusing every send because the
wake-up channel is away would turn a Redis outage into a sending outage, which
the design otherwise avoids (the database is the schedule).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Protocol

import redis

from dispatcher.domain.throttle import Every

log = logging.getLogger(__name__)

REDIS_KEY_PREFIX = "dispatcher:ratelimit:"
# How often a Redis outage is logged while it lasts.
OUTAGE_LOG_INTERVAL_S = 60.0

# KEYS[1]: the bucket; ARGV: rate per second, burst. Returns {allowed, wait_s}.
# The state is the tokens left and when they were counted, as strings: Redis
# turns Lua numbers into integers on the way out and would lose the fractions.
_BUCKET_SCRIPT = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1])
local at = tonumber(state[2])
if tokens == nil or at == nil then
  tokens = burst
  at = now
end
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local allowed = 0
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 1)
return {allowed, tostring(wait)}
"""


class RateLimiter(Protocol):
    """Takes one request's token from a key's bucket."""

    def acquire(self, key: str) -> float:
        """0 when the request may go ahead; else the seconds until it may."""
        ...


def retry_after(wait_s: float) -> str:
    """A ``Retry-After`` value: whole seconds, at least 1."""
    return str(max(1, math.ceil(wait_s)))


class NoLimit:
    """Lets everything through (``DISPATCHER_API_RATE_PER_S=0``)."""

    def acquire(self, key: str) -> float:
        """Always 0."""
        return 0.0


class LocalTokenBucket:
    """Buckets in this process's memory, for brokers other than Redis."""

    def __init__(self, rate_per_s: float, burst: int) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}

    def acquire(self, key: str) -> float:
        """Take a token from ``key``'s bucket, or say how long until one is there."""
        now = time.monotonic()
        with self._lock:
            tokens, at = self._buckets.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - at) * self.rate_per_s)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate_per_s


class RedisTokenBucket:
    """Buckets in Redis, shared by every API process using the same Redis."""

    def __init__(self, client: redis.Redis, rate_per_s: float, burst: int) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._script = client.register_script(_BUCKET_SCRIPT)
        self._outage_log = Every(OUTAGE_LOG_INTERVAL_S)

    def acquire(self, key: str) -> float:
        """Take a token from ``key``'s bucket in Redis; 0 (let through) if Redis is away."""
        try:
            allowed, wait = self._script(
                keys=[REDIS_KEY_PREFIX + key], args=[self.rate_per_s, self.burst]
            )
        except redis.RedisError as exc:
            if self._outage_log.due():
                log.warning(
                    "rate limit not applied: Redis unavailable (%s); requests pass unlimited",
                    type(exc).__name__,
                )
            return 0.0
        if int(allowed):
            return 0.0
        return float(wait.decode() if isinstance(wait, bytes) else wait)
