"""The wire format of docs/DESIGN.md §3, in one place for the client and the server.

Token ids travel as little-endian int32 bytes, per-token arrays as little-endian float32
bytes. Everything here needs only numpy, grpc's status codes and the generated protobuf
code (no torch, no channel), so the client-only install can use it.
"""

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields

import grpc
import numpy as np

from tokenweight.v1 import scorer_pb2

TOKEN_DTYPE = np.dtype("<i4")
FLOAT_DTYPE = np.dtype("<f4")
OUTPUT_NAMES = ("score", "logp_long", "logp_short")

# Bytes of protobuf framing per sequence, bounded from above: a TokenSequence costs a tag and
# a length varint for itself and for its field; a TokenScores the same for three fields.
_REQUEST_FRAMING = 12
_RESPONSE_FRAMING = 24
# Headroom for request_id, scorer name, fingerprint and the other scalar fields.
_HEADER_BYTES = 64 * 1024


class WireFormatError(ValueError):
    """Bytes that are not a valid packed array; the message names the field and the fix."""


class ScoreStreamError(Exception):
    """A ScoreStream request that failed on the server; the stream itself is still usable."""

    def __init__(self, request_id: str, code: grpc.StatusCode, message: str):
        super().__init__(f"request {request_id!r} failed: {code.name}: {message}")
        self.request_id, self.code, self.message = request_id, code, message


_STATUS_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}


@dataclass
class Scores:
    """Target-aligned float32 arrays of L-1 values for one sequence; None where not asked.

    The one per-sequence type: the engine returns it, the wire carries it, the clients give it
    back (the HTTP client's adds the token ids and decoded tokens).
    """

    score: np.ndarray | None
    logp_long: np.ndarray | None
    logp_short: np.ndarray | None


@dataclass
class ScoreResult:
    request_id: str
    scorer: str
    fingerprint: str
    window: int
    stride: int
    results: list[Scores]


@dataclass(frozen=True)
class ScorerInfo:
    """One hosted scorer, as ListScorers and GET /v1/scorers describe it (the proto's fields)."""

    name: str
    long_model: str = ""
    short_model: str = ""
    default_window: int = 0
    default_stride: int = 0
    max_sequence_length: int = 0
    vocab_size: int = 0
    dtype: str = ""
    device: str = ""
    fingerprint: str = ""
    is_default: bool = False
    max_request_tokens: int = 0

    @classmethod
    def from_message(cls, message: scorer_pb2.ScorerInfo) -> "ScorerInfo":
        return cls(**{f.name: getattr(message, f.name) for f in fields(cls)})

    @classmethod
    def from_dict(cls, data: dict) -> "ScorerInfo":
        """From the HTTP API's JSON; keys this side does not know are ignored."""
        return cls(**{f.name: data[f.name] for f in fields(cls) if data.get(f.name) is not None})

    def to_message(self) -> scorer_pb2.ScorerInfo:
        return scorer_pb2.ScorerInfo(**asdict(self))


def pack_tokens(token_ids) -> bytes:
    """Token ids (any integer array-like) -> little-endian int32 bytes."""
    ids = np.asarray(token_ids)
    if ids.size == 0:
        return b""
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise WireFormatError("token ids must be a flat sequence of integers")
    info = np.iinfo(TOKEN_DTYPE)
    if int(ids.min()) < info.min or int(ids.max()) > info.max:
        raise WireFormatError("token ids must fit in int32")
    return ids.astype(TOKEN_DTYPE, copy=False).tobytes()


def unpack_tokens(data: bytes, what: str = "token_ids") -> np.ndarray:
    """Little-endian int32 bytes -> a writable native int32 array."""
    if len(data) % TOKEN_DTYPE.itemsize:
        raise WireFormatError(
            f"{what} has {len(data)} bytes, not a multiple of 4: token ids travel as "
            "little-endian int32 (4 bytes each)"
        )
    return np.frombuffer(data, dtype=TOKEN_DTYPE).astype(np.int32)


def pack_floats(values: np.ndarray | None) -> bytes:
    """A float array -> little-endian float32 bytes (None -> empty, i.e. not requested)."""
    if values is None:
        return b""
    return np.asarray(values).astype(FLOAT_DTYPE, copy=False).tobytes()


def unpack_floats(data: bytes, what: str = "scores") -> np.ndarray:
    """Little-endian float32 bytes -> a writable native float32 array."""
    if len(data) % FLOAT_DTYPE.itemsize:
        raise WireFormatError(
            f"{what} has {len(data)} bytes, not a multiple of 4 (little-endian float32)"
        )
    return np.frombuffer(data, dtype=FLOAT_DTYPE).astype(np.float32)


