"""A TCP relay standing for a gateway host: the soak takes it down and brings it back.

The workers reach the simulator through two relays, the primary gateway host and
the backup, so one simulator (one ledger) stands behind both. ``down()`` is a host
gone: the port refuses new connections and every open one is reset, a request
half-way through included, which may leave the gateway having accepted what the
worker never heard back about (an ``unknown`` the soak must be able to explain).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from concurrent.futures import Future
from typing import Any

CHUNK = 65536


class Relay:
    """Forwards ``listen_host:port`` to ``target``, in a thread of its own."""

    def __init__(self, target: tuple[str, int], *, listen_host: str = "127.0.0.1") -> None:
        self.target = target
        self.listen_host = listen_host
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="relay", daemon=True)
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()

    def start(self) -> Relay:
        """Listen (on a free port the first time, the same port after) and forward."""
        if not self._thread.is_alive():
            self._thread.start()
        self._call(self._listen())
        return self

    @property
    def is_up(self) -> bool:
        """Whether the relay accepts connections now."""
        return self._server is not None

    def down(self) -> None:
        """Refuse new connections and reset every open one."""
        self._call(self._close())

    def up(self) -> None:
        """Accept connections again, on the same port."""
        if self._server is None:
            self._call(self._listen())

    def close(self) -> None:
        """Stop for good."""
        if self._thread.is_alive():
            self._call(self._close())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)

    def _call(self, coroutine: Any) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return future.result(timeout=10)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, self.listen_host, self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._open):
            # abort(): a reset, as a host that vanished, not a polite FIN.
            writer.transport.abort()
        self._open.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._server is None:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._open.update((writer, up_writer))
        try:
            await asyncio.gather(_pump(reader, up_writer), _pump(up_reader, writer))
        finally:
            for each in (writer, up_writer):
                self._open.discard(each)
                each.transport.abort()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
