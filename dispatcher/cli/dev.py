"""The developer's commands: ``gateway-sim`` runs the simulator, ``demo`` the whole pipeline.

Neither needs a gateway account; both stay local to the machine.
"""

from __future__ import annotations

import sys

import click

from dispatcher.cli.common import friendly_errors


@click.command(
    "gateway-sim",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
)
@click.pass_context
def gateway_sim(ctx: click.Context) -> None:
    """Run the gateway simulator (docs/design.md section 1); `--help` lists its knobs.

    Options are those of `python -m dispatcher.gateway.simulator`: --host, --port,
    --prefix, credentials, --credit, --latency-ms, error rates, --number-rule
    NUMBER=CODE[*N], --seed. Knobs can also be changed at run time with
    POST /_sim/config.
    """
    from dispatcher.gateway import simulator

    argv = list(ctx.args)
    if not any(a == "--port" or a.startswith("--port=") for a in argv):
        argv += ["--port", str(simulator.DEFAULT_CLI_PORT)]
    simulator.main(argv, prog="dispatcher gateway-sim")


@click.command()
@click.option("--recipients", default=1000, show_default=True, type=click.IntRange(10, 100_000))
@click.option(
    "--data-dir",
    default="dispatcher-demo",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Where the demo's SQLite database and broker folder go (emptied first).",
)
@click.option("--timeout-s", default=300.0, show_default=True, type=float)
@friendly_errors
def demo(recipients: int, data_dir: str, timeout_s: float) -> None:
    """Run the whole pipeline once, embedded: simulator, worker, producer, audit summary."""
    from dispatcher.cli.demo import run_demo

    sys.exit(run_demo(recipients=recipients, data_dir=data_dir, timeout_s=timeout_s))
