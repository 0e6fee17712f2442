"""The chaos soak: the whole stack under load and random faults, and the guarantees
checked from the outside afterwards (``python -m ops.soak``; docs/soak.md)."""