def output_selection(outputs: Iterable[str] | None) -> scorer_pb2.OutputSelection | None:
    """Names from OUTPUT_NAMES -> the proto selection; None means all three."""
    if outputs is None:
        return None
    names = set(outputs)
    unknown = names - set(OUTPUT_NAMES)
    if unknown:
        raise ValueError(f"unknown outputs {sorted(unknown)}; choose from {OUTPUT_NAMES}")
    return scorer_pb2.OutputSelection(**{name: True for name in names})


def requested_outputs(request: scorer_pb2.ScoreRequest) -> tuple[bool, bool, bool]:
    """(score, logp_long, logp_short) a request asks for; unset or all-false means all."""
    sel = request.outputs
    flags = (sel.score, sel.logp_long, sel.logp_short)
    return flags if any(flags) else (True, True, True)


def build_request(
    sequences: Sequence,
    *,
    scorer: str = "",
    window: int = 0,
    stride: int = 0,
    outputs: Iterable[str] | None = None,
    request_id: str = "",
) -> scorer_pb2.ScoreRequest:
    """A ScoreRequest from token-id arrays (numpy arrays or lists of ints)."""
    return scorer_pb2.ScoreRequest(
        request_id=request_id,
        scorer=scorer,
        sequences=[scorer_pb2.TokenSequence(token_ids=pack_tokens(s)) for s in sequences],
        window=window,
        stride=stride,
        outputs=output_selection(outputs),
    )


def request_sequences(request: scorer_pb2.ScoreRequest) -> list[np.ndarray]:
    """The token-id arrays of a request; WireFormatError names a malformed sequence."""
    return [
        unpack_tokens(seq.token_ids, f"sequence {i} token_ids")
        for i, seq in enumerate(request.sequences)
    ]


def build_response(
    request_id: str,
    scorer: str,
    fingerprint: str,
    window: int,
    stride: int,
    results: Iterable,
) -> scorer_pb2.ScoreResponse:
    """A ScoreResponse from objects with score/logp_long/logp_short arrays (or None)."""
    return scorer_pb2.ScoreResponse(
        request_id=request_id,
        scorer=scorer,
        fingerprint=fingerprint,
        window=window,
        stride=stride,
        results=[
            scorer_pb2.TokenScores(
                score=pack_floats(r.score),
                logp_long=pack_floats(r.logp_long),
                logp_short=pack_floats(r.logp_short),
            )
            for r in results
        ],
    )


def build_error_response(
    request_id: str, code: grpc.StatusCode, message: str
) -> scorer_pb2.ScoreResponse:
    """The ScoreStream response for a request that failed."""
    error = scorer_pb2.ScoreError(code=code.value[0], message=message)
    return scorer_pb2.ScoreResponse(request_id=request_id, error=error)


def parse_response(
    response: scorer_pb2.ScoreResponse, outputs: Iterable[str] | None = None
) -> ScoreResult:
    """Decode a ScoreResponse. Arrays not in `outputs` (None = all) come back as None.

    A ScoreStream response carrying an error raises ScoreStreamError.
    """
    if response.HasField("error"):
        code = _STATUS_BY_VALUE.get(response.error.code, grpc.StatusCode.UNKNOWN)
        raise ScoreStreamError(response.request_id, code, response.error.message)
    wanted = set(OUTPUT_NAMES if outputs is None else outputs)
    results = []
    for i, item in enumerate(response.results):
        arrays = {
            name: unpack_floats(getattr(item, name), f"result {i} {name}") if name in wanted else None
            for name in OUTPUT_NAMES
        }
        results.append(Scores(**arrays))
    return ScoreResult(
        request_id=response.request_id,
        scorer=response.scorer,
        fingerprint=response.fingerprint,
        window=response.window,
        stride=response.stride,
        results=results,
    )


def message_limit(max_request_tokens: int, max_sequences: int) -> int:
    """Bytes that bound any request or response within these limits (gRPC message size).

    A request carries 4 bytes per token; a response 12 bytes per target (three float32
    arrays); both add per-sequence framing and a small header.
    """
    request = 4 * max_request_tokens + _REQUEST_FRAMING * max_sequences
    response = 12 * max_request_tokens + _RESPONSE_FRAMING * max_sequences
    return max(request, response) + _HEADER_BYTES
