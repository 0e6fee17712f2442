"""A real HTTP server that receives webhooks, and reads of the webhook tables.

Shared by the webhook tests of the service and the callback-address and delivery
tests of the gateway. ``receiver`` is a fixture: a module that imports it uses it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlalchemy import select

from dispatcher.persistence.db import Database
from dispatcher.persistence.models import WebhookAttempt, WebhookDelivery

SECRET = "webhook-secret-for-tests-0123456789"
LOOPBACK = "127.0.0.0/8"


@dataclass
class Receiver:
    """A real HTTP server that records webhook POSTs and answers with scripted statuses."""

    statuses: list[int] = field(default_factory=list)
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    url: str = ""


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            state.received.append((dict(self.headers.items()), body))
            status = state.statuses.pop(0) if state.statuses else 204
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/sms"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def deliveries(db: Database) -> list[WebhookDelivery]:
    with db.transaction() as session:
        return list(session.execute(select(WebhookDelivery)).scalars())


def tries(db: Database) -> list[WebhookAttempt]:
    with db.transaction() as session:
        return list(session.execute(select(WebhookAttempt).order_by(WebhookAttempt.id)).scalars())
