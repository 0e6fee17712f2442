"""The ``dispatcher`` command: the ``main`` group, with each command family registered.

Every command prints one clear line and exits non-zero on a problem the user can
fix (exit 2: bad input or configuration; exit 1: the operation failed), never a
traceback. ``--json`` prints machine-readable output where a script reads it.

The commands live by who uses them: ``producer`` (send, status, jobs),
``operator`` (pause, resume, state, retry, cancel), ``processes`` (worker,
serve, sweep, rollup), ``admin`` (migrate, keys), ``audit`` (export, purge,
erase) and ``dev`` (gateway-sim, demo); ``common`` holds what they share. Each
imports the runtime inside the command, so ``dispatcher --help`` stays quick.
"""

from __future__ import annotations

import logging
import sys

import click

from dispatcher import __version__
from dispatcher.cli import admin, audit, dev, operator, processes, producer
from dispatcher.cli.common import EXIT_FAILED as EXIT_FAILED
from dispatcher.cli.common import EXIT_USAGE as EXIT_USAGE
from dispatcher.cli.common import IsoTime as IsoTime
from dispatcher.cli.common import friendly_errors as friendly_errors
from dispatcher.domain import redaction
from dispatcher.domain.storable import unstorable


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    redaction.install()


class _Commands(click.Group):
    """The top-level group: refuses an argument that is not text before any command runs."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # Bytes that are not UTF-8 reach Python as lone surrogates, which no database
        # can store and no look-up can match: one line here, not a traceback later.
        for arg in args:
            problem = unstorable(arg)
            if problem is not None:
                shown = arg if len(arg) <= 40 else arg[:40] + "..."
                click.echo(f"error: the argument {shown!r} {problem}", err=True)
                ctx.exit(EXIT_USAGE)
        return super().parse_args(ctx, args)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dispatcher")
@click.option(
    "--log-level",
    default="WARNING",
    show_default=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    help="How much the command logs to stderr.",
)
def main(log_level: str) -> None:
    """sms-dispatcher: queue, send and audit SMS through the IntelliSoftware gateway.

    Configuration comes from DISPATCHER_* environment variables (see the README);
    with none set, everything runs embedded: a SQLite file and a file-based broker
    under ./dispatcher-data.
    """
    _configure_logging(log_level)


for _command in (
    producer.send,
    producer.status,
    producer.jobs,
    operator.pause,
    operator.resume,
    operator.state,
    operator.balance,
    operator.retry,
    operator.settle,
    operator.acknowledge_unknown,
    operator.cancel,
    processes.worker,
    processes.sweep,
    processes.rollup,
    processes.serve,
    processes.healthcheck,
    admin.migrate,
    admin.keys,
    audit.export,
    audit.purge,
    audit.erase,
    dev.gateway_sim,
    dev.demo,
):
    main.add_command(_command)
