"""The ASGI app of ``dispatcher serve``: ``/v1``, the drop-in, ``/healthz``, ``/metrics``,
the dashboard."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST
from swagger_ui_bundle import swagger_ui_path

from dispatcher import __version__, dashboard, runtime
from dispatcher.api import dropin, errors, metrics, v1
from dispatcher.api.auth import Authenticator
from dispatcher.api.balance import BalanceCache
from dispatcher.api.health import OK, HealthChecker
from dispatcher.api.middleware import (
    AccessLogMiddleware,
    BodyLimitMiddleware,
    EncodingMiddleware,
)
from dispatcher.api.ratelimit import LocalTokenBucket, NoLimit, RateLimiter, RedisTokenBucket
from dispatcher.api.schemas import Health
from dispatcher.config import Settings
from dispatcher.service.dispatcher import Dispatcher
from dispatcher.service.keys import KeyStore

# Redis answers in microseconds; one that takes a second is as good as away.
REDIS_TIMEOUT_S = 1.0

DESCRIPTION = """\
Queue SMS for the IntelliSoftware gateway and follow each recipient's outcome.

Authenticate with `Authorization: Bearer <token>`; create a key with
`dispatcher keys create NAME --scope send,read`. Errors are
`{"error": {"code": ..., "message": ...}}`.
"""


def _redis_client(settings: Settings) -> redis.Redis | None:
    url = settings.effective_broker_url
    if not url.startswith(("redis://", "rediss://", "unix://")):
        return None
    return redis.Redis.from_url(
        url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S
    )


def _limiter(settings: Settings, client: redis.Redis | None) -> RateLimiter:
    if settings.api_rate_per_s <= 0:
        return NoLimit()
    if client is not None:
        return RedisTokenBucket(client, settings.api_rate_per_s, settings.api_burst)
    return LocalTokenBucket(settings.api_rate_per_s, settings.api_burst)


DOCS_ASSETS = "/docs/assets"
"""Where /docs finds Swagger UI's files (``swagger_ui_bundle``'s copy)."""


def create_app(service: Dispatcher | None = None) -> FastAPI:
    """The HTTP API on ``service`` (default: the process's, from DISPATCHER_* settings).

    The app does not close a service it was given; it closes the Redis connection
    it opens for rate limits and health checks when it shuts down.
    """
    if service is None:
        service = runtime.service()
    settings = service.settings
    client = _redis_client(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            if client is not None:
                client.close()

    app = FastAPI(
        title="sms-dispatcher",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        # Served below from files of our own: FastAPI's page loads Swagger UI from a CDN.
        docs_url=None,
        redoc_url=None,
    )
    app.state.service = service
    app.state.balance = BalanceCache(service, ttl_s=settings.balance_cache_s)
    app.state.authenticator = Authenticator(KeyStore(service.db), _limiter(settings, client))
    health = HealthChecker(settings, service.db, client)

    errors.install(app)
    app.include_router(v1.router)
    app.include_router(dropin.router)
    dashboard.install(app, service)

    app.mount(DOCS_ASSETS, StaticFiles(directory=swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        """The OpenAPI document in Swagger UI, every file from this server."""
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="sms-dispatcher API",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png",
        )

    @app.get(
        "/healthz",
        response_model=Health,
        tags=["health"],
        summary="Database and broker reachable",
        responses={503: {"model": Health, "description": "One of them is not."}},
    )
    async def healthz() -> JSONResponse:
        """200 when both answer; 503 naming which did not. No key needed."""
        result = await health.check()
        healthy = all(value == OK for value in result.values())
        return JSONResponse(result, status_code=200 if healthy else 503)

    scrape = metrics.registry(service.db, heartbeat_interval_s=settings.heartbeat_interval_s)
    token = settings.metrics_token.get_secret_value() if settings.metrics_token else None

    # Left out of /openapi.json like the drop-in: Prometheus's text format, not JSON.
    @app.get("/metrics", include_in_schema=False, response_class=Response)
    def prometheus_metrics(request: Request) -> Response:
        """Cluster-wide counters, histograms and gauges, read from the database; with
        DISPATCHER_METRICS_TOKEN set, only for a scrape that presents it as a bearer
        token. A plain function, so it runs in a thread."""
        if token is not None and not metrics.authorized(request, token):
            return Response(
                "a bearer token is required\n",
                status_code=401,
                media_type="text/plain",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return Response(metrics.exposition(scrape), media_type=CONTENT_TYPE_LATEST)

    # Middleware runs outermost-last-added: the access log sees the 413s too, and
    # the UTF-8 check reads a body already bounded.
    app.add_middleware(EncodingMiddleware)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(AccessLogMiddleware)
    return app
