"""``python -m dispatcher.gateway.simulator``: run the gateway simulator."""

from dispatcher.gateway.simulator.command import main

main()
