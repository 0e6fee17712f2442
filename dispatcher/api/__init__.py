"""The HTTP side of ``dispatcher serve``: the JSON API, the drop-in endpoint, health.

::

    dispatcher/api/
      app.py         create_app(): routes, error translation, middleware, lifespan
      v1.py          /v1/jobs: enqueue, read, list, retry, cancel (bearer API keys)
      dropin.py      /smsgateway/sendmsg.aspx and getbalance.aspx (the gateway's format)
      auth.py        API keys, scopes and the per-key rate limit
      ratelimit.py   token buckets, in Redis or in process
      errors.py      exceptions to {"error": {...}} or ERR:<CODE>
      middleware.py  access log (path only, never the query) and body-size limit
      health.py      /healthz checks
      queries.py     the paginated job list (to move into the store)
      schemas.py     request and response models
      server.py      uvicorn, in the foreground or in a thread
"""

from __future__ import annotations

from dispatcher.api.app import create_app

__all__ = ["create_app"]
