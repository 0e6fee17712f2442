"""A simulator of the IntelliSoftware SMS gateway: a real HTTP server on aiohttp.

It speaks the protocol of docs/design.md section 1 (``sendmsg.aspx`` and
``getbalance.aspx`` under a prefix, GET or POST, ``text/plain`` replies) and
can be told to misbehave the ways a real gateway does: latency, whole-submission
transient errors, HTTP errors, hangs, connections dropped before or after the
submission was taken, truncated and garbage replies, an empty account, numbers
it refuses.

Every recipient it accepts goes into a ledger, so a test can prove that the
dispatcher never had one message accepted twice, even through the ambiguous
failures (a hang, a drop, a truncated reply) where the dispatcher cannot know.

Knobs live in ``SimulatorConfig`` and can be changed at construction, from the
command line (``python -m dispatcher.gateway.simulator --help``) and at run time
over HTTP. The control endpoints sit outside the gateway prefix, under
``/_sim/``, and are never slowed down or broken by the knobs:

- ``GET /_sim/health``                  liveness and the URLs
- ``GET /_sim/ledger?since=<i>&limit=<n>``  accepted recipients, oldest first
- ``GET /_sim/stats``                   request and outcome counters
- ``GET /_sim/config``                  the knobs (password masked, credit as it stands)
- ``POST /_sim/config``                 a JSON object of knobs to change
- ``POST /_sim/reset``                  clear ledger, stats and per-number counters and
                                        restore the starting knobs; an optional JSON
                                        object of knobs to set on top

In tests, run it in a background thread::

    with GatewaySimulator(SimulatorConfig(credit=100)) as sim:
        requests.post(sim.base_url + "/sendmsg.aspx", data={...})
        assert len(sim.ledger()) == 1

The modules: ``config`` (the knobs, their checks, scenario parsing), ``engine``
(the state and the decisions: replies, faults, the ledger; no HTTP), ``server``
(the aiohttp server, start and stop) and ``command`` (the command line).
"""

from dispatcher.gateway.simulator.command import build_arg_parser as build_arg_parser
from dispatcher.gateway.simulator.command import main as main
from dispatcher.gateway.simulator.command import run as run
from dispatcher.gateway.simulator.command import serve_forever as serve_forever
from dispatcher.gateway.simulator.config import DEFAULT_CLI_PORT as DEFAULT_CLI_PORT
from dispatcher.gateway.simulator.config import DEFAULT_HOST as DEFAULT_HOST
from dispatcher.gateway.simulator.config import DEFAULT_PREFIX as DEFAULT_PREFIX
from dispatcher.gateway.simulator.config import TRANSIENT_CODES as TRANSIENT_CODES
from dispatcher.gateway.simulator.config import SimulatorConfig as SimulatorConfig
from dispatcher.gateway.simulator.config import config_from_options as config_from_options
from dispatcher.gateway.simulator.config import (
    normalise_gateway_number as normalise_gateway_number,
)
from dispatcher.gateway.simulator.config import parse_number_rules as parse_number_rules
from dispatcher.gateway.simulator.engine import FIRST_MESSAGE_ID as FIRST_MESSAGE_ID
from dispatcher.gateway.simulator.engine import UNLIMITED_BALANCE as UNLIMITED_BALANCE
from dispatcher.gateway.simulator.engine import SimulatorEngine as SimulatorEngine
from dispatcher.gateway.simulator.server import CONTROL_PREFIX as CONTROL_PREFIX
from dispatcher.gateway.simulator.server import GatewaySimulator as GatewaySimulator
