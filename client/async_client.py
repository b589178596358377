"""`AsyncScorerClient`: the asyncio (grpc.aio) twin of `ScorerClient`, for one event loop.

Same constructor, same retry, failover and pipelining semantics; see ScorerClient.
"""

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Sequence

import grpc
import grpc.aio

from tokenweight import wire
from tokenweight.v1 import scorer_pb2

from .channels import ChannelClient
from .errors import ScorerError
from .pipeline import Pipeline
from .score_request import make_request
from .retry import RetryState

_END = object()


class AsyncScorerClient(ChannelClient):
    """Create it inside the event loop that uses it (grpc.aio channels belong to a loop)."""

    grpc_module = grpc.aio

    async def score(
        self,
        sequences: Sequence,
        window: int | None = None,
        stride: int | None = None,
        scorer: str | None = None,
        outputs: Iterable[str] | None = None,
        timeout: float | None = None,
    ) -> wire.ScoreResult:
        outputs = None if outputs is None else tuple(outputs)
        request = make_request(
            sequences, request_id=self._ids(), window=window, stride=stride, scorer=scorer, outputs=outputs
        )
        return wire.parse_response(await self._call("Score", request, timeout), outputs)

    async def list_scorers(self, timeout: float | None = None) -> list[wire.ScorerInfo]:
        response = await self._call("ListScorers", scorer_pb2.ListScorersRequest(), timeout)
        return [wire.ScorerInfo.from_message(info) for info in response.scorers]

    async def score_many(
        self,
        requests: Iterable[Sequence] | AsyncIterable[Sequence],
        *,
        window: int | None = None,
        stride: int | None = None,
        scorer: str | None = None,
        outputs: Iterable[str] | None = None,
        max_in_flight: int = 16,
        timeout: float | None = None,
    ) -> AsyncIterator[wire.ScoreResult]:
        """Pipelined scoring on one ScoreStream, results in request order (see
        ScorerClient.score_many); `requests` may be a sync or an async iterable."""
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        outputs = None if outputs is None else tuple(outputs)
        source = _items(requests)
        pipeline = Pipeline(outputs, self.retry.retry_on)
        state = RetryState(self.retry)
        exhausted = False
        try:
            while True:
                member = self._pool.pick()
                pipeline.endpoint = member.endpoint.url
                # grpc.aio's own task sends what is put here; None ends the requests.
                outbox: asyncio.Queue = asyncio.Queue()
                for request in pipeline.unanswered():
                    outbox.put_nowait(request)
                call = member.stub.ScoreStream(_drain(outbox), timeout=timeout, metadata=self._metadata)
                # grpc.aio forbids call.read() when requests come from an iterator.
                responses = aiter(call)
                half_closed = False
                try:
                    while True:
                        while not exhausted and pipeline.window < max_in_flight:
                            item = await anext(source, _END)
                            if item is _END:
                                exhausted = True
                                break
                            request = make_request(
                                item, request_id=self._ids(), window=window, stride=stride,
                                scorer=scorer, outputs=outputs,
                            )
                            outbox.put_nowait(pipeline.add(request))
                        if exhausted and not half_closed:
                            outbox.put_nowait(None)
                            half_closed = True
                        if not pipeline.waiting:
                            async for response in responses:  # the rest: the final status
                                pipeline.answer(response)
                            self._pool.mark_up(member)
                            return
                        response = await anext(responses, None)
                        if response is None:
                            raise ScorerError(
                                grpc.StatusCode.UNAVAILABLE,
                                f"the server ended the stream with {len(pipeline.unanswered())} "
                                "requests unanswered",
                                endpoint=member.endpoint.url,
                            )
                        pipeline.answer(response)
                        state.reset()
                        for result in pipeline.ready():
                            yield result
                except (grpc.RpcError, ScorerError) as exc:
                    delay = self._retry_delay(member, exc, state)
                finally:
                    call.cancel()  # before the backoff, so the server stops work on it now
                await asyncio.sleep(delay)
        finally:
            await source.aclose()

    async def _call(self, method: str, request, timeout: float | None):
        timeout = self.timeout if timeout is None else timeout
        state = RetryState(self.retry)
        while True:
            member = self._pool.pick()
            rpc = getattr(member.stub, method)
            try:
                response = await rpc(request, timeout=state.attempt_timeout(timeout), metadata=self._metadata)
            except grpc.RpcError as exc:
                await asyncio.sleep(self._retry_delay(member, exc, state))
            else:
                self._pool.mark_up(member)
                return response

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()

    async def __aenter__(self) -> "AsyncScorerClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


async def _items(requests):
    """Either kind of iterable as one async iterator."""
    if isinstance(requests, AsyncIterable):
        async for item in requests:
            yield item
    else:
        for item in requests:
            yield item


async def _drain(outbox: asyncio.Queue):
    while (request := await outbox.get()) is not None:
        yield request
