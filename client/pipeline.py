"""Bookkeeping for pipelined scoring on one ScoreStream (sync and async clients alike).

Responses may come back in any order; they are matched to requests by `request_id` and
handed back in request order. Requests stay here until answered, so that after a broken
stream the unanswered ones can be sent again on a new one.

A request the server answers with an error: when its code is retryable (a full queue, a
draining server) `answer` raises ScorerError at once and the client treats it like a broken
stream (back off, reopen, resend what is unanswered), so a struggling server sees one
backoff per stream rather than one per request. Any other error is raised by `ready` at
that request's turn, after every earlier result was handed back.
"""

from collections.abc import Iterator

import grpc

from tokenweight import wire
from tokenweight.v1 import scorer_pb2

from .errors import ScorerError
from .retry import is_retryable


class Pipeline:
    def __init__(self, outputs: tuple[str, ...] | None, retry_on: frozenset, endpoint: str = ""):
        self._outputs = outputs
        self._retry_on = retry_on
        self._unanswered: dict[str, tuple[int, scorer_pb2.ScoreRequest]] = {}
        self._answered: dict[int, wire.ScoreResult | ScorerError] = {}
        self._added = 0
        self._handed = 0
        self.endpoint = endpoint

    @property
    def window(self) -> int:
        """Requests taken from the caller and not yet handed back: bounds the memory held."""
        return self._added - self._handed

    @property
    def waiting(self) -> bool:
        """Some request has been sent and not answered."""
        return bool(self._unanswered)

    def add(self, request: scorer_pb2.ScoreRequest) -> scorer_pb2.ScoreRequest:
        self._unanswered[request.request_id] = (self._added, request)
        self._added += 1
        return request

    def unanswered(self) -> list[scorer_pb2.ScoreRequest]:
        """What to send again on a new stream, in the original order."""
        return [request for _, request in sorted(self._unanswered.values(), key=lambda x: x[0])]

    def answer(self, response: scorer_pb2.ScoreResponse) -> None:
        entry = self._unanswered.pop(response.request_id, None)
        if entry is None:
            raise ScorerError(
                grpc.StatusCode.INTERNAL,
                f"the server answered request_id {response.request_id!r}, which is not waiting "
                "for an answer on this stream",
                endpoint=self.endpoint,
            )
        index, _ = entry
        try:
            self._answered[index] = wire.parse_response(response, self._outputs)
        except wire.ScoreStreamError as exc:
            error = ScorerError(
                exc.code,
                f"request {index} of the stream (request_id {exc.request_id!r}): {exc.message}",
                endpoint=self.endpoint,
            )
            error.__cause__ = exc
            if not is_retryable(exc, self._retry_on):
                self._answered[index] = error
                return
            self._unanswered[response.request_id] = entry  # to be sent again
            raise error

    def ready(self) -> Iterator[wire.ScoreResult]:
        """Answered results that are next in request order; raises a failed one's error."""
        while self._handed in self._answered:
            result = self._answered.pop(self._handed)
            self._handed += 1
            if isinstance(result, ScorerError):
                raise result
            yield result
