"""`HttpScorerClient`: the HTTP API (docs/DESIGN.md §4) for ad-hoc use, in JSON or msgpack.

The gRPC clients are the ones for training traffic; this one also scores raw text, which the
server tokenizes with the scorer's own tokenizer.
"""

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import msgpack
import numpy as np

from tokenweight import wire

from .errors import ScorerError
from .retry import RetryPolicy, RetryState
from .urls import parse_url

MEDIA_TYPES = {"json": "application/json", "msgpack": "application/msgpack"}


@dataclass
class HttpTokenScores(wire.Scores):
    """wire.Scores plus the token ids scored and, for text input, the decoded tokens."""

    token_ids: np.ndarray | None = None
    tokens: list[str] | None = None


class HttpScorerClient:
    """`url`: http://HOST:PORT or https://HOST:PORT. `format`: "msgpack" (compact) or "json".
    `verify`: for https, True (system roots), False, or a CA bundle path. Retries as the gRPC
    clients do, with HTTP 429/502/503/504 and connection failures as the retryable codes."""

    def __init__(
        self,
        url: str,
        *,
        format: str = "msgpack",
        timeout: float | None = 60.0,
        retry: RetryPolicy | None = None,
        token: str | None = None,
        verify: bool | str | Path = True,
        transport: httpx.BaseTransport | None = None,
    ):
        endpoint = parse_url(url)
        if endpoint.is_grpc:
            raise ValueError(f"{url} is a gRPC URL; use ScorerClient, or http:// / https://")
        if format not in MEDIA_TYPES:
            raise ValueError(f"format must be one of {sorted(MEDIA_TYPES)}")
        self.url = url.rstrip("/")
        self.format = format
        self.retry = retry or RetryPolicy()
        headers = {"accept": MEDIA_TYPES[format]}
        if token:
            headers["authorization"] = f"Bearer {token}"
        self._http = httpx.Client(
            base_url=self.url,
            headers=headers,
            timeout=timeout,
            verify=str(verify) if isinstance(verify, Path) else verify,
            transport=transport,
        )

    def score(
        self,
        sequences: Sequence | None = None,
        *,
        text: str | Sequence[str] | None = None,
        window: int | None = None,
        stride: int | None = None,
        scorer: str | None = None,
        outputs: Iterable[str] | None = None,
        timeout: float | None = None,
    ) -> wire.ScoreResult:
        """Token-id `sequences` or `text` (one string or a list), exactly one of the two.
        `outputs` as for ScorerClient.score. Results are HttpTokenScores; `request_id` is
        empty (HTTP has none)."""
        if (sequences is None) == (text is None):
            raise ValueError("pass either sequences (token ids) or text, not both")
        body: dict = {}
        if sequences is not None:
            body["token_ids"] = [np.asarray(seq).tolist() for seq in sequences]
        else:
            body["text"] = text
        for key, value in (("scorer", scorer), ("window", window), ("stride", stride)):
            if value:
                body[key] = value
        if outputs is not None:
            body["outputs"] = list(outputs)
            wire.output_selection(body["outputs"])  # refuses unknown names before sending
        data = self._request("POST", "/v1/score", body, timeout)
        return wire.ScoreResult(
            request_id="",
            scorer=data.get("scorer", ""),
            fingerprint=data.get("fingerprint", ""),
            window=data.get("window", 0),
            stride=data.get("stride", 0),
            results=[_token_scores(item) for item in data["results"]],
        )

    def list_scorers(self, timeout: float | None = None) -> list[wire.ScorerInfo]:
        data = self._request("GET", "/v1/scorers", None, timeout)
        return [wire.ScorerInfo.from_dict(info) for info in data["scorers"]]

    def _request(self, method: str, path: str, body: dict | None, timeout: float | None) -> dict:
        content, headers = None, {}
        if body is not None:
            content = msgpack.packb(body) if self.format == "msgpack" else json.dumps(body)
            headers["content-type"] = MEDIA_TYPES[self.format]
        extra = {} if timeout is None else {"timeout": timeout}
        state = RetryState(self.retry)
        while True:
            try:
                response = self._http.request(method, path, content=content, headers=headers, **extra)
                if response.is_success:
                    return _decode(response)
                error = ScorerError.from_http(response.status_code, _error_message(response), self.url)
            except httpx.TimeoutException as exc:
                error = ScorerError(grpc.StatusCode.DEADLINE_EXCEEDED, str(exc) or "timed out", endpoint=self.url)
            except httpx.TransportError as exc:
                error = ScorerError(grpc.StatusCode.UNAVAILABLE, str(exc) or type(exc).__name__, endpoint=self.url)
            delay = state.next_delay(error)
            if delay is None:
                raise error
            time.sleep(delay)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "HttpScorerClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _decode(response: httpx.Response):
    if response.headers.get("content-type", "").startswith(MEDIA_TYPES["msgpack"]):
        return msgpack.unpackb(response.content)
    return response.json()


def _error_message(response: httpx.Response) -> str:
    """The server's `{"error": ...}`, or the raw body from something else (a proxy)."""
    try:
        return str(_decode(response)["error"])
    except (ValueError, KeyError, TypeError):  # msgpack errors are ValueErrors too
        return response.text[:500] or response.reason_phrase


def _token_scores(item: dict) -> HttpTokenScores:
    arrays = {
        name: None if item.get(name) is None else np.asarray(item[name], dtype=np.float32)
        for name in wire.OUTPUT_NAMES
    }
    return HttpTokenScores(
        **arrays,
        token_ids=np.asarray(item["token_ids"], dtype=np.int32) if "token_ids" in item else None,
        tokens=item.get("tokens"),
    )
