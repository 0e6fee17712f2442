"""Tests of dispatcher.api over real HTTP: ``/v1``, the drop-in endpoint, ``/metrics``."""
