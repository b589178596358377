"""The gRPC front end: `tokenweight.v1.Scorer`, standard health and server reflection.

The servicer is a thin translation between protobuf messages and the scoring core; auth,
metrics and the catch-all for unexpected failures are interceptors.
"""

import asyncio
import dataclasses
import logging
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from tokenweight import wire
from tokenweight.v1 import scorer_pb2, scorer_pb2_grpc

from .auth import BearerToken, GrpcAuthInterceptor
from .config import ServerConfig
from .engine import Outputs
from .errors import AlreadyExists, InvalidArgument, ServiceError
from .grpc_interceptors import SERVICE_NAME, GrpcInternalErrorInterceptor, GrpcMetricsInterceptor
from .grpc_messages import MalformedRequest, decode_request
from .metrics import Metrics
from .scoring import ScoringService

log = logging.getLogger(__name__)


class ScorerServicer(scorer_pb2_grpc.ScorerServicer):
    def __init__(self, service: ScoringService, stream_inflight: int):
        self._service = service
        self._stream_inflight = stream_inflight

    async def _score(self, request, context):
        if isinstance(request, MalformedRequest):
            raise InvalidArgument(request.message)
        try:
            sequences = wire.request_sequences(request)
        except wire.WireFormatError as exc:
            raise InvalidArgument(str(exc)) from None
        texts = [i for i, seq in enumerate(sequences) if isinstance(seq, str)]
        tokens: dict[int, list[str]] = {}
        if texts:
            ids, decoded = await self._service.tokenize(
                request.scorer, [sequences[i] for i in texts]
            )
            for i, seq_ids, seq_tokens in zip(texts, ids, decoded):
                sequences[i] = np.asarray(seq_ids, dtype=np.int64)
                tokens[i] = seq_tokens
        scored = await self._service.score(
            request.scorer,
            sequences,
            request.window,
            request.stride,
            Outputs(*wire.requested_outputs(request)),
            context.time_remaining(),
            # One share of the queue per connection (see Batcher).
            client=context.peer(),
        )
        results = [
            # replaced, not changed: a result may be the cache's own object
            dataclasses.replace(r, token_ids=sequences[i], tokens=tokens[i]) if i in tokens else r
            for i, r in enumerate(scored.results)
        ]
        return wire.build_response(
            request.request_id, scored.scorer, scored.fingerprint, scored.window,
            scored.stride, results,
        )

    async def Score(self, request, context):
        try:
            return await self._score(request, context)
        except ServiceError as exc:
            await context.abort(grpc.StatusCode[exc.status], exc.message)

    async def ScoreStream(self, request_iterator, context):
        """Every request is scored as soon as it arrives; responses go out as they finish.

        A failed request (malformed bytes included) gets a response carrying `error`; the
        stream and the other requests on it go on. At most `stream_inflight` requests are
        in flight: past that the stream is not read until a response has gone out, so a
        client that floods one stream is held back by flow control.
        """
        responses: asyncio.Queue = asyncio.Queue()
        slots = asyncio.Semaphore(self._stream_inflight)
        in_flight: set[str] = set()

        async def one(request):
            request_id = request.request_id
            try:
                if request_id and request_id in in_flight:
                    raise AlreadyExists(
                        f"request_id {request_id!r} is already in flight on this stream; give "
                        "each request on a stream its own id"
                    )
                in_flight.add(request_id)
                try:
                    response = await self._score(request, context)
                finally:
                    in_flight.discard(request_id)
            except ServiceError as exc:
                code = grpc.StatusCode[exc.status]
                response = wire.build_error_response(request_id, code, exc.message)
            except Exception as exc:  # a bug must not take the other requests down with it
                log.exception("ScoreStream request %r failed", request_id)
                message = f"internal error: {type(exc).__name__}: {exc}"
                response = wire.build_error_response(request_id, grpc.StatusCode.INTERNAL, message)
            await responses.put(response)

        async def read_all():
            try:
                async with asyncio.TaskGroup() as tasks:
                    async for request in request_iterator:
                        await slots.acquire()
                        tasks.create_task(one(request))
            finally:
                responses.put_nowait(None)

        reader = asyncio.create_task(read_all())
        try:
            while (response := await responses.get()) is not None:
                yield response
                slots.release()
            await reader  # surfaces an unexpected error from the reader
        finally:
            reader.cancel()

    async def ListScorers(self, request, context):
        try:
            infos = self._service.info()
        except ServiceError as exc:
            await context.abort(grpc.StatusCode[exc.status], exc.message)
        return scorer_pb2.ListScorersResponse(
            scorers=[info.to_message() for info in infos],
            default_scorer=self._service.default_scorer,
        )


class GrpcFrontEnd:
    """The gRPC server with health and reflection, bound to `config.host:config.grpc_port`."""

    def __init__(self, service: ScoringService, config: ServerConfig, metrics: Metrics):
        # The metrics interceptor is outermost, so it counts the INTERNAL the catch-all sets.
        interceptors = [GrpcMetricsInterceptor(metrics), GrpcInternalErrorInterceptor()]
        if config.auth_token:
            interceptors.append(GrpcAuthInterceptor(BearerToken(config.auth_token)))
        limit = wire.message_limit(config.max_request_tokens, config.max_sequences)
        self.server = grpc.aio.server(
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                # Without this a second server on the same port binds as well and the
                # kernel splits the calls between two different scorers.
                ("grpc.so_reuseport", 0),
            ],
        )
        _add_servicer(ScorerServicer(service, config.stream_inflight), self.server)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server
        )
        address = f"{config.host}:{config.grpc_port}"
        if config.tls_cert:
            credentials = grpc.ssl_server_credentials(
                [(Path(config.tls_key).read_bytes(), Path(config.tls_cert).read_bytes())]
            )
        else:
            credentials = None
        try:
            self.port = (
                self.server.add_secure_port(address, credentials)
                if credentials
                else self.server.add_insecure_port(address)
            )
        except RuntimeError:  # grpcio >= 1.85 raises where older versions returned 0
            self.port = 0
        if not self.port:
            raise OSError(
                f"cannot bind the gRPC server to {address}: is another server using port "
                f"{config.grpc_port}? choose another with --grpc-port"
            )

    async def start(self) -> None:
        await self.set_serving(False)
        await self.server.start()

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)

    async def drain(self) -> None:
        """Health says NOT_SERVING from now on, whatever is set later."""
        await self.health.enter_graceful_shutdown()

    async def stop(self, grace: float) -> None:
        await self.server.stop(grace)


def _add_servicer(servicer: ScorerServicer, server: grpc.aio.Server) -> None:
    """`add_ScorerServicer_to_server` with ScoreRequest bytes decoded by `decode_request`:
    gRPC's own decoding would fail a malformed message as UNKNOWN, and a stream with it."""
    respond = scorer_pb2.ScoreResponse.SerializeToString
    handlers = {
        "Score": grpc.unary_unary_rpc_method_handler(servicer.Score, decode_request, respond),
        "ScoreStream": grpc.stream_stream_rpc_method_handler(
            servicer.ScoreStream, decode_request, respond
        ),
        "ListScorers": grpc.unary_unary_rpc_method_handler(
            servicer.ListScorers,
            scorer_pb2.ListScorersRequest.FromString,
            scorer_pb2.ListScorersResponse.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)
