"""Parsing a score body (JSON or msgpack) into a validated `ScoreBody` and its token arrays,
in a worker process when the body is large.

json and msgpack parse in C holding the GIL, so a thread does not help: parsing a 16 MB
body on the event loop, which serves gRPC as well, stalls both protocols for about a second.
A body past `INLINE_BYTES` is parsed in a worker process that sends back the token ids as
numpy arrays (unpickled as one copy each, not an object per id).
"""

import json
from dataclasses import dataclass

import msgpack
import numpy as np
from pydantic import ValidationError

from .errors import InvalidArgument
from .http_models import ScoreBody

# msgpack raises these without a message.
_MSGPACK_REASONS = {
    msgpack.FormatError: "a byte that starts no msgpack value (such as 0xc1)",
    msgpack.StackError: "nested too deeply",
}
# Smaller bodies parse in a few milliseconds: less than the trip to the worker costs.
INLINE_BYTES = 256 << 10


class BodyError(Exception):
    """A body that is no valid request: its HTTP status and a message (picklable, so it
    crosses back from the worker)."""

    def __init__(self, status: int, message: str):
        super().__init__(status, message)
        self.status, self.message = status, message


@dataclass
class ParsedScore:
    body: ScoreBody  # token_ids taken out: they are in `arrays`
    arrays: list[np.ndarray] | None


def validation_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{loc}: {err['msg']}" if loc else err["msg"])
    return "invalid request body: " + "; ".join(parts)


def token_arrays(token_ids: list[list[int]]) -> list[np.ndarray]:
    arrays = []
    for i, seq in enumerate(token_ids):
        try:
            arrays.append(np.array(seq, dtype=np.int64))
        except OverflowError:
            raise InvalidArgument(
                f"sequence {i} has a token id that does not fit in int64"
            ) from None
    return arrays


def _decode(raw: bytes, is_msgpack: bool):
    if is_msgpack:
        try:
            return msgpack.unpackb(raw, raw=False)
        except ValueError as exc:  # every msgpack error (ExtraData, FormatError, ...) is one
            reason = str(exc) or _MSGPACK_REASONS.get(type(exc), type(exc).__name__)
            raise BodyError(400, f"the body is not valid msgpack: {reason}") from None
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise BodyError(400, f"the body is not valid JSON: {exc}") from None
    except RecursionError:
        raise BodyError(400, "the body is not valid JSON: nested too deeply") from None


def parse_score_body(raw: bytes, is_msgpack: bool) -> ParsedScore:
    """The validated body; BodyError (400 unparseable, 422 invalid) or InvalidArgument."""
    try:
        body = ScoreBody.model_validate(_decode(raw, is_msgpack))
    except ValidationError as exc:
        raise BodyError(422, validation_message(exc)) from None
    except (
        RecursionError
    ):  # nesting that the parser accepted but validation cannot walk
        raise BodyError(400, "the body is nested too deeply") from None
    if body.token_ids is None:
        return ParsedScore(body, None)
    arrays = token_arrays(body.token_ids)
    return ParsedScore(body.model_copy(update={"token_ids": None}), arrays)
