"""The routes of the HTTP API (docs/DESIGN.md §4), as one `APIRouter`.

Everything a route needs lives on `request.app.state` (set by `http_app.create_app`): the
scoring `service`, the server `config`, the `metrics`, the bearer `token` (or None), the
largest body accepted (`max_body`) and the body parser process.
"""

import asyncio
from urllib.parse import parse_qs

import msgpack
from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from tokenweight.status import http_status
from tokenweight.wire import OUTPUT_NAMES

from . import analysis
from .engine import ALL_OUTPUTS, Outputs
from .errors import ServiceError
from .http_body import INLINE_BYTES, BodyError, ParsedScore, parse_score_body, token_arrays
from .http_hardening import PAGE_CSP
from .http_models import ErrorBody, ScoreBody, ScoreResponseBody, ScorersBody
from .scoring import SERVING

MSGPACK_TYPES = ("application/msgpack", "application/x-msgpack", "application/vnd.msgpack")
# How often a waiting request checks whether its client is still there.
DISCONNECT_POLL_S = 0.05
# Seconds a client told 429 or 503 should wait before trying again.
RETRY_AFTER_S = "1"

_ERRORS = {code: {"model": ErrorBody} for code in (400, 401, 404, 413, 422, 429, 503)}
_SCORE_SCHEMA = ScoreBody.model_json_schema()
# The route parses the body itself (JSON or msgpack), so the request schema is declared here.
_SCORE_OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {t: {"schema": _SCORE_SCHEMA} for t in ("application/json", MSGPACK_TYPES[0])},
    }
}


class ClientGone(Exception):
    """The HTTP client disconnected before its answer was ready."""


def require_token(request: Request) -> None:
    token = request.app.state.token
    if token:
        token.check(request.headers.get("authorization"))


router = APIRouter()
_guarded = [Depends(require_token)]


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


def error_response(status: int, message: str, **headers) -> JSONResponse:
    return JSONResponse({"error": message}, status, headers=headers or None)


async def read_body(request: Request) -> bytes:
    state = request.app.state
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > state.max_body:
        raise HTTPException(413, _too_large(state, int(declared)))
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > state.max_body:
            raise HTTPException(413, _too_large(state, size))
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(state, size: int) -> str:
    return (
        f"the body has {size}+ bytes; this server accepts at most {state.max_body} "
        f"(about {state.config.max_request_tokens} tokens). Split the request"
    )


async def parse_body(request: Request) -> ParsedScore:
    """The score body, parsed and validated; in the parser process when it is large, so the
    event loop (gRPC's too) keeps serving meanwhile."""
    raw = await read_body(request)
    is_msgpack = _is_msgpack(request.headers.get("content-type"))
    try:
        if len(raw) <= INLINE_BYTES:
            return parse_score_body(raw, is_msgpack)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            request.app.state.body_parser, parse_score_body, raw, is_msgpack
        )
    except BodyError as exc:
        raise HTTPException(exc.status, exc.message) from None


async def score_body(state, parsed: ParsedScore) -> dict:
    """Score a validated body; the one path behind POST /v1/score and the analysis page."""
    service, body = state.service, parsed.body
    tokens = None
    if body.text is not None:
        texts = [body.text] if isinstance(body.text, str) else body.text
        ids, tokens = await service.tokenize(body.scorer, texts)
        arrays = token_arrays(ids)
    else:
        arrays = parsed.arrays
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


def _encode(payload: dict, request: Request) -> Response:
    if _is_msgpack(request.headers.get("accept")):
        # Scores are float32, so single-precision msgpack floats are exact.
        return Response(
            msgpack.packb(payload, use_single_float=True), media_type=MSGPACK_TYPES[0]
        )
    return JSONResponse(payload)


@router.post(
    "/v1/score",
    response_model=ScoreResponseBody,
    responses=_ERRORS,
    openapi_extra=_SCORE_OPENAPI,
    dependencies=_guarded,
    summary="Score sequences (JSON or msgpack)",
)
async def score(request: Request):
    parsed = await parse_body(request)
    scored = await unless_disconnected(request, score_body(request.app.state, parsed))
    return _encode(scored, request)


@router.get("/v1/scorers", response_model=ScorersBody, responses=_ERRORS, dependencies=_guarded)
async def scorers(request: Request):
    service = request.app.state.service
    return {"default_scorer": service.default_scorer, "scorers": service.info()}


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz():
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: models loaded and not draining", responses=_ERRORS)
async def readyz(request: Request):
    service = request.app.state.service
    if service.state != SERVING:
        return error_response(
            503, f"not ready: the server is {service.state}", **{"Retry-After": RETRY_AFTER_S}
        )
    return {"status": SERVING}


@router.get("/metrics", summary="Prometheus metrics")
async def prometheus(request: Request):
    metrics = request.app.state.metrics
    return Response(metrics.exposition(), media_type=metrics.content_type)


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def page(request: Request):
    return _page(request.app.state)


@router.post("/", response_class=HTMLResponse, include_in_schema=False)
async def page_scored(request: Request):
    state = request.app.state
    raw = (await read_body(request)).decode("utf-8", "replace")
    form = {k: v[-1] for k, v in parse_qs(raw).items()}
    # Browsers submit a textarea's line breaks as CRLF (HTML form submission); the user typed
    # or pasted LF. Scoring the CRLF text would score other tokens than the API and the CLI do.
    form["text"] = form.get("text", "").replace("\r\n", "\n").replace("\r", "\n")
    try:
        if state.token:
            state.token.check_token(form.get("token", ""))
        body = ScoreBody(
            text=form.get("text", ""),
            scorer=form.get("scorer", ""),
            window=int(form.get("window") or 0),
            stride=int(form.get("stride") or 0),
        )
        scored = await unless_disconnected(request, score_body(state, ParsedScore(body, None)))
        return _page(state, form, scored)
    except ServiceError as exc:
        return _page(state, form, error=exc.message, status=http_status(exc.status))
    except (ValueError, ValidationError) as exc:
        return _page(state, form, error=f"invalid input: {exc}", status=422)


def _page(state, form=None, result=None, error=None, status: int = 200) -> HTMLResponse:
    service = state.service
    names = list(service.scorers) if service.state == SERVING else []
    html = analysis.render(names, form or {}, result, error, ask_token=state.token is not None)
    return HTMLResponse(html, status, headers={"content-security-policy": PAGE_CSP})
