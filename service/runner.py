"""One serving process: the scoring core, the gRPC front end and (optionally) HTTP.

Lifecycle: `start` binds both front ends with health NOT_SERVING, `load` loads the models
off the event loop and flips health to SERVING, `shutdown` drains (health NOT_SERVING, new
requests UNAVAILABLE, in-flight ones finish within the grace period) and stops.
"""

import asyncio

from .config import ServeConfig
from .grpc_server import GrpcFrontEnd
from .metrics import Metrics
from .scorers import Scorer, load_scorers
from .scoring import ScoringService


_FLUSH_S = 1.0


class ScorerServer:
    def __init__(self, config: ServeConfig):
        self.config = config
        self.metrics = Metrics()
        self.service = ScoringService(config.server, self.metrics)
        self.grpc: GrpcFrontEnd | None = None
        self.http = None

    async def start(self) -> None:
        self.grpc = GrpcFrontEnd(self.service, self.config.server, self.metrics)
        await self.grpc.start()
        if self.config.server.http:
            # Imported only here: the gRPC-only deployment needs no web stack.
            from .http_server import HttpFrontEnd

            self.http = HttpFrontEnd(self.service, self.config.server, self.metrics)
            await self.http.start()

    async def load(self, scorers: dict[str, Scorer] | None = None) -> None:
        """Load the configured scorers (or install already loaded ones) and start serving."""
        if scorers is None:
            scorers = await asyncio.to_thread(load_scorers, self.config.scorers)
        self.service.install(scorers, self.config.default_scorer)
        await self.grpc.set_serving(True)

    async def shutdown(self, grace: float | None = None) -> bool:
        """Drain and stop within `grace` seconds in all; True if every in-flight request
        finished in time.

        The last part of the grace (up to `_FLUSH_S`) is kept for the end: whatever is still
        queued or scoring then fails as UNAVAILABLE (HTTP 503, which clients retry
        elsewhere), the engine drops the rest of its batch at its next forward call, and the
        front ends get that time to send those answers and close.
        """
        grace = self.config.server.grace_s if grace is None else grace
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        flush = min(_FLUSH_S, grace / 4)
        if self.grpc:
            await self.grpc.drain()
        drained = await self.service.drain(grace - flush)
        await self.service.close()
        left = max(deadline - loop.time(), 0.0)
        # Open streams (a trainer keeps one open all the time) have nothing left to wait
        # for: they are cancelled after the flush and clients fail over.
        stops = [self.grpc.stop(min(left, flush))] if self.grpc else []
        if self.http:
            stops.append(self.http.stop(left))
        await asyncio.gather(*stops)
        return drained

    def addresses(self) -> str:
        host = self.config.server.host
        parts = [f"grpc={host}:{self.grpc.port}"]
        if self.http:
            parts.append(f"http={host}:{self.http.port}")
        return " ".join(parts)
