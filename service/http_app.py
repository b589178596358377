"""The HTTP front end (DESIGN §4): FastAPI over the same scoring core as gRPC.

JSON or msgpack by Content-Type / Accept; errors are always JSON `{"error": "..."}`.
Only this module, `http_server` and `analysis` import the web stack, so the engine and the
gRPC path run without it.
"""

import asyncio
import json
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import parse_qs

import msgpack
import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException

import tokenweight
from tokenweight.client.wire import OUTPUT_NAMES

from . import analysis
from .auth import BearerToken
from .config import ServerConfig
from .engine import ALL_OUTPUTS, Outputs
from .errors import HTTP_STATUS, InvalidArgument, ServiceError
from .http_models import ErrorBody, ScoreBody, ScoreResponseBody, ScorersBody
from .metrics import Metrics
from .scoring import SERVING, ScoringService
from .text import tokenize

MSGPACK_TYPES = ("application/msgpack", "application/x-msgpack", "application/vnd.msgpack")
# How often a waiting request checks whether its client is still there.
DISCONNECT_POLL_S = 0.05
# nginx's "client closed request": nobody reads it, but metrics count it apart from errors.
CLIENT_CLOSED = 499
# Seconds a client told 429 or 503 should wait before trying again.
RETRY_AFTER_S = "1"

_ERRORS = {
    code: {"model": ErrorBody}
    for code in (400, 401, 404, 413, 422, 429, 503)
}
_SCORE_SCHEMA = ScoreBody.model_json_schema()
# The route parses the body itself (JSON or msgpack), so the request schema is declared here.
_SCORE_OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {t: {"schema": _SCORE_SCHEMA} for t in ("application/json", MSGPACK_TYPES[0])},
    }
}


def body_limit(config: ServerConfig) -> int:
    """Bytes of the largest score body accepted: ~12 characters per token id in JSON."""
    return 16 * config.max_request_tokens + 8 * config.max_sequences + (64 << 10)


class RequestMetrics:
    """Counts requests by route and status and times them.

    A plain ASGI middleware rather than `@app.middleware("http")`: Starlette's
    BaseHTTPMiddleware hides the client's disconnect from the endpoint, and the score route
    needs to see it to drop abandoned requests.
    """

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = 500

        async def send_counted(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_counted)
        finally:
            # The router records the matched route in the shared scope.
            route = scope.get("route")
            path = route.path if route is not None else "unmatched"
            self.metrics.http_requests.labels(path, str(status)).inc()
            self.metrics.http_latency.labels(path).observe(time.perf_counter() - start)


class ClientGone(Exception):
    """The HTTP client disconnected before its answer was ready."""


async def unless_disconnected(request: Request, work):
    """Await `work`, cancelling it if the client disconnects first.

    A client that gave up (its own timeout, a closed tab) gets its request dropped from the
    batcher's queue before it reaches the engine, as a cancelled gRPC call does.
    """
    task = asyncio.ensure_future(work)
    while True:
        done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
        if done:
            return task.result()
        if await request.is_disconnected():
            task.cancel()
            raise ClientGone()


def _is_msgpack(header: str | None) -> bool:
    return any(t in (header or "") for t in MSGPACK_TYPES)


def _error(status: int, message: str, **headers) -> JSONResponse:
    return JSONResponse({"error": message}, status, headers=headers or None)


def _validation_message(exc) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{loc}: {err['msg']}" if loc else err["msg"])
    return "invalid request body: " + "; ".join(parts)


