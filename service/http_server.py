"""uvicorn serving the FastAPI app inside the process's own event loop (next to gRPC)."""

import asyncio
import contextlib
import functools
import socket

import uvicorn
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from .config import ServerConfig
from .http_app import CLIENT_CLOSED, create_app
from .http_protocol import GuardedH11Protocol
from .metrics import Metrics
from .scoring import ScoringService, current_client


class _Server(uvicorn.Server):
    # The serve command owns SIGTERM/SIGINT (it drains both front ends); uvicorn must not
    # install handlers of its own or re-raise the signal after shutting down.
    @contextlib.contextmanager
    def capture_signals(self):
        yield


class _ClientAddress:
    """ASGI middleware: the connection's address is the client the batcher shares its
    queue by (see Batcher), as a gRPC peer is."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        client = scope.get("client")
        if client:
            current_client.set(f"http:{client[0]}:{client[1]}")
        await self.app(scope, receive, send)


async def _client_gone(request, exc):
    # A client that disconnects while its body is read (or that the body deadline cut
    # off) is no server error: no traceback, and counted as 499 like other departures.
    return Response(status_code=CLIENT_CLOSED)


class HttpFrontEnd:
    def __init__(self, service: ScoringService, config: ServerConfig, metrics: Metrics):
        family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
        # Bound here, so port 0 gives an ephemeral port the caller can read at once. The
        # protocol must be IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on accepted
        # sockets that say so, and without it every response after the first on a
        # kept-alive connection waits ~40 ms for the client's delayed ACK.
        self._socket = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._socket.bind((config.host, config.http_port))
        except OSError as exc:
            self._socket.close()
            raise OSError(
                f"cannot bind the HTTP server to {config.host}:{config.http_port}: "
                f"{exc.strerror}; choose another port with --http-port"
            ) from None
        self.port = self._socket.getsockname()[1]
        self._app = app = create_app(service, config, metrics)
        app.add_exception_handler(ClientDisconnect, _client_gone)
        self._server = _Server(
            uvicorn.Config(
                _ClientAddress(app),
                http=functools.partial(
                    GuardedH11Protocol,
                    header_timeout=config.http_header_timeout_s,
                    body_timeout=config.http_body_timeout_s,
                    max_connections=config.http_max_connections,
                ),
                lifespan="off",
                log_config=None,
                access_log=False,
                ssl_certfile=config.tls_cert,
                ssl_keyfile=config.tls_key,
                timeout_keep_alive=config.http_keep_alive_s,
            )
        )
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._server.serve(sockets=[self._socket]))
        while not self._server.started:
            if self._task.done():
                await self._task  # raises why uvicorn could not start
                raise RuntimeError("uvicorn exited during startup")
            await asyncio.sleep(0.01)

    async def stop(self, timeout: float) -> None:
        """Stop accepting, let requests in progress finish for up to `timeout` seconds, then
        cancel them."""
        self._server.config.timeout_graceful_shutdown = max(timeout, 0.0)
        self._server.should_exit = True
        if self._task:
            await self._task
        self._app.state.body_parser.shutdown(wait=False, cancel_futures=True)
