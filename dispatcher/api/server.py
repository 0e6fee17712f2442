"""Running the app under uvicorn: in the foreground (``dispatcher serve``) or in a thread.

Uvicorn's access log is always off: it prints query strings, and the drop-in
endpoint's GET requests carry the password there. ``AccessLogMiddleware`` logs
the path alone instead. ``log_config=None`` keeps the process's own logging
(and its redacting filter) rather than uvicorn's. Uvicorn's proxy headers are
off too: the client's address is read through ``DISPATCHER_TRUSTED_PROXIES``
alone (``dispatcher.proxies``).
"""

from __future__ import annotations

import logging
import threading
import time
from types import TracebackType

import uvicorn
from fastapi import FastAPI

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 15.0


class _DropAll(logging.Filter):
    """Refuses every record of the logger it is attached to."""

    def filter(self, record: logging.LogRecord) -> bool:
        return False


def silence_uvicorn_access_log() -> None:
    """Make sure uvicorn's access log, which prints query strings, writes nothing.

    ``access_log=False`` alone is not enough: uvicorn logs whenever the logger has
    a handler, and any later logging setup (a ``dictConfig``, a test's log
    capture) may give it one. A filter on the logger itself drops the records
    before any handler sees them.
    """
    logger = logging.getLogger("uvicorn.access")
    logger.handlers = []
    logger.propagate = False
    logger.disabled = True
    if not any(isinstance(f, _DropAll) for f in logger.filters):
        logger.addFilter(_DropAll())


def make_config(
    app: FastAPI, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT
) -> uvicorn.Config:
    """Uvicorn's configuration for ``app``: no access log, the process's logging."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        access_log=False,
        log_config=None,
        # X-Forwarded-For and -Proto are read by the dispatcher itself, and only from
        # DISPATCHER_TRUSTED_PROXIES (dispatcher.proxies); uvicorn's own reading would
        # believe them from 127.0.0.1 or FORWARDED_ALLOW_IPS.
        proxy_headers=False,
        server_header=False,
        lifespan="on",
    )
    # Building the config sets uvicorn's loggers up; silence its access log after that.
    silence_uvicorn_access_log()
    return config


def run(app: FastAPI, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> None:
    """Serve ``app`` until interrupted (SIGINT or SIGTERM: a graceful stop)."""
    uvicorn.Server(make_config(app, host=host, port=port)).run()


class ServerThread:
    """``app`` served on a background thread, for tests, benchmarks and embedding.

    ``port=0`` takes a free port; ``base_url`` says which once started.
    """

    def __init__(self, app: FastAPI, *, host: str = DEFAULT_HOST, port: int = 0) -> None:
        self.server = uvicorn.Server(make_config(app, host=host, port=port))
        self._thread = threading.Thread(target=self.server.run, name="api-server", daemon=True)
        self.host = host

    @property
    def port(self) -> int:
        """The port the server listens on."""
        sockets = [s for server in self.server.servers for s in server.sockets]
        return int(sockets[0].getsockname()[1])

    @property
    def base_url(self) -> str:
        """``http://host:port``."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> ServerThread:
        """Start serving; returns once the server accepts connections."""
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the API server stopped while starting")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the API server did not start within {START_TIMEOUT_S:g} s")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Stop gracefully and wait for the thread."""
        self.server.should_exit = True
        self._thread.join(STOP_TIMEOUT_S)
        if self._thread.is_alive():
            self.server.force_exit = True
            self._thread.join(STOP_TIMEOUT_S)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
