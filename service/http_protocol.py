"""uvicorn's h11 protocol with the limits uvicorn lacks: a deadline for each request's
headers and body, and a cap on open connections.

uvicorn's keep-alive timer is cancelled by any byte received, so a client that sends half
a request (or one byte at a time) holds its connection and file descriptor forever. Here a
request's headers must arrive within `header_timeout` of the connection opening (or of the
previous response), and its body within `body_timeout` of the headers; a connection past
either gets 408 (JSON, as every error here) and is closed. The application sees that as a
client disconnect. Connections beyond `max_connections` get 503 and are closed before
anything is read. uvicorn's `limit_concurrency` does not serve for this: it keeps the
connection open and answers only once a full request arrived.
"""

import asyncio
import json

from uvicorn.protocols.http.h11_impl import H11Protocol


def _canned(status: str, message: str, retry_after: int | None = None) -> bytes:
    body = json.dumps({"error": message}).encode()
    headers = [
        f"HTTP/1.1 {status}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        "connection: close",
    ]
    if retry_after is not None:
        headers.append(f"retry-after: {retry_after}")
    return ("\r\n".join(headers) + "\r\n\r\n").encode() + body


class GuardedH11Protocol(H11Protocol):
    def __init__(
        self, *args, header_timeout: float, body_timeout: float, max_connections: int, **kwargs
    ):
        super().__init__(*args, **kwargs)
        self._header_timeout, self._body_timeout = header_timeout, body_timeout
        self._max_connections = max_connections
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self._max_connections:
            message = (
                f"the server has {self._max_connections} connections open, its limit; retry shortly"
            )
            transport.write(_canned("503 Service Unavailable", message, retry_after=1))
            transport.close()
            return
        self._arm(self._header_timeout, "the request headers did not arrive")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle:  # the headers of a new request arrived
            self._arm(self._body_timeout, "the request body did not arrive")
        if self.cycle is not None and not self.cycle.more_body:
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # Unless a pipelined request already started, the next request's headers are due.
        if not self.transport.is_closing() and self.cycle.response_complete:
            self._arm(self._header_timeout, "the request headers did not arrive")

    def _arm(self, seconds: float, what: str) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(
            seconds, self._expired, f"{what} within {seconds:g} s"
        )

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self, message: str) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        idle = self.cycle is None or self.cycle.response_complete
        if idle or not self.cycle.response_started:
            self.transport.write(_canned("408 Request Timeout", message))
        self.transport.close()
