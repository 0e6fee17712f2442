"""The pure domain: statuses, lanes, message options, numbers, parts, times, policies.

Nothing here reads the environment, opens a connection or imports another layer of
the package; it imports ``dispatcher.errors`` only (see docs/design.md, "Layers").
"""
