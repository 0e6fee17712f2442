"""The simulator's HTTP side: an aiohttp server in front of ``SimulatorEngine``.

Gateway pages sit under the prefix and speak the protocol of docs/design.md
section 1 (``sendmsg.aspx`` and ``getbalance.aspx``, GET or POST, ``text/plain``
replies); the engine decides each reply and its fault, and this module acts the
fault out on the connection (an abort, half a body, garbage, a hang). The
control endpoints sit under ``/_sim/`` and are never slowed down or broken by
the knobs. ``GatewaySimulator`` serves in the running event loop or from a
background thread, and stops either.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import threading
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, Final, Self

from aiohttp import web

from dispatcher.errors import ConfigurationError
from dispatcher.gateway.protocol import BALANCE_PATH, SEND_PATH
from dispatcher.gateway.simulator.config import DEFAULT_HOST, DEFAULT_PREFIX, SimulatorConfig
from dispatcher.gateway.simulator.engine import SimulatorEngine

# The package's name, as before the split, so logging configuration finds it.
logger = logging.getLogger("dispatcher.gateway.simulator")

CONTROL_PREFIX: Final = "/_sim"

# A stop waits this long for requests in progress (those in their latency sleep)
# before cancelling them; hangs end at once when a stop begins.
_SHUTDOWN_TIMEOUT_S: Final = 1.0
# Benchmarks open hundreds of connections at once; the default backlog of 128
# would turn a burst of connects into SYN retries and multi-second stalls.
_LISTEN_BACKLOG: Final = 2048
_TEXT_PLAIN: Final = "text/plain"


class GatewaySimulator:
    """The simulated gateway: a ``SimulatorEngine``, its HTTP app, and the server that runs it.

    Run it in a background thread with ``start_in_thread()`` (or as a context
    manager), or in the current event loop with ``await serve()``. ``stop()``
    ends either. State is guarded by a lock, so ``ledger()``, ``stats()``,
    ``configure()`` and ``reset()`` are safe from any thread.
    """

    def __init__(
        self,
        config: SimulatorConfig | None = None,
        *,
        host: str = DEFAULT_HOST,
        port: int = 0,
        prefix: str = DEFAULT_PREFIX,
    ) -> None:
        self._host = host
        self._requested_port = port
        self._prefix = "/" + prefix.strip("/") if prefix.strip("/") else ""
        self._engine = SimulatorEngine(config)
        self._port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._thread_error: BaseException | None = None

    # ----------------------------------------------------------------- addresses

    @property
    def port(self) -> int:
        """The port listened on; known once the server has started."""
        if self._port is None:
            raise RuntimeError("the simulator is not listening yet")
        return self._port

    @property
    def origin(self) -> str:
        """``http://host:port``, with an IPv6 host in brackets."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The gateway base URL, e.g. ``http://127.0.0.1:54321/smsgateway``."""
        return self.origin + self._prefix

    @property
    def control_url(self) -> str:
        """The control endpoints' base URL, e.g. ``http://127.0.0.1:54321/_sim``."""
        return self.origin + CONTROL_PREFIX

    # --------------------------------------------------------------- state (any thread)

    def config(self) -> SimulatorConfig:
        """The knobs as they stand, with the credit that remains."""
        return self._engine.config()

    def configure(self, **knobs: object) -> SimulatorConfig:
        """Change some knobs at once; returns the new config (``SimulatorEngine.configure``)."""
        return self._engine.configure(**knobs)

    def reset(self, config: SimulatorConfig | None = None, /, **knobs: object) -> SimulatorConfig:
        """Clear the ledger, the stats and the per-number counts; restore the knobs.

        See ``SimulatorEngine.reset``.
        """
        return self._engine.reset(config, **knobs)

    def ledger(self, since: int = 0) -> list[dict[str, Any]]:
        """A copy of the accepted recipients from index ``since``, oldest first.

        See ``SimulatorEngine.ledger`` for the entries.
        """
        return self._engine.ledger(since)

    def stats(self) -> dict[str, Any]:
        """Counters since the start or the last reset (``SimulatorEngine.stats``)."""
        return self._engine.stats()

    # -------------------------------------------------------------------- HTTP side

    def make_app(self) -> web.Application:
        """The aiohttp application: gateway pages under the prefix, control under /_sim."""
        app = web.Application()
        page = self._prefix + "/{page}"
        app.router.add_get(page, self._handle_gateway, allow_head=False)
        app.router.add_post(page, self._handle_gateway)
        app.router.add_get(CONTROL_PREFIX + "/health", self._handle_health, allow_head=False)
        app.router.add_get(CONTROL_PREFIX + "/ledger", self._handle_ledger, allow_head=False)
        app.router.add_get(CONTROL_PREFIX + "/stats", self._handle_stats, allow_head=False)
        app.router.add_get(CONTROL_PREFIX + "/config", self._handle_get_config, allow_head=False)
        app.router.add_post(CONTROL_PREFIX + "/config", self._handle_post_config)
        app.router.add_post(CONTROL_PREFIX + "/reset", self._handle_reset)
        return app

    async def _handle_gateway(self, request: web.Request) -> web.StreamResponse:
        # IIS serves .aspx pages case-insensitively; clients written for it rely on that.
        page = "/" + request.match_info["page"].lower()
        if page not in (SEND_PATH, BALANCE_PATH):
            raise web.HTTPNotFound(text="404 Not Found", content_type=_TEXT_PLAIN)
        delay_ms = self._engine.begin_request(page)
        try:
            params = await _read_params(request)
            if delay_ms > 0:
                await asyncio.sleep(delay_ms / 1000.0)
            if page == SEND_PATH:
                return await self._send(request, params)
            return await self._balance(request, params)
        finally:
            self._engine.end_request()

    async def _front(self, request: web.Request, *, hang_possible: bool) -> web.Response | None:
        """Apply a fault that strikes before processing: its response, or None to go on."""
        fault, cfg = self._engine.front_fault(hang_possible=hang_possible)
        if fault == "reset_before_accept":
            return _abort(request)
        if fault == "http_error":
            body = cfg.http_error_body
            content_type = "text/html" if body.lstrip().startswith("<") else _TEXT_PLAIN
            return web.Response(
                status=cfg.http_error_status, text=body, content_type=content_type, charset="utf-8"
            )
        if fault == "hang":
            await self._hang(cfg.hang_s)
            if _client_gone(request):
                self._engine.count_outcome("hang_client_gone")
                return _abort(request)
        return None

    async def _send(self, request: web.Request, params: Mapping[str, str]) -> web.StreamResponse:
        hang_first = not self._engine.knobs().hang_after_accept
        early = await self._front(request, hang_possible=hang_first)
        if early is not None:
            return early
        body, fault, hang_s, garbage = self._engine.send(params)
        if fault == "drop_after_accept":
            return _abort(request)
        if fault == "truncate":
            return await _truncated(request, body.encode())
        if fault == "garbage":
            # A NUL first keeps the body outside the reply grammar whatever the
            # random bytes happen to spell.
            return web.Response(body=b"\x00" + garbage, content_type=_TEXT_PLAIN)
        if fault == "hang":
            await self._hang(hang_s)
        return _plain(body)

    async def _balance(self, request: web.Request, params: Mapping[str, str]) -> web.StreamResponse:
        faults = self._engine.knobs().faults_on_balance
        if faults:
            early = await self._front(request, hang_possible=True)
            if early is not None:
                return early
        return _plain(self._engine.balance(params, faults=faults))

    async def _hang(self, seconds: float) -> None:
        """Wait ``seconds``, or less if the simulator is stopping."""
        stopping = self._stopping
        if stopping is None:
            await asyncio.sleep(seconds)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), seconds)

    async def _handle_health(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"status": "ok", "base_url": self.base_url, "control_url": self.control_url}
        )

    async def _handle_ledger(self, request: web.Request) -> web.Response:
        try:
            since = int(request.query.get("since", "0"))
            limit = int(request.query["limit"]) if "limit" in request.query else None
        except ValueError:
            return _json_error("since and limit must be integers")
        if since < 0 or (limit is not None and limit < 0):
            return _json_error("since and limit must be >= 0")
        return web.json_response(self._engine.ledger_page(since, limit))

    async def _handle_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def _handle_get_config(self, request: web.Request) -> web.Response:
        return web.json_response(self.config().as_dict())

    async def _handle_post_config(self, request: web.Request) -> web.Response:
        changes = await _json_object(request)
        if isinstance(changes, web.Response):
            return changes
        try:
            new = self.configure(**changes)
        except ConfigurationError as exc:
            return _json_error(str(exc))
        return web.json_response(new.as_dict())

    async def _handle_reset(self, request: web.Request) -> web.Response:
        changes = await _json_object(request)
        if isinstance(changes, web.Response):
            return changes
        try:
            new = self.reset(**changes)
        except ConfigurationError as exc:
            return _json_error(str(exc))
        return web.json_response(new.as_dict())

    # ------------------------------------------------------------------ running it

    async def serve(self, on_ready: Callable[[], None] | None = None) -> None:
        """Listen and serve in the running event loop until ``stop()`` is called.

        ``on_ready`` is called once the socket is listening (``base_url`` is known).
        """
        if self._stopping is not None:
            raise RuntimeError("this simulator is already serving")
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        runner = web.AppRunner(
            self.make_app(),
            handle_signals=False,
            access_log=None,  # query strings carry passwords
            shutdown_timeout=_SHUTDOWN_TIMEOUT_S,
        )
        await runner.setup()
        sock: socket.socket | None = None
        try:
            sock = _listening_socket(self._host, self._requested_port)
            site = web.SockSite(runner, sock, backlog=_LISTEN_BACKLOG)
            await site.start()
            self._port = sock.getsockname()[1]
            logger.info("gateway simulator listening on %s", self.base_url)
            if on_ready is not None:
                on_ready()
            await self._stopping.wait()
        finally:
            self._stopping.set()  # wakes every hang so the shutdown is prompt
            await runner.cleanup()
            if sock is not None:
                sock.close()
            logger.info("gateway simulator stopped")

    def start_in_thread(self, *, timeout_s: float = 10.0) -> None:
        """Serve from a daemon thread with its own event loop; return once listening.

        Raises what stopped the server from starting (e.g. OSError: port in use).
        """
        if self._thread is not None:
            raise RuntimeError("this simulator has already been started")
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._thread_main, args=(ready,), name="gateway-simulator", daemon=True
        )
        self._thread.start()
        if not ready.wait(timeout_s):
            self.stop()
            raise RuntimeError(f"the gateway simulator did not start within {timeout_s} s")
        if self._thread_error is not None:
            self._thread.join()
            raise self._thread_error

    def _thread_main(self, ready: threading.Event) -> None:
        try:
            asyncio.run(self.serve(on_ready=ready.set))
        except BaseException as exc:
            if not ready.is_set():
                self._thread_error = exc
            else:
                logger.exception("gateway simulator thread failed")
        finally:
            ready.set()

    def stop(self, *, timeout_s: float = 10.0) -> None:
        """Stop serving (idempotent); from another thread, wait until it has stopped.

        A stopped simulator refuses connections, which is how to model the gateway
        being unreachable.
        """
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None:
            with contextlib.suppress(RuntimeError):  # the loop has already closed
                loop.call_soon_threadsafe(stopping.set)
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)
            if thread.is_alive():
                raise RuntimeError(f"the gateway simulator did not stop within {timeout_s} s")

    def __enter__(self) -> Self:
        if self._thread is None:
            self.start_in_thread()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


