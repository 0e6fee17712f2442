"""The root of the tests: the shared fixtures, registered as plugins.

Tests mirror the package (``tests/domain`` ... ``tests/cli``), with ``tests/system``
for the whole product across every layer, ``tests/faults`` for fault injection on
private servers and ``tests/browser`` for the dashboard in a real browser.

The fixtures live in ``tests/fixtures`` by concern, and what test modules import
(settings, workers, the pipeline, reads of the database) in ``tests/support``:

- ``fixtures.services``: the real PostgreSQL and Redis (never mocked, never
  skipped), a scratch database and Redis index per session, the gateway simulator;
- ``fixtures.pipelines``: real ``dispatcher worker`` processes and the whole stack;
- ``fixtures.inprocess``: a Dispatcher in the test process on SQLite and PostgreSQL.

Both packages are imported by their top-level names (``support.settings``), since
pytest puts this directory, the first without an ``__init__.py``, on ``sys.path``.
"""

from __future__ import annotations

pytest_plugins = ["fixtures.services", "fixtures.pipelines", "fixtures.inprocess"]
