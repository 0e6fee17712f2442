"""The soak's faults: a seeded schedule, and the injector that fires it.

Every kind fires once, in an order the seed shuffles, before any fires twice; the
gaps and durations are drawn from the same seed, so a seed replays a run's faults.
Faults overlap when a gap is shorter than the fault before it: things fail together.
Each fault records when it began and ended (``Fired``), which the checker uses to
explain every ``unknown`` recipient.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ops.soak.stack import READ_TIMEOUT_S, Stack

log = logging.getLogger(__name__)

KINDS = (
    "worker_kill",
    "worker_stop",
    "redis_restart",
    "postgres_restart",
    "gateway_down",
    "gateway_slow",
    "gateway_hang",
    "gateway_drop",
    "credit",
    "primary_down",
)
UNKNOWN_CAPABLE = frozenset(
    {
        # A call in flight when its worker died, its reply hung or was dropped after
        # the gateway accepted, its connection was reset mid-request, or its outcome
        # could not be written before the submitting timeout.
        "worker_kill",
        "gateway_hang",
        "gateway_drop",
        "gateway_down",
        "primary_down",
        "postgres_restart",
        # A worker host cut from the gateway mid-call, or from the database after it.
        "partition_gateway",
        "partition_database",
    }
)
"""Faults that can leave a recipient ``unknown``: the gateway may have taken it."""


Action = Callable[[Stack, float, random.Random, "Injector"], str]
"""A fault: given the stack, how long, its dice and the injector; returns what it did."""


@dataclass(frozen=True)
class Planned:
    """A fault to fire ``at`` seconds into the run, lasting ``duration_s``."""

    at: float
    kind: str
    duration_s: float


@dataclass
class Fired:
    """A fault as it happened (times since the epoch)."""

    kind: str
    began: float
    ended: float | None = None
    detail: str = ""


def schedule(
    seed: int, duration_s: float, mean_gap_s: float, kinds: tuple[str, ...] = KINDS
) -> list[Planned]:
    """The faults of a run: every kind once (shuffled), then random kinds, a gap of
    ``mean_gap_s`` on average between starts, none in the first or last 5 s."""
    rng = random.Random(seed)
    order = list(kinds)
    rng.shuffle(order)
    planned: list[Planned] = []
    at = 5.0
    while at < duration_s - 5:
        kind = order[len(planned)] if len(planned) < len(order) else rng.choice(kinds)
        planned.append(Planned(round(at, 2), kind, round(rng.uniform(2.0, 6.0), 2)))
        at += rng.uniform(0.5, 1.5) * mean_gap_s
    return planned


@dataclass
class Injector:
    """Fires ``planned`` against ``stack`` from a thread, each fault on a thread of its
    own (so faults overlap), and heals everything at ``stop``."""

    stack: Stack
    planned: list[Planned]
    seed: int
    actions: dict[str, Action] = field(default_factory=lambda: dict(ACTIONS))
    """What each kind does (``ops.soak.hosts`` adds the partitions)."""
    healers: list[Callable[[], None]] = field(default_factory=list)
    """Run at ``stop`` beside ``heal`` (the partitions' own)."""
    fired: list[Fired] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    gateway_lock: threading.Lock = field(default_factory=threading.Lock)
    """Held while a fault changes a relay, so two gateway faults do not interleave."""

    def start(self, started: float) -> None:
        """Begin the schedule, counted from ``started`` (a ``time.time()``)."""
        thread = threading.Thread(target=self._run, args=(started,), name="injector", daemon=True)
        self._threads.append(thread)
        thread.start()

    def stop(self) -> None:
        """Fire nothing more, wait for the faults under way to end, heal everything."""
        self._stop.set()
        for thread in list(self._threads):
            thread.join(timeout=120)
        for healer in self.healers:
            healer()
        heal(self.stack)

    def _run(self, started: float) -> None:
        rng = random.Random(self.seed ^ 0x5EED)
        for planned in self.planned:
            if self._stop.wait(max(0.0, started + planned.at - time.time())):
                return
            fault = threading.Thread(
                target=self._fire, args=(planned, random.Random(rng.random())), daemon=True
            )
            self._threads.append(fault)
            fault.start()

    def _fire(self, planned: Planned, rng: random.Random) -> None:
        fired = Fired(planned.kind, time.time())
        with self._lock:
            self.fired.append(fired)
        try:
            fired.detail = self.actions[planned.kind](self.stack, planned.duration_s, rng, self)
        except Exception as exc:
            fired.detail = f"failed: {exc!r}"
            log.warning("fault %s failed", planned.kind, exc_info=True)
        fired.ended = time.time()


# --- the faults ----------------------------------------------------------------------------


def _worker_lost(graceful: bool) -> Action:
    """A random live worker killed (SIGKILL) or stopped warm (SIGTERM), and a new one
    started on its host, as a supervisor would."""

    def fault(stack: Stack, down_s: float, rng: random.Random, _: Injector) -> str:
        victims = stack.live_workers()
        if not victims:
            return "no live worker"
        victim = rng.choice(victims)
        if graceful:
            victim.stop()
        else:
            victim.kill()
        time.sleep(min(down_s, 2.0))
        stack.start_worker(victim.host)
        return f"{'SIGTERM' if graceful else 'SIGKILL'} {victim.name}"

    return fault


def _redis_restart(stack: Stack, down_s: float, _rng: random.Random, _: Injector) -> str:
    assert stack.redis is not None
    stack.redis.restart(down_s=min(down_s, 3.0))
    return "killed and started empty"


def _postgres_restart(stack: Stack, down_s: float, rng: random.Random, _: Injector) -> str:
    assert stack.pg is not None
    mode = rng.choice(("fast", "immediate"))
    stack.pg.restart(mode, down_s=min(down_s, 3.0))
    return f"pg_ctl stop -m {mode}"


def _gateway_down(stack: Stack, down_s: float, _rng: random.Random, injector: Injector) -> str:
    assert stack.primary is not None
    assert stack.backup is not None
    with injector.gateway_lock:
        stack.primary.down()
        stack.backup.down()
    time.sleep(down_s)
    with injector.gateway_lock:
        stack.primary.up()
        stack.backup.up()
    return "both gateway hosts refusing"


def _primary_down(stack: Stack, down_s: float, _rng: random.Random, injector: Injector) -> str:
    assert stack.primary is not None
    with injector.gateway_lock:
        stack.primary.down()
    time.sleep(down_s * 2)
    with injector.gateway_lock:
        stack.primary.up()
    return "primary gateway host refusing (failover to the backup)"


def _gateway_slow(stack: Stack, down_s: float, _rng: random.Random, _: Injector) -> str:
    # Slower than usual but inside the read timeout: a backlog, and no unknown.
    stack.configure(latency_ms=READ_TIMEOUT_S * 1000 * 0.6, latency_jitter_ms=0.0)
    time.sleep(down_s)
    stack.configure(latency_ms=stack.latency_ms, latency_jitter_ms=stack.latency_ms / 2)
    return f"replies {READ_TIMEOUT_S * 0.6:g} s late"


def _knobs(values: dict[str, object], normal: dict[str, object], what: str) -> Callable[..., str]:
    def fault(stack: Stack, down_s: float, _rng: random.Random, _: Injector) -> str:
        stack.configure(**values)
        time.sleep(down_s)
        stack.configure(**normal)
        return what

    return fault


ACTIONS: dict[str, Action] = {
    "worker_kill": _worker_lost(graceful=False),
    "worker_stop": _worker_lost(graceful=True),
    "redis_restart": _redis_restart,
    "postgres_restart": _postgres_restart,
    "gateway_down": _gateway_down,
    "primary_down": _primary_down,
    "gateway_slow": _gateway_slow,
    "gateway_hang": _knobs(
        {"hang_rate": 0.3, "hang_s": READ_TIMEOUT_S * 3, "hang_after_accept": True},
        {"hang_rate": 0.0},
        "30 % of requests accepted, then no reply",
    ),
    "gateway_drop": _knobs(
        {"drop_after_accept_rate": 0.3},
        {"drop_after_accept_rate": 0.0},
        "30 % of connections dropped after the gateway accepted",
    ),
    "credit": _knobs({"credit": 0}, {"credit": None}, "INSUFFICIENT_CREDIT, then credit again"),
}


def heal(stack: Stack) -> None:
    """Everything up and normal again: the gateway hosts, its knobs, the services."""
    assert stack.primary is not None
    assert stack.backup is not None
    stack.primary.up()
    stack.backup.up()
    if stack.pg is not None:
        stack.pg.ensure_running()
    if stack.redis is not None:
        stack.redis.ensure_running()
    stack.configure(
        hang_rate=0.0,
        drop_after_accept_rate=0.0,
        credit=None,
        latency_ms=stack.latency_ms,
        latency_jitter_ms=stack.latency_ms / 2,
    )
    while len(stack.live_workers()) < stack.workers_wanted:
        stack.start_worker(stack.worker_hosts[stack.started_workers % len(stack.worker_hosts)])
    stack.wait_for_workers()
