"""uvicorn serving the FastAPI app inside the process's own event loop (next to gRPC)."""

import asyncio
import contextlib
import socket

import uvicorn

from .config import ServerConfig
from .http_app import create_app
from .metrics import Metrics
from .scoring import ScoringService


class _Server(uvicorn.Server):
    # The serve command owns SIGTERM/SIGINT (it drains both front ends); uvicorn must not
    # install handlers of its own or re-raise the signal after shutting down.
    @contextlib.contextmanager
    def capture_signals(self):
        yield


class HttpFrontEnd:
    def __init__(self, service: ScoringService, config: ServerConfig, metrics: Metrics):
        family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
        # Bound here, so port 0 gives an ephemeral port the caller can read at once.
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((config.host, config.http_port))
        self.port = self._socket.getsockname()[1]
        self._server = _Server(
            uvicorn.Config(
                create_app(service, config, metrics),
                lifespan="off",
                log_config=None,
                access_log=False,
                ssl_certfile=config.tls_cert,
                ssl_keyfile=config.tls_key,
                timeout_graceful_shutdown=max(1, int(config.grace_s)),
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

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._task:
            await self._task