def create_app(service: ScoringService, config: ServerConfig, metrics: Metrics) -> FastAPI:
    app = FastAPI(
        title="tokenweight scorer",
        version=tokenweight.__version__,
        description="Per-token long- vs short-context log-probabilities (same engine as gRPC).",
    )
    token = BearerToken(config.auth_token) if config.auth_token else None
    max_body = body_limit(config)
    # Tokenizers are not safe to share between threads; one thread keeps the loop free.
    tokenizer_thread = ThreadPoolExecutor(1, thread_name_prefix="tokenweight-tokenizer")

    def require_token(request: Request) -> None:
        if token:
            token.check(request.headers.get("authorization"))

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > max_body:
            raise HTTPException(413, _too_large(int(declared)))
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body:
                raise HTTPException(413, _too_large(size))
            chunks.append(chunk)
        return b"".join(chunks)

    def _too_large(size: int) -> str:
        return (
            f"the body has {size}+ bytes; this server accepts at most {max_body} "
            f"(about {config.max_request_tokens} tokens). Split the request"
        )

    async def score_body(body: ScoreBody) -> dict:
        """Score a validated body; the one path behind POST /v1/score and the analysis page."""
        tokens = None
        if body.text is not None:
            scorer = service.scorer(body.scorer)
            if scorer.tokenizer is None:
                raise InvalidArgument(
                    f"scorer {scorer.config.name!r} has no tokenizer (none in its checkpoint "
                    "directory); send token_ids instead of text"
                )
            texts = [body.text] if isinstance(body.text, str) else body.text
            loop = asyncio.get_running_loop()
            ids, tokens = await loop.run_in_executor(tokenizer_thread, tokenize, scorer.tokenizer, texts)
        else:
            ids = body.token_ids
        arrays = []
        for i, seq in enumerate(ids):
            try:
                arrays.append(np.array(seq, dtype=np.int64))
            except OverflowError:
                raise InvalidArgument(f"sequence {i} has a token id that does not fit in int64") from None
        outputs = (
            Outputs(*(name in body.outputs for name in OUTPUT_NAMES)) if body.outputs else ALL_OUTPUTS
        )
        scored = await service.score(body.scorer, arrays, body.window, body.stride, outputs)
        return {
            "scorer": scored.scorer,
            "fingerprint": scored.fingerprint,
            "window": scored.window,
            "stride": scored.stride,
            "results": [
                {
                    "token_ids": arr.tolist(),
                    "tokens": tokens[i] if tokens else None,
                    **{
                        name: None if getattr(r, name) is None else getattr(r, name).tolist()
                        for name in OUTPUT_NAMES
                    },
                }
                for i, (arr, r) in enumerate(zip(arrays, scored.results))
            ],
        }

    def encode(payload: dict, request: Request) -> Response:
        if _is_msgpack(request.headers.get("accept")):
            # Scores are float32, so single-precision msgpack floats are exact.
            return Response(msgpack.packb(payload, use_single_float=True), media_type=MSGPACK_TYPES[0])
        return JSONResponse(payload)

    @app.post(
        "/v1/score",
        response_model=ScoreResponseBody,
        responses=_ERRORS,
        openapi_extra=_SCORE_OPENAPI,
        dependencies=[Depends(require_token)],
        summary="Score sequences (JSON or msgpack)",
    )
    async def score(request: Request):
        raw = await read_body(request)
        if _is_msgpack(request.headers.get("content-type")):
            try:
                data = msgpack.unpackb(raw, raw=False)
            except Exception as exc:
                raise HTTPException(400, f"the body is not valid msgpack: {exc}") from None
        else:
            try:
                data = json.loads(raw)
            except ValueError as exc:
                raise HTTPException(400, f"the body is not valid JSON: {exc}") from None
        body = ScoreBody.model_validate(data)
        return encode(await unless_disconnected(request, score_body(body)), request)

    @app.get(
        "/v1/scorers", response_model=ScorersBody, responses=_ERRORS,
        dependencies=[Depends(require_token)],
    )
    async def scorers():
        return {"default_scorer": service.default_scorer, "scorers": service.info()}

    @app.get("/healthz", summary="Liveness: the process answers")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: models loaded and not draining", responses=_ERRORS)
    async def readyz():
        if service.state != SERVING:
            return _error(503, f"not ready: the server is {service.state}", **{"Retry-After": RETRY_AFTER_S})
        return {"status": SERVING}

    @app.get("/metrics", summary="Prometheus metrics")
    async def prometheus():
        return Response(metrics.exposition(), media_type=metrics.content_type)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return _page()

    @app.post("/", response_class=HTMLResponse, include_in_schema=False)
    async def page_scored(request: Request):
        form = {k: v[-1] for k, v in parse_qs((await read_body(request)).decode("utf-8", "replace")).items()}
        try:
            if token:
                token.check_token(form.get("token", ""))
            body = ScoreBody(
                text=form.get("text", ""),
                scorer=form.get("scorer", ""),
                window=int(form.get("window") or 0),
                stride=int(form.get("stride") or 0),
            )
            return _page(form, await unless_disconnected(request, score_body(body)))
        except ServiceError as exc:
            return _page(form, error=exc.message, status=HTTP_STATUS[exc.status])
        except (ValueError, ValidationError) as exc:
            return _page(form, error=f"invalid input: {exc}", status=422)

    def _page(form: dict | None = None, result: dict | None = None, error: str | None = None, status: int = 200):
        names = list(service.scorers) if service.state == SERVING else []
        html = analysis.render(names, form or {}, result, error, ask_token=token is not None)
        return HTMLResponse(html, status)

    app.add_middleware(RequestMetrics, metrics=metrics)

    @app.exception_handler(ServiceError)
    async def service_error(request, exc: ServiceError):
        status = HTTP_STATUS[exc.status]
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else {}
        if status in (429, 503):  # a full queue or a draining server: worth a retry soon
            headers["Retry-After"] = RETRY_AFTER_S
        return _error(status, exc.message, **headers)

    @app.exception_handler(HTTPException)
    async def http_error(request, exc: HTTPException):
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(ClientGone)
    async def client_gone(request, exc):
        return Response(status_code=CLIENT_CLOSED)

    @app.exception_handler(RequestValidationError)
    @app.exception_handler(ValidationError)
    async def validation_error(request, exc):
        return _error(422, _validation_message(exc))

    return app

