"""The production stack of a soak, as a user deploys it, on private services.

PostgreSQL and Redis of its own (``ops.soak.services``: never the machine's shared
ones, since the soak restarts and flushes them), the gateway simulator behind two
relays (the primary and the backup gateway host, ``ops.soak.relay``), worker
processes (each sweeps, as in production), and ``dispatcher serve`` for the HTTP
producers. Every process is a real ``python -m dispatcher`` child with the same
``DISPATCHER_*`` settings; ``hosts`` runs each in a network namespace of its own
(``ops.soak.hosts``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import requests

from ops.soak.relay import Relay
from ops.soak.services import PrivatePostgres, PrivateRedis, spare_port

SIM_USER = "soak-user"
SIM_PASSWORD = "soak-pass-not-a-secret"
# Short gateway timeouts end an ambiguous call quickly; the submitting timeout is the
# smallest the settings accept for them: 2 x (1 + 2) + 10 < 17 (docs/operating.md).
SETTINGS = {
    "GATEWAY_ALLOW_HTTP": "true",
    "GATEWAY_CONNECT_TIMEOUT_S": "1",
    "GATEWAY_READ_TIMEOUT_S": "2",
    "SUBMITTING_TIMEOUT_S": "17",
    "SWEEP_INTERVAL_S": "0.5",
    "RETRY_BACKOFF_S": "0.5",
    "RETRY_BACKOFF_MAX_S": "2",
    "MAX_ATTEMPTS": "60",
    "BREAKER_PROBE_S": "1",
    "BREAKER_PROBE_MAX_S": "2",
    "CREDIT_CHECK_INTERVAL_S": "1",
    "WORKER_CONCURRENCY": "4",
    "HEARTBEAT_INTERVAL_S": "2",
    "MAX_RECIPIENTS_PER_JOB": "1000",
    "DATABASE_POOL_SIZE": "8",
}
# The simulator refuses these numbers (INVALID_NUMBER): never retried, never sent.
REFUSED = tuple(f"4477009999{i:02d}" for i in range(50))
SUBMITTING_TIMEOUT_S = float(SETTINGS["SUBMITTING_TIMEOUT_S"])
HEARTBEAT_INTERVAL_S = float(SETTINGS["HEARTBEAT_INTERVAL_S"])
READ_TIMEOUT_S = float(SETTINGS["GATEWAY_READ_TIMEOUT_S"])
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0


class StackError(RuntimeError):
    """A part of the stack did not start or answer."""


@dataclass
class Child:
    """A ``python -m dispatcher`` child process and its log."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    host: str = "local"
    node: str = ""
    """A worker's Celery node name (its heartbeat row's name)."""

    def log_tail(self, lines: int = 30) -> str:
        """The end of its log."""
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    @property
    def alive(self) -> bool:
        """Whether it still runs."""
        return self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: no shutdown, nothing recorded, nothing acknowledged."""
        if self.alive:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=STOP_TIMEOUT_S)

    def stop(self) -> None:
        """SIGTERM (a warm shutdown), then SIGKILL if it lingers."""
        if self.alive:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class Stack:
    """Everything a soak runs, started by ``start`` and stopped by ``close``."""

    workdir: Path
    seed: int
    workers_wanted: int = 2
    latency_ms: float = 20.0
    wrap: Callable[[str, list[str]], list[str]] = field(default=lambda _host, argv: argv)
    """Turns a command into the one run on a host (a network namespace); identity
    on one host."""
    worker_hosts: Sequence[str] = ("local",)
    addresses: dict[str, str] = field(default_factory=dict)
    """Where each service listens (``db``, ``broker``, ``gateway``, ``api``); loopback
    by default."""
    pg: PrivatePostgres | None = None
    redis: PrivateRedis | None = None
    simulator: Child | None = None
    primary: Relay | None = None
    backup: Relay | None = None
    api: Child | None = None
    api_url: str = ""
    control_url: str = ""
    key_name: str = "soak-producer"
    token: str = ""
    workers: list[Child] = field(default_factory=list)
    started_workers: int = 0
    _logs: list[IO[bytes]] = field(default_factory=list)

    # --- starting ---------------------------------------------------------------------

    def start(self) -> None:
        """PostgreSQL, Redis, the simulator and its relays, the schema, a producer key,
        ``serve`` and the workers, each answering before the next starts."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        db_host = self.addresses.get("db", "127.0.0.1")
        self.pg = PrivatePostgres.create(host=db_host)
        self.redis = PrivateRedis.create(host=self.addresses.get("broker", db_host))
        self._start_simulator()
        self.cli("migrate")
        created = json.loads(self.cli("keys", "create", self.key_name, "--json").stdout)
        self.token = str(created["token"])
        self._start_api()
        for index in range(self.workers_wanted):
            self.start_worker(self.worker_hosts[index % len(self.worker_hosts)])
        self.wait_for_workers()

    def env(self) -> dict[str, str]:
        """The process environment every dispatcher process of the soak runs with."""
        assert self.pg is not None
        assert self.redis is not None
        assert self.primary is not None
        assert self.backup is not None
        gateway = self.addresses.get("gateway", "127.0.0.1")
        values = SETTINGS | {
            "DATABASE_URL": self.pg.url,
            "BROKER_URL": self.redis.url,
            "DATA_DIR": str(self.workdir / "data"),
            "SETTINGS_FILE": os.devnull,
            "GATEWAY_URL": f"http://{gateway}:{self.primary.port}/smsgateway/",
            "GATEWAY_BACKUP_URL": f"http://{gateway}:{self.backup.port}/smsgateway/",
            "GATEWAY_USERNAME": SIM_USER,
            "GATEWAY_PASSWORD": SIM_PASSWORD,
        }
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCHER_")}
        return inherited | {f"DISPATCHER_{k}": v for k, v in values.items()}

    def _spawn(self, name: str, host: str, argv: list[str]) -> Child:
        """Start ``argv`` on ``host`` (``wrap``), its output to ``name``.log."""
        log_path = self.workdir / f"{name}.log"
        log_file = log_path.open("ab")
        self._logs.append(log_file)
        process = subprocess.Popen(
            self.wrap(host, argv),
            env=self.env() if self.primary is not None else None,
            cwd=self.workdir,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        return Child(name, process, log_path, host)

    def _start_simulator(self) -> None:
        # Only the relays and this process reach the simulator itself, on loopback.
        gateway, sim_port = "127.0.0.1", spare_port()
        argv = [
            sys.executable,
            "-m",
            "dispatcher",
            "gateway-sim",
            "--host",
            gateway,
            "--port",
            str(sim_port),
            "--username",
            SIM_USER,
            "--password",
            SIM_PASSWORD,
            "--latency-ms",
            f"{self.latency_ms:g}",
            "--latency-jitter-ms",
            f"{self.latency_ms / 2:g}",
            "--seed",
            str(self.seed),
            "--log-level",
            "WARNING",
        ]
        for number in REFUSED:
            argv += ["--number-rule", f"{number}=INVALID_NUMBER"]
        self.simulator = self._spawn("simulator", "local", argv)
        self.control_url = f"http://{gateway}:{sim_port}/_sim"
        _wait(
            lambda: _answers(self.control_url + "/health"), "the gateway simulator", self.simulator
        )
        host = self.addresses.get("gateway", "127.0.0.1")
        self.primary = Relay((gateway, sim_port), listen_host=host).start()
        self.backup = Relay((gateway, sim_port), listen_host=host).start()

    def _start_api(self) -> None:
        api_host = self.addresses.get("api", "127.0.0.1")
        port = spare_port()
        argv = [sys.executable, "-m", "dispatcher", "serve", "--host", api_host]
        self.api = self._spawn("api", "local", [*argv, "--port", str(port)])
        self.api_url = f"http://{api_host}:{port}"
        _wait(lambda: _answers(self.api_url + "/healthz"), "dispatcher serve", self.api)

    def start_worker(self, host: str = "local") -> Child:
        """One more worker process (ready once its log says so: ``wait_for_workers``)."""
        self.started_workers += 1
        name = f"worker-{self.started_workers}"
        argv = [sys.executable, "-m", "dispatcher", "worker", "--loglevel", "INFO"]
        node = f"soak-{self.started_workers}-{os.getpid()}@{host}"
        child = self._spawn(name, host, [*argv, "-n", node])
        child.node = node
        self.workers.append(child)
        return child

    def wait_for_workers(self) -> None:
        """Return once every live worker has logged that it is ready."""
        for worker in self.live_workers():
            _wait(lambda w=worker: " ready." in _read(w.log_path), f"{worker.name}", worker)  # type: ignore[misc]

    def live_workers(self) -> list[Child]:
        """The workers still running."""
        return [w for w in self.workers if w.alive]

    # --- the simulator ------------------------------------------------------------------

    def configure(self, **knobs: object) -> None:
        """Change the simulator's knobs (``/_sim/config``)."""
        reply = requests.post(self.control_url + "/config", json=knobs, timeout=10)
        reply.raise_for_status()

    def ledger(self) -> list[dict[str, Any]]:
        """Every recipient the gateway accepted."""
        reply = requests.get(self.control_url + "/ledger", timeout=60)
        reply.raise_for_status()
        entries: list[dict[str, Any]] = reply.json()
        return entries

    def gateway_stats(self) -> dict[str, Any]:
        """The simulator's request counts."""
        reply = requests.get(self.control_url + "/stats", timeout=10)
        reply.raise_for_status()
        stats: dict[str, Any] = reply.json()
        return stats

    # --- commands -------------------------------------------------------------------------

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``python -m dispatcher ARGS`` with the stack's settings (an operator's command)."""
        done = subprocess.run(
            [sys.executable, "-m", "dispatcher", *args],
            env=self.env() if self.primary is not None else None,
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if check and done.returncode != 0:
            raise StackError(f"dispatcher {' '.join(args)}: {done.stderr.strip()}")
        return done

    # --- stopping -------------------------------------------------------------------------

    def close(self) -> None:
        """Stop everything and delete the private services' files."""
        for child in [*self.workers, self.api, self.simulator]:
            if child is not None:
                child.stop()
        for relay in (self.primary, self.backup):
            if relay is not None:
                relay.close()
        for server in (self.redis, self.pg):
            if server is not None:
                server.destroy()
        for log_file in self._logs:
            log_file.close()


def _read(path: Path) -> str:
    with contextlib.suppress(OSError):
        return path.read_text(errors="replace")
    return ""


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def _wait(predicate: Callable[[], bool], what: str, child: Child | None = None) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not predicate():
        if child is not None and not child.alive:
            raise StackError(f"{what} exited ({child.process.returncode}):\n{child.log_tail()}")
        if time.monotonic() > deadline:
            raise StackError(f"{what} did not answer in {READY_TIMEOUT_S:g} s")
        time.sleep(0.1)
