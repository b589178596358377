"""`ScorerClient`: the blocking gRPC client (thread-safe; one client per process is enough)."""

import queue
import time
from collections.abc import Iterable, Iterator, Sequence

import grpc

from tokenweight import wire
from tokenweight.v1 import scorer_pb2

from .channels import ChannelClient
from .errors import ScorerError
from .pipeline import Pipeline
from .score_request import make_request
from .retry import RetryState

_END = object()


class ScorerClient(ChannelClient):
    """Scores token sequences on one or more `grpc://` / `grpcs://` endpoints.

    `urls`: one URL, a comma-separated string, or a list; calls go round-robin and fail over
    from an endpoint that answers UNAVAILABLE (it is skipped for `endpoint_cooldown` s). A
    `dns:///NAME:PORT` or `ipv4:A:P,B:P` target is balanced by gRPC itself (urls.py).
    `timeout`: default per-attempt deadline in seconds (None: none). `retry`: see
    `RetryPolicy`. `token`: sent as `authorization: Bearer ...`. `root_certificates`: PEM
    bytes or a file path for grpcs:// (default: the system's roots); `tls_server_name`: the
    name in the server's certificate if it differs from the host dialled.
    """

    grpc_module = grpc

    def score(
        self,
        sequences: Sequence,
        window: int | None = None,
        stride: int | None = None,
        scorer: str | None = None,
        outputs: Iterable[str] | None = None,
        timeout: float | None = None,
    ) -> wire.ScoreResult:
        """Scores for each sequence, in order. `outputs`: a subset of ("score", "logp_long",
        "logp_short"), None for all; the others come back as None (asking for
        "logp_short" alone skips the long pass). Raises ScorerError."""
        outputs = None if outputs is None else tuple(outputs)
        request = make_request(
            sequences, request_id=self._ids(), window=window, stride=stride, scorer=scorer, outputs=outputs
        )
        return wire.parse_response(self._call("Score", request, timeout), outputs)

    def list_scorers(self, timeout: float | None = None) -> list[wire.ScorerInfo]:
        response = self._call("ListScorers", scorer_pb2.ListScorersRequest(), timeout)
        return [wire.ScorerInfo.from_message(info) for info in response.scorers]

    def score_many(
        self,
        requests: Iterable[Sequence],
        *,
        window: int | None = None,
        stride: int | None = None,
        scorer: str | None = None,
        outputs: Iterable[str] | None = None,
        max_in_flight: int = 16,
        timeout: float | None = None,
    ) -> Iterator[wire.ScoreResult]:
        """Pipelined scoring on one ScoreStream: each item of `requests` (a list of sequences)
        becomes one ScoreRequest; up to `max_in_flight` are taken ahead of the results handed
        back, which come in the order of `requests`.

        A stream that breaks with a retryable code is reopened (on the next endpoint) and its
        unanswered requests are sent again; the retry budget starts over whenever a response
        arrives. `timeout` bounds the whole stream (gRPC deadline semantics); default none.
        """
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        outputs = None if outputs is None else tuple(outputs)
        source = iter(requests)
        pipeline = Pipeline(outputs, self.retry.retry_on)
        state = RetryState(self.retry)
        exhausted = False
        while True:
            member = self._pool.pick()
            pipeline.endpoint = member.endpoint.url
            # gRPC's own thread sends what is put here; None ends the requests (half-close).
            outbox: queue.Queue = queue.Queue()
            for request in pipeline.unanswered():
                outbox.put(request)
            call = member.stub.ScoreStream(
                iter(outbox.get, None), timeout=timeout, metadata=self._metadata
            )
            half_closed = False
            try:
                while True:
                    while not exhausted and pipeline.window < max_in_flight:
                        item = next(source, _END)
                        if item is _END:
                            exhausted = True
                            break
                        request = make_request(
                            item, request_id=self._ids(), window=window, stride=stride,
                            scorer=scorer, outputs=outputs,
                        )
                        outbox.put(pipeline.add(request))
                    if exhausted and not half_closed:
                        outbox.put(None)
                        half_closed = True
                    if not pipeline.waiting:
                        for response in call:  # the rest of the stream: its final status
                            pipeline.answer(response)
                        self._pool.mark_up(member)
                        return
                    response = next(call, None)
                    if response is None:
                        raise ScorerError(
                            grpc.StatusCode.UNAVAILABLE,
                            f"the server ended the stream with {len(pipeline.unanswered())} "
                            "requests unanswered",
                            endpoint=member.endpoint.url,
                        )
                    pipeline.answer(response)
                    state.reset()
                    yield from pipeline.ready()
            except (grpc.RpcError, ScorerError) as exc:
                delay = self._retry_delay(member, exc, state)
            finally:
                outbox.put(None)  # lets gRPC's sending thread finish
                call.cancel()  # before the backoff, so the server stops work on it now
            time.sleep(delay)

    def _call(self, method: str, request, timeout: float | None):
        timeout = self.timeout if timeout is None else timeout
        state = RetryState(self.retry)
        while True:
            member = self._pool.pick()
            rpc = getattr(member.stub, method)
            try:
                response = rpc(request, timeout=state.attempt_timeout(timeout), metadata=self._metadata)
            except grpc.RpcError as exc:
                time.sleep(self._retry_delay(member, exc, state))
            else:
                self._pool.mark_up(member)
                return response

    def close(self) -> None:
        for channel in self._channels:
            channel.close()

    def __enter__(self) -> "ScorerClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
