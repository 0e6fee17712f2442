"""The baseline: how a first attempt at an SMS dispatcher on Celery usually looks.

One Celery task per recipient, one HTTP request per recipient (``requests``, a
keep-alive session per worker process), an ORM commit per row, the prefork pool
with one process per core and prefetch 1, on the same PostgreSQL (its own schema,
``baseline``) and the same Redis (its own queue) as the dispatcher. Nothing here
is slow on purpose: it is the straightforward design done properly, so the
benchmark's ours/baseline ratio says what the dispatcher's design is worth.

The worker is started by ``ops/bench/pipeline.py`` as
``celery -A ops.bench.baseline worker``; the database, broker and gateway come
from ``BENCH_BASELINE_*`` variables (this module is a benchmark tool, outside the
package, so it reads its own environment).
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Sequence
from typing import Any

import requests
from celery import Celery
from sqlalchemy import DateTime, Integer, String, Text, create_engine, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from ops.bench.timing import timing, timing_query

SCHEMA = "baseline"
QUEUE = "baseline"
TASK = "baseline.send_sms"


class Base(DeclarativeBase):
    """The baseline's own tables."""


class Message(Base):
    """One recipient of one message: the whole model of a first attempt."""

    __tablename__ = "messages"
    __table_args__ = {"schema": SCHEMA}

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job: Mapped[str] = mapped_column(String(40))
    number: Mapped[str] = mapped_column(String(32))
    text: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    gateway_id: Mapped[str | None] = mapped_column(String(40))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    sent_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


def _url(name: str) -> str:
    return os.environ.get(f"BENCH_BASELINE_{name}", "")


def _sqlalchemy_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


def create_schema(database_url: str) -> None:
    """Create (or empty) the baseline's schema and table."""
    engine = create_engine(_sqlalchemy_url(database_url))
    with engine.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}"))
        Base.metadata.create_all(conn)
        conn.execute(text(f"TRUNCATE {SCHEMA}.messages RESTART IDENTITY"))
    engine.dispose()


app = Celery("baseline", broker=_url("BROKER_URL") or "memory://")
app.conf.update(
    task_default_queue=QUEUE,
    task_ignore_result=True,
    worker_prefetch_multiplier=1,
    worker_hijack_root_logger=False,
    worker_send_task_events=False,
    task_serializer="json",
    accept_content=["json"],
)

_sessions: sessionmaker[Session] | None = None
_http: requests.Session | None = None


def _session() -> Session:
    # Built lazily, in each prefork child, so no connection crosses a fork.
    global _sessions
    if _sessions is None:
        _sessions = sessionmaker(create_engine(_sqlalchemy_url(_url("DATABASE_URL"))))
    return _sessions()


def _client() -> requests.Session:
    global _http
    if _http is None:
        _http = requests.Session()
    return _http


@app.task(name=TASK)
def send_sms(message_id: int) -> None:
    """Send one recipient's message and record the outcome."""
    with _session() as session:
        message = session.get(Message, message_id)
        if message is None or message.status != "queued":
            return
        form = {
            "username": _url("GATEWAY_USERNAME"),
            "password": _url("GATEWAY_PASSWORD"),
            "to": message.number,
            "text": message.text,
        }
        try:
            response = _client().post(_url("GATEWAY_URL") + "/sendmsg.aspx", data=form, timeout=30)
            body = response.text.strip()
        except requests.RequestException as exc:
            body = f"ERR:{type(exc).__name__}"
        if body.startswith("ID:"):
            message.status, message.gateway_id = "sent", body[3:]
        else:
            message.status, message.error = "failed", body[:200]
        message.sent_at = dt.datetime.now(dt.UTC)
        session.commit()


def enqueue(session: Session, job: str, numbers: Sequence[str], text_: str) -> int:
    """Queue one message per number: an ORM commit per row, then its task."""
    for number in numbers:
        message = Message(
            job=job, number=number, text=text_, status="queued", created_at=dt.datetime.now(dt.UTC)
        )
        session.add(message)
        session.commit()
        send_sms.delay(message.id)
    return len(numbers)


def figures(database_url: str) -> dict[str, Any]:
    """Counts per status and the enqueue-to-sent times, from the baseline's table."""
    engine = create_engine(_sqlalchemy_url(database_url))
    with engine.connect() as conn:
        by_status: dict[str, int] = dict(
            conn.execute(
                text(f"SELECT status, count(*) FROM {SCHEMA}.messages GROUP BY status")
            ).all()
        )
        row = conn.execute(text(timing_query(f"{SCHEMA}.messages", done_column="sent_at"))).one()
    engine.dispose()
    return timing(row, {str(k): int(v) for k, v in by_status.items()})
