"""Several hosts on one machine: network namespaces for ``python -m ops.soak --hosts``.

Three hosts share a bridge (``soakbr0``, 10.77.0.0/24):

- the database host, this machine's own namespace: PostgreSQL on 10.77.0.1, Redis
  on 10.77.0.11 (an address of its own, so a partition can cut one and not the
  other), the gateway's two hosts (the relays) on 10.77.0.21, ``serve``, the
  producers and the simulator;
- two worker hosts, namespaces ``soak-w1`` (10.77.0.3) and ``soak-w2`` (10.77.0.4),
  each running workers that reach everything over their own link.

A partition is a blackhole route on one worker host to the address it cuts (more
specific than the link's own): its packets vanish, as on a real network, so a call
or a query in flight hangs rather than failing fast. Healing deletes the route.
Everything needs iproute2 and the privilege to make namespaces; ``unavailable()``
says why not when it cannot.
"""

from __future__ import annotations

import random
import subprocess
import time
from collections.abc import Callable

from ops.soak.faults import Injector
from ops.soak.stack import Stack

BRIDGE = "soakbr0"
DB, BROKER, GATEWAY = "10.77.0.1", "10.77.0.11", "10.77.0.21"
WORKER_HOSTS = {"soak-w1": "10.77.0.3", "soak-w2": "10.77.0.4"}
CUTS = {"gateway": (GATEWAY,), "database": (DB,), "broker": (BROKER,)}
PARTITIONS = tuple(f"partition_{name}" for name in CUTS)
"""The fault kinds this module adds: a worker host cut from one service for a while."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def unavailable() -> str | None:
    """Why namespaces cannot be made here, or None when they can."""
    probe = "soak-probe"
    try:
        made = _ip("netns", "add", probe, check=False)
    except FileNotFoundError:
        return "iproute2's ip is not installed"
    if made.returncode != 0:
        return f"cannot make a network namespace ({made.stderr.strip() or 'no privilege'})"
    _ip("netns", "del", probe, check=False)
    return None


def create() -> None:
    """The bridge, its addresses and the worker hosts (after removing any left over)."""
    destroy()
    _ip("link", "add", BRIDGE, "type", "bridge")
    _ip("addr", "add", f"{DB}/24", "dev", BRIDGE)
    for extra in (BROKER, GATEWAY):
        _ip("addr", "add", f"{extra}/32", "dev", BRIDGE)
    _ip("link", "set", BRIDGE, "up")
    for index, (name, address) in enumerate(WORKER_HOSTS.items(), start=1):
        _ip("netns", "add", name)
        outside = f"soakv{index}"
        _ip("link", "add", outside, "type", "veth", "peer", "name", "eth0", "netns", name)
        _ip("link", "set", outside, "master", BRIDGE, "up")
        _ip("-n", name, "addr", "add", f"{address}/24", "dev", "eth0")
        _ip("-n", name, "link", "set", "eth0", "up")
        _ip("-n", name, "link", "set", "lo", "up")


def destroy() -> None:
    """Remove the worker hosts and the bridge (quietly: some may not exist)."""
    for name in WORKER_HOSTS:
        _ip("netns", "del", name, check=False)
    _ip("link", "del", BRIDGE, check=False)


def place(stack: Stack) -> None:
    """Put ``stack``'s services on the database host's addresses and its workers on the
    worker hosts (round robin)."""
    stack.addresses = {"db": DB, "broker": BROKER, "gateway": GATEWAY, "api": DB}
    stack.worker_hosts = tuple(WORKER_HOSTS)
    stack.wrap = lambda host, argv: (
        ["ip", "netns", "exec", host, *argv] if host in WORKER_HOSTS else argv
    )


def cut(host: str, service: str) -> None:
    """Partition worker ``host`` from ``service`` (gateway, database or broker)."""
    for address in CUTS[service]:
        _ip("-n", host, "route", "replace", "blackhole", f"{address}/32")


def heal(host: str, service: str) -> None:
    """End a partition: the route to ``service`` goes over the link again."""
    for address in CUTS[service]:
        _ip("-n", host, "route", "del", "blackhole", f"{address}/32", check=False)


def heal_all() -> None:
    """End every partition."""
    for host in WORKER_HOSTS:
        for service in CUTS:
            heal(host, service)


def _partition(service: str) -> Callable[[Stack, float, random.Random, Injector], str]:
    def fault(stack: Stack, down_s: float, rng: random.Random, _: Injector) -> str:
        host = rng.choice(sorted({w.host for w in stack.live_workers()} or set(WORKER_HOSTS)))
        cut(host, service)
        time.sleep(down_s)
        heal(host, service)
        return f"{host} cut from the {service}"

    return fault


ACTIONS = {f"partition_{service}": _partition(service) for service in CUTS}
