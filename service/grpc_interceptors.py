"""Server interceptors of the Scorer service: call metrics, and the catch-all that turns an
unexpected exception into INTERNAL with a logged traceback (never gRPC's bare UNKNOWN).

Both wrap every call of a method in an async context manager (`around_calls`), so unary and
streaming calls are handled by one piece of code.
"""

import asyncio
import contextlib
import inspect
import logging
import time

import grpc

from tokenweight.v1 import scorer_pb2

from .metrics import Metrics

log = logging.getLogger(__name__)

SERVICE_NAME = scorer_pb2.DESCRIPTOR.services_by_name["Scorer"].full_name


def around_calls(handler: grpc.RpcMethodHandler, around) -> grpc.RpcMethodHandler:
    """`handler` with each call run inside `around(context)`, an async context manager."""
    if handler.unary_unary:
        behavior = handler.unary_unary

        async def unary(request, context):
            async with around(context):
                return await behavior(request, context)

        return grpc.unary_unary_rpc_method_handler(
            unary, handler.request_deserializer, handler.response_serializer
        )
    behavior = handler.stream_stream

    async def stream(request_iterator, context):
        async with around(context):
            responses = behavior(request_iterator, context)
            if inspect.isasyncgen(responses):
                async for response in responses:
                    yield response
            else:  # a handler that writes with context.write (or only aborts)
                await responses

    return grpc.stream_stream_rpc_method_handler(
        stream, handler.request_deserializer, handler.response_serializer
    )


class _ScorerInterceptor(grpc.aio.ServerInterceptor):
    """Wraps the Scorer service's methods (not health or reflection) in `self.around`."""

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or not details.method.startswith(f"/{SERVICE_NAME}/"):
            return handler
        method = details.method.rsplit("/", 1)[-1]
        return around_calls(handler, lambda context: self.around(method, context))

    def around(self, method: str, context):
        raise NotImplementedError


class GrpcMetricsInterceptor(_ScorerInterceptor):
    """Counts calls of the Scorer service by status code and times them."""

    def __init__(self, metrics: Metrics):
        self._metrics = metrics

    @contextlib.asynccontextmanager
    async def around(self, method: str, context):
        start = time.perf_counter()
        try:
            yield
        except BaseException as exc:
            self._record(method, context, exc, start)
            raise
        self._record(method, context, None, start)

    def _record(self, method: str, context, exc: BaseException | None, start: float) -> None:
        code = context.code()
        if code is None:
            code = (
                grpc.StatusCode.OK if exc is None
                else grpc.StatusCode.CANCELLED if isinstance(exc, asyncio.CancelledError)
                else grpc.StatusCode.UNKNOWN
            )
        self._metrics.grpc_requests.labels(method, code.name).inc()
        self._metrics.grpc_latency.labels(method).observe(time.perf_counter() - start)


class GrpcInternalErrorInterceptor(_ScorerInterceptor):
    """An exception no handler expected ends the call with INTERNAL and its type and message;
    the traceback goes to the log."""

    @contextlib.asynccontextmanager
    async def around(self, method: str, context):
        try:
            yield
        except grpc.aio.AbortError:  # a handler's own, deliberate status
            raise
        except Exception as exc:
            log.exception("%s failed", method)
            await context.abort(
                grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"
            )