async def _read_params(request: web.Request) -> dict[str, str]:
    """GET query and POST form merged; the form wins, and the first of repeats wins."""
    params: dict[str, str] = {}
    if request.method == "POST":
        for key, value in (await request.post()).items():
            if isinstance(value, str):
                params.setdefault(key, value)
    for key, value in request.query.items():
        params.setdefault(key, value)
    return params


def _plain(body: str) -> web.Response:
    return web.Response(text=body, content_type=_TEXT_PLAIN, charset="utf-8")


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def _abort(request: web.Request) -> web.Response:
    """Abort the connection; the response returned is never sent.

    aiohttp finds the transport closed when it writes the response and drops it
    quietly, as for a client that went away.
    """
    transport = request.transport
    if transport is not None:
        transport.abort()
    return web.Response(status=204)


async def _truncated(request: web.Request, body: bytes) -> web.StreamResponse:
    """Send headers promising the whole body, only half of it, then close."""
    response = web.StreamResponse(status=200)
    response.content_type = _TEXT_PLAIN
    response.charset = "utf-8"
    response.content_length = len(body) + 16
    await response.prepare(request)
    await response.write(body[: max(1, len(body) // 2)])
    transport = request.transport
    if transport is not None:
        # close(), not abort(): close flushes what was written, so the client
        # reliably sees a partial body and then the end of the stream.
        transport.close()
    return response


def _json_error(reason: str, status: int = 400) -> web.Response:
    return web.json_response({"error": reason}, status=status)


async def _json_object(request: web.Request) -> dict[str, object] | web.Response:
    """The request's JSON object body ({} if empty), or a 400 response."""
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        return _json_error(f"body is not JSON: {exc}")
    if not isinstance(data, dict):
        return _json_error("body must be a JSON object of knobs")
    return data


def _listening_socket(host: str, port: int) -> socket.socket:
    """A bound, listening TCP socket; its port is known even when ``port`` is 0."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(_LISTEN_BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock
