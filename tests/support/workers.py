"""Child processes of a test: real ``dispatcher worker`` processes, and the CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from support.polling import wait_until
from support.settings import DispatcherEnv

CLI_TIMEOUT_S = 120.0
WORKER_READY_TIMEOUT_S = 60.0
WORKER_STOP_TIMEOUT_S = 20.0
LOG_TAIL_LINES = 60


@dataclass
class WorkerProcess:
    """A real ``dispatcher worker`` child process and its log file."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        """Everything the worker has written so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last lines of the worker's log."""
        return "\n".join(self.log().splitlines()[-lines:])

    def is_ready(self) -> bool:
        """True once Celery has logged that this worker is ready."""
        if self.process.poll() is not None:
            raise AssertionError(
                f"worker {self.name} exited with {self.process.returncode} before it was "
                f"ready; log tail:\n{self.log_tail()}"
            )
        return " ready." in self.log()

    def stop(self) -> None:
        """SIGTERM (warm shutdown), then SIGKILL if it lingers."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=WORKER_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=WORKER_STOP_TIMEOUT_S)


@dataclass
class WorkerFactory:
    """Starts real worker processes for a test and stops them all at its end."""

    env: DispatcherEnv
    log_dir: Path
    workers: list[WorkerProcess] = field(default_factory=list)

    def start(
        self, count: int = 1, *, env: DispatcherEnv | None = None, concurrency: int = 4
    ) -> list[WorkerProcess]:
        """Start ``count`` workers at once and return when every one is ready."""
        started = []
        for _ in range(count):
            name = f"w{len(self.workers) + 1}"
            log_path = self.log_dir / f"worker-{name}.log"
            with log_path.open("wb") as log_file:
                process = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "dispatcher",
                        "worker",
                        "--loglevel",
                        "INFO",
                        "-c",
                        str(concurrency),
                        "-n",
                        f"{name}-{os.getpid()}@%h",
                    ],
                    env=(env or self.env).process_env(),
                    cwd=self.log_dir,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                )
            worker = WorkerProcess(name, process, log_path)
            self.workers.append(worker)
            started.append(worker)
        for worker in started:
            wait_until(
                worker.is_ready,
                WORKER_READY_TIMEOUT_S,
                interval_s=0.1,
                message=f"worker {worker.name} to be ready (log: {worker.log_path})",
            )
        return started

    def stop_all(self) -> None:
        """Stop every worker this factory started."""
        for worker in self.workers:
            if worker.process.poll() is None:
                worker.process.send_signal(signal.SIGTERM)
        for worker in self.workers:
            worker.stop()

    def log_tails(self) -> str:
        """The tail of every worker's log, for a failure report."""
        return "\n\n".join(
            f"--- worker {w.name} (pid {w.process.pid}, exit {w.process.poll()}) ---\n"
            + w.log_tail()
            for w in self.workers
        )


def run_cli(env: DispatcherEnv, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m dispatcher ARGS`` in a child process; capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "dispatcher", *args],
        env=env.process_env(),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )
