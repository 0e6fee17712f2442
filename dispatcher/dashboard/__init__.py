"""The operator dashboard: server-rendered pages at ``/`` of ``dispatcher serve``.

``install(app, service)`` mounts it; ``routes`` has the pages and actions,
``session`` the signed login cookie, ``throttle`` the login throttle, ``queries`` the
indexed reads, ``charts`` the geometry of the inline SVG charts.
"""

from dispatcher.dashboard.routes import install

__all__ = ["install"]
