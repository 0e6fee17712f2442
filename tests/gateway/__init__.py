"""Tests of dispatcher.gateway: the reply parser, the clients and the simulator over real HTTP."""
