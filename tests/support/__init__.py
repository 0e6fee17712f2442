"""Helpers that test modules import: services, settings, workers, pipelines, reads.

The fixtures every test may use are not here but in ``tests/fixtures`` (plugins of
the root conftest). Importing a module here registers nothing with pytest; the one
fixture here, ``support.webhooks.receiver``, serves only the modules that import it.
"""
