"""What every command family shares: exit codes, error handling, JSON output, times.

Every command prints one clear line and exits non-zero on a problem the user can
fix (exit 2: bad input or configuration; exit 1: the operation failed), never a
traceback: ``friendly_errors`` is where the project's exceptions become that line.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, ParamSpec, TypeVar

import click

from dispatcher.domain import redaction
from dispatcher.domain.times import parse_time, to_utc
from dispatcher.errors import ConfigurationError, DispatcherError, NotFoundError, ValidationError
from dispatcher.persistence.db import SQLAlchemyError

P = ParamSpec("P")
R = TypeVar("R")

EXIT_FAILED = 1
EXIT_USAGE = 2


def friendly_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Turn the project's exceptions into one line on stderr and an exit code."""

    @wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except (ValidationError, ConfigurationError) as exc:
            click.echo(f"error: {redaction.redact(str(exc))}", err=True)
            sys.exit(EXIT_USAGE)
        except NotFoundError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_FAILED)
        except DispatcherError as exc:
            click.echo(f"error: {redaction.redact(str(exc))}", err=True)
            sys.exit(EXIT_FAILED)
        except SQLAlchemyError as exc:
            from dispatcher import runtime
            from dispatcher.persistence import migrate as migrations

            if migrations.missing_table(exc):
                # Most often the wrong directory or URL: name the database looked at.
                url = redaction.redact(runtime.settings().effective_database_url)
                click.echo(
                    f"error: the database at {url} has no dispatcher schema: run "
                    "`dispatcher migrate` with the same DISPATCHER_DATABASE_URL (or "
                    "DISPATCHER_DATA_DIR) first",
                    err=True,
                )
                sys.exit(EXIT_FAILED)
            # The driver's first line says what went wrong; the rest is SQL and
            # parameters, which may hold message text or numbers.
            detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            click.echo(f"error: database: {redaction.redact(detail)}", err=True)
            sys.exit(EXIT_FAILED)

    return wrapper


def emit_json(data: Any) -> None:
    """Print ``data`` as indented JSON for ``--json``; times and IDs as strings."""
    click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))


class IsoTime(click.ParamType[dt.datetime]):
    """An ISO 8601 date or time (``2026-11-24``, ``2026-11-24T09:00:00+01:00``,
    ``...Z``) in UTC; a time without a zone is read as UTC unless ``naive_as_utc`` is
    off, when it is refused (a send time must say its zone)."""

    name = "ISO_TIME"

    def __init__(self, *, naive_as_utc: bool = True) -> None:
        self.naive_as_utc = naive_as_utc

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> dt.datetime:
        field = param.name if param is not None and param.name else "time"
        try:
            if isinstance(value, dt.datetime):
                return to_utc(value, field, assume_utc=self.naive_as_utc)
            return parse_time(str(value), field, assume_utc=self.naive_as_utc)
        except ValidationError as exc:
            self.fail(str(exc), param, ctx)


def require_schema(*, upgrade_sqlite: bool = False) -> None:
    """Refuse to run against a schema that is not this version's (one line naming the
    database and ``dispatcher migrate``); with ``upgrade_sqlite``, bring the embedded
    SQLite database up to date instead (``migrate.ensure_current``)."""
    from dispatcher import runtime
    from dispatcher.persistence import migrate as migrations

    migrations.ensure_current(runtime.service().db, upgrade_sqlite=upgrade_sqlite)


def cli_actor() -> str:
    """Who is at the keyboard, for the audit trail."""
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"cli:{user}@{socket.gethostname()}"


def interactive() -> bool:
    """Whether a person at a terminal can answer a question."""
    return sys.stdin.isatty()
