"""Private PostgreSQL and Redis servers that a test or the soak may kill, restart
and flush.

The fault tests and ``ops.soak`` never touch the machine's shared services (5432,
6379): each starts its own servers on spare ports, in a temporary directory, and
stops them at the end. A missing binary is an error with a message saying what to
install, never a skip.

PostgreSQL refuses to run as root, so when the tests run as root its commands
run as the ``postgres`` OS user (``runuser``), in a directory owned by it.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import redis

PG_BINDIR_VAR = "DISPATCHER_TEST_PG_BINDIR"
PG_OS_USER = "postgres"
PG_SUPERUSER = "postgres"
PG_DATABASE = "dispatcher_faults"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0


class ServiceError(RuntimeError):
    """A private service could not be found, started or stopped."""


def spare_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def closed_port() -> int:
    """A port that refuses connections (nothing listens on it)."""
    return spare_port()


def _wait(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() >= deadline:
            raise ServiceError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(0.05)


# --- PostgreSQL ---------------------------------------------------------------------


def pg_bindir() -> Path:
    """The directory holding initdb, pg_ctl and postgres; ServiceError if there is none."""
    candidates: list[str] = []
    if os.environ.get(PG_BINDIR_VAR):
        candidates.append(os.environ[PG_BINDIR_VAR])
    # Newest version first: /usr/lib/postgresql/<ver>/bin on Debian and Ubuntu.
    candidates += sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
        reverse=True,
    )
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        if out.returncode == 0 and out.stdout.strip():
            candidates.append(out.stdout.strip())
    for candidate in candidates:
        path = Path(candidate)
        if all((path / name).is_file() for name in ("initdb", "pg_ctl", "postgres")):
            return path
    raise ServiceError(
        "the fault tests start their own PostgreSQL and need its server binaries "
        "(initdb, pg_ctl, postgres): install the postgresql server package, or set "
        f"{PG_BINDIR_VAR} to the directory holding them (looked in: {candidates or 'nowhere'})"
    )


def redis_server_binary() -> str:
    """The redis-server executable; ServiceError if there is none."""
    path = shutil.which("redis-server")
    if path is None:
        raise ServiceError(
            "the fault tests start their own Redis and need redis-server on the PATH: "
            "install the redis-server package"
        )
    return path


@dataclass
class PrivatePostgres:
    """A PostgreSQL cluster in a temporary directory, on a spare port."""

    root: Path
    bindir: Path
    port: int = 0
    host: str = "127.0.0.1"
    _runuser: str | None = None

    @classmethod
    def create(cls, host: str = "127.0.0.1") -> PrivatePostgres:
        """initdb a new cluster (trust authentication) and start it, listening on
        ``host`` (another address than loopback for the soak's several hosts)."""
        bindir = pg_bindir()
        root = Path(tempfile.mkdtemp(prefix="dispatcher-faults-pg-"))
        server = cls(root=root, bindir=bindir, port=spare_port(), host=host)
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam(PG_OS_USER)
            except KeyError:
                shutil.rmtree(root, ignore_errors=True)
                raise ServiceError(
                    f"running as root, PostgreSQL must run as another user, and there is no "
                    f"{PG_OS_USER!r} OS user; run the tests as a normal user instead"
                ) from None
            server._runuser = shutil.which("runuser")
            if server._runuser is None:
                shutil.rmtree(root, ignore_errors=True)
                raise ServiceError(
                    "running as root, PostgreSQL must run as another user, and runuser "
                    "(util-linux) is not on the PATH; run the tests as a normal user instead"
                )
            os.chown(root, user.pw_uid, user.pw_gid)
        try:
            server._run(
                "initdb",
                "-D",
                str(server.data_dir),
                "-U",
                PG_SUPERUSER,
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
            )
            if host != "127.0.0.1":
                # initdb trusts loopback only; the soak's other hosts share a subnet.
                with (server.data_dir / "pg_hba.conf").open("a") as hba:
                    hba.write("host all all samenet trust\n")
            server.start()
            with server.admin() as conn:
                conn.execute(f'CREATE DATABASE "{PG_DATABASE}"')
        except BaseException:
            server.destroy()
            raise
        return server

    @property
    def data_dir(self) -> Path:
        """The cluster's data directory."""
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        """The server's log file."""
        return self.root / "postgres.log"

    @property
    def url(self) -> str:
        """The SQLAlchemy URL of the test database."""
        return f"postgresql+psycopg://{PG_SUPERUSER}@{self.host}:{self.port}/{PG_DATABASE}"

    def _command(self, program: str, *args: str) -> list[str]:
        command = [str(self.bindir / program), *args]
        if self._runuser is not None:
            return [self._runuser, "-u", PG_OS_USER, "--", *command]
        return command

    def _run(self, program: str, *args: str, timeout_s: float = START_TIMEOUT_S) -> str:
        result = subprocess.run(
            self._command(program, *args),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
            cwd=self.root,
        )
        if result.returncode != 0:
            raise ServiceError(
                f"{program} {' '.join(args)} failed ({result.returncode}): "
                f"{result.stdout.strip()} {result.stderr.strip()} {self.log_tail()}"
            )
        return result.stdout

    def log_tail(self, lines: int = 20) -> str:
        """The end of the server's log."""
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        options = " ".join(
            [
                f"-c listen_addresses={self.host}",
                f"-p {self.port}",
                f"-k {self.root}",
                "-c max_connections=200",
                # Durable commits (fsync stays on) so that an immediate stop loses
                # nothing committed; only the work done at checkpoints is cut down.
                "-c shared_buffers=64MB",
                "-c checkpoint_timeout=300",
                "-c log_min_messages=warning",
            ]
        )
        self._run(
            "pg_ctl",
            "-D",
            str(self.data_dir),
            "-l",
            str(self.log_path),
            "-o",
            options,
            "-w",
            "start",
        )
        _wait(self.accepts_connections, START_TIMEOUT_S, f"PostgreSQL on port {self.port}")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: ``smart``, ``fast`` (sessions rolled back) or ``immediate``
        (every process quits at once, as in a crash; recovery replays the WAL)."""
        self._run(
            "pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "stop", timeout_s=STOP_TIMEOUT_S
        )

    def restart(self, mode: str = "fast", *, down_s: float = 0.0) -> None:
        """Stop, stay down ``down_s`` seconds, and start again on the same port."""
        self.stop(mode)
        time.sleep(down_s)
        self.start()

    def is_running(self) -> bool:
        """True while the postmaster runs."""
        result = subprocess.run(
            self._command("pg_ctl", "-D", str(self.data_dir), "status"),
            capture_output=True,
            check=False,
        )
        return result.returncode == 0

    def ensure_running(self) -> None:
        """Start the server if a test left it stopped."""
        if not self.is_running():
            self.start()

    def accepts_connections(self) -> bool:
        """True once a connection succeeds."""
        try:
            with self.admin(connect_timeout=1) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error:
            return False
        return True

    def admin(self, *, connect_timeout: int = 5) -> psycopg.Connection[tuple[object, ...]]:
        """An autocommit connection to the ``postgres`` database."""
        return psycopg.connect(
            host=self.host,
            port=self.port,
            user=PG_SUPERUSER,
            dbname="postgres",
            autocommit=True,
            connect_timeout=connect_timeout,
        )

    def destroy(self) -> None:
        """Stop the server (if it runs) and delete its files."""
        with contextlib.suppress(ServiceError, subprocess.TimeoutExpired, OSError):
            if self.data_dir.exists() and self.is_running():
                self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


# --- Redis --------------------------------------------------------------------------


@dataclass
class PrivateRedis:
    """A ``redis-server`` child process on a spare port, keeping nothing on disk.

    Killing and starting it again on the same port is a Redis restart that lost
    every message, as a production Redis without persistence would.
    """

    root: Path
    port: int = 0
    host: str = "127.0.0.1"
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    _logs: list[Path] = field(default_factory=list)

    @classmethod
    def create(cls, host: str = "127.0.0.1") -> PrivateRedis:
        """Start a new server listening on ``host``."""
        redis_server_binary()
        server = cls(root=Path(tempfile.mkdtemp(prefix="dispatcher-faults-redis-")), host=host)
        server.port = spare_port()
        try:
            server.start()
        except BaseException:
            server.destroy()
            raise
        return server

    @property
    def url(self) -> str:
        """The broker URL (database 0: the server is ours alone)."""
        return f"redis://{self.host}:{self.port}/0"

    def client(self) -> redis.Redis:
        """A client connection."""
        return redis.Redis(host=self.host, port=self.port, socket_connect_timeout=2)

    def start(self) -> None:
        """Start the server on its port and wait until it answers PING."""
        if self.process is not None and self.process.poll() is None:
            raise ServiceError("Redis is already running")
        log_path = self.root / f"redis-{len(self._logs)}.log"
        self._logs.append(log_path)
        with log_path.open("wb") as log_file:
            self.process = subprocess.Popen(
                [
                    redis_server_binary(),
                    "--port",
                    str(self.port),
                    "--bind",
                    self.host,
                    # No password: protected mode would refuse the soak's other hosts.
                    "--protected-mode",
                    "no" if self.host != "127.0.0.1" else "yes",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--daemonize",
                    "no",
                    "--dir",
                    str(self.root),
                ],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=self.root,
            )
        _wait(self.answers, START_TIMEOUT_S, f"Redis on port {self.port}")

    def answers(self) -> bool:
        """True when the server answers PING."""
        if self.process is None or self.process.poll() is not None:
            if self.process is not None and self.process.poll() is not None:
                raise ServiceError(f"redis-server exited: {self.log_tail()}")
            return False
        client = self.client()
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL the server: every message it held is gone."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=STOP_TIMEOUT_S)

    def restart(self, *, down_s: float = 0.0) -> None:
        """Kill, stay down ``down_s`` seconds, start again (empty) on the same port."""
        self.kill()
        time.sleep(down_s)
        self.start()
        self.restarts += 1

    def ensure_running(self) -> None:
        """Start the server if a test left it stopped."""
        if self.process is None or self.process.poll() is not None:
            self.start()

    def flushall(self) -> None:
        """FLUSHALL: every key gone, the server and its connections untouched."""
        client = self.client()
        try:
            client.flushall()
        finally:
            client.close()

    def log_tail(self, lines: int = 20) -> str:
        """The end of the current server's log."""
        if not self._logs:
            return ""
        with contextlib.suppress(OSError):
            return "\n".join(self._logs[-1].read_text(errors="replace").splitlines()[-lines:])
        return ""

    def destroy(self) -> None:
        """Stop the server and delete its directory."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=STOP_TIMEOUT_S)
        shutil.rmtree(self.root, ignore_errors=True)
