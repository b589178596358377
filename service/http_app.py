"""The HTTP front end (docs/DESIGN.md §4): FastAPI over the same scoring core as gRPC.

JSON or msgpack by Content-Type / Accept; errors are always JSON `{"error": "..."}`, an
unexpected failure included (a 500 whose traceback goes to the log). The routes are in
`http_routes`; only these two modules, `http_server` and `analysis` import the web stack, so
the engine and the gRPC path run without it.
"""

import logging
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi_offline import FastAPIOffline
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.routing import Match

import tokenweight
from tokenweight.status import http_status

from .auth import BearerToken
from .config import ServerConfig
from .errors import ServiceError
from .http_body import validation_message
from .http_hardening import SecurityHeaders, TokenOnOperationalPaths
from .http_routes import RETRY_AFTER_S, ClientGone, error_response, router
from .metrics import Metrics
from .scoring import ScoringService

log = logging.getLogger(__name__)

# nginx's "client closed request": nobody reads it, but metrics count it apart from errors.
CLIENT_CLOSED = 499


def body_limit(config: ServerConfig) -> int:
    """Bytes of the largest score body accepted: ~12 characters per token id in JSON."""
    return 16 * config.max_request_tokens + 8 * config.max_sequences + (64 << 10)


class RequestMetrics:
    """Counts requests by route and status and times them.

    A plain ASGI middleware rather than `@app.middleware("http")`: Starlette's
    BaseHTTPMiddleware hides the client's disconnect from the endpoint, and the score route
    needs to see it to drop abandoned requests.
    """

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = 500

        async def send_counted(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_counted)
        finally:
            # The router records the matched route in the shared scope.
            route = scope.get("route")
            path = route.path if route is not None else "unmatched"
            self.metrics.http_requests.labels(path, str(status)).inc()
            self.metrics.http_latency.labels(path).observe(time.perf_counter() - start)


class UnexpectedErrors:
    """A bug, not a bad request: the caller gets a JSON 500 like every other error, the log
    gets the traceback.

    An ASGI middleware inside Starlette's own error middleware rather than an exception
    handler for `Exception`: that handler runs in the outermost middleware, which re-raises
    afterwards, so the server drops the connection and a keep-alive client's next request
    on it fails.
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def send_watched(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_watched)
        except Exception as exc:
            log.error("%s %s failed", scope["method"], scope["path"], exc_info=exc)
            if started:  # too late for another status; the server closes the connection
                raise
            message = f"internal error: {type(exc).__name__}: {exc}"
            await error_response(500, message)(scope, receive, send)


def _service_error_response(exc: ServiceError):
    status = http_status(exc.status)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else {}
    if status in (429, 503):  # a full queue or a draining server: worth a retry soon
        headers["Retry-After"] = RETRY_AFTER_S
    return error_response(status, exc.message, **headers)


async def _service_error(request, exc: ServiceError):
    return _service_error_response(exc)


async def _http_error(request, exc: HTTPException):
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        # Starlette names only the methods of the first route with this path.
        headers["Allow"] = ", ".join(sorted(_methods_of(request)))
    return error_response(exc.status_code, str(exc.detail), **headers)


def _methods_of(request) -> set[str]:
    """Every method some route serves at the request's path: the API's own routes and the
    docs routes FastAPI adds to the app."""
    methods = set()
    scope = {"type": "http", "path": request.url.path, "method": request.method}
    for route in [*router.routes, *request.app.routes]:
        if getattr(route, "methods", None) and route.matches(scope)[0] != Match.NONE:
            methods |= route.methods
    return methods


async def _client_gone(request, exc):
    return Response(status_code=CLIENT_CLOSED)


async def _validation_error(request, exc):
    return error_response(422, validation_message(exc))


def create_app(service: ScoringService, config: ServerConfig, metrics: Metrics) -> FastAPI:
    # FastAPIOffline: /docs and /redoc load Swagger UI and ReDoc from this process (the assets
    # ship in the fastapi-offline package), not from a CDN that a GPU cluster cannot reach.
    app = FastAPIOffline(
        title="tokenweight scorer",
        version=tokenweight.__version__,
        description="Per-token long- vs short-context log-probabilities (same engine as gRPC).",
    )
    app.state.service, app.state.config, app.state.metrics = service, config, metrics
    app.state.token = BearerToken(config.auth_token) if config.auth_token else None
    app.state.max_body = body_limit(config)
    # Large bodies parse in their own process (see http_body); spawned, not forked, as the
    # process runs gRPC's threads. It starts at the first large body.
    app.state.body_parser = ProcessPoolExecutor(1, multiprocessing.get_context("spawn"))
    app.include_router(router)
    app.add_middleware(UnexpectedErrors)
    if app.state.token and not config.open_operational_paths:
        app.add_middleware(
            TokenOnOperationalPaths, token=app.state.token, refuse=_service_error_response
        )
    app.add_middleware(RequestMetrics, metrics=metrics)
    app.add_middleware(SecurityHeaders)
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(ClientGone, _client_gone)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(ValidationError, _validation_error)
    return app
