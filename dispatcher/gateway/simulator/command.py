"""The simulator as a process, behind ``python -m dispatcher.gateway.simulator``.

The command line maps one option to each knob of ``SimulatorConfig``, serves
until SIGINT or SIGTERM, and prints one JSON line with the URLs once it
listens, so a script can wait for that line and read where to send.
``dispatcher gateway-sim`` runs the same ``main``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
from collections.abc import Callable, Sequence

from dispatcher.errors import ConfigurationError
from dispatcher.gateway.simulator.config import (
    DEFAULT_HOST,
    DEFAULT_PREFIX,
    RATE_KNOBS,
    TRANSIENT_CODES,
    SimulatorConfig,
    config_from_options,
)
from dispatcher.gateway.simulator.server import GatewaySimulator


async def serve_forever(
    config: SimulatorConfig | None = None,
    host: str = DEFAULT_HOST,
    port: int = 0,
    prefix: str = DEFAULT_PREFIX,
    *,
    on_ready: Callable[[GatewaySimulator], None] | None = None,
) -> None:
    """Serve a simulator in the running loop until SIGINT or SIGTERM.

    ``on_ready`` receives the simulator once it listens (to print its URL).
    """
    simulator = GatewaySimulator(config, host=host, port=port, prefix=prefix)
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []

    def ready() -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            # Only the main thread of a Unix process can take signals this way.
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, simulator.stop)
                installed.append(sig)
        if on_ready is not None:
            on_ready(simulator)

    try:
        await simulator.serve(on_ready=ready)
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


def run(
    config: SimulatorConfig | None = None,
    host: str = DEFAULT_HOST,
    port: int = 0,
    prefix: str = DEFAULT_PREFIX,
    *,
    on_ready: Callable[[GatewaySimulator], None] | None = None,
) -> None:
    """Serve a simulator until SIGINT or SIGTERM; blocks. For the CLI."""
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_forever(config, host, port, prefix, on_ready=on_ready))


def build_arg_parser(
    prog: str = "python -m dispatcher.gateway.simulator",
) -> argparse.ArgumentParser:
    """The simulator's command line; ``prog`` is the command the user typed (``dispatcher
    gateway-sim`` passes its own), so its help and its errors name it."""
    defaults = SimulatorConfig()
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Run the IntelliSoftware SMS gateway simulator. Prints one JSON line "
        "with base_url and control_url once it listens.",
    )
    parser.add_argument("--host", default=DEFAULT_HOST)
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--prefix", default=DEFAULT_PREFIX)
    parser.add_argument("--log-level", default="INFO")
    knobs = parser.add_argument_group("knobs (defaults as in SimulatorConfig)")
    # The defaults are shown: a client pointed at the simulator needs them.
    knobs.add_argument("--username", help=f"default: {defaults.username}")
    knobs.add_argument(
        "--password", help=f"default: {defaults.password}; visible to ps, fine for a simulator"
    )
    knobs.add_argument("--credit", type=int, help="SMS parts; unlimited if not given")
    knobs.add_argument("--latency-ms", type=float)
    knobs.add_argument("--latency-jitter-ms", type=float)
    for name in RATE_KNOBS:
        knobs.add_argument("--" + name.replace("_", "-"), type=float, metavar="RATE")
    knobs.add_argument("--transient-code", choices=TRANSIENT_CODES)
    knobs.add_argument("--http-error-status", type=int)
    knobs.add_argument("--http-error-body")
    knobs.add_argument("--hang-s", type=float)
    knobs.add_argument("--hang-after-accept", action=argparse.BooleanOptionalAction)
    knobs.add_argument("--faults-on-balance", action=argparse.BooleanOptionalAction)
    knobs.add_argument(
        "--number-rule",
        dest="number_rules",
        action="append",
        metavar="NUMBER=RULE",
        help="e.g. 447700900001=INVALID_NUMBER or 447700900002=GATEWAY_ERROR*2; repeatable",
    )
    knobs.add_argument("--seed", type=int)
    return parser


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> None:
    """Parse the command line and run the simulator until interrupted."""
    parser = build_arg_parser(prog) if prog else build_arg_parser()
    args = vars(parser.parse_args(argv))
    host, port, prefix = args.pop("host"), args.pop("port"), args.pop("prefix")
    logging.basicConfig(level=args.pop("log_level").upper(), stream=sys.stderr)
    try:
        config = config_from_options(**args)
    except ConfigurationError as exc:
        parser.error(str(exc))

    def announce(simulator: GatewaySimulator) -> None:
        urls = {"base_url": simulator.base_url, "control_url": simulator.control_url}
        print(json.dumps(urls), flush=True)

    run(config, host, port, prefix, on_ready=announce)
