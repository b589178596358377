"""ScoreRequest bytes decoded by the servicer rather than by gRPC, so that a malformed message
is one request's INVALID_ARGUMENT (or one stream response) instead of a failed call."""

from dataclasses import dataclass

from google.protobuf.message import DecodeError

from tokenweight.v1 import scorer_pb2

_REQUEST_ID_TAG = 0x0A  # field 1 (request_id), wire type 2 (length-delimited)


@dataclass(frozen=True)
class MalformedRequest:
    """Bytes that are not a ScoreRequest; `request_id` is recovered where the bytes start
    with it (serializers write fields in number order), else empty."""

    request_id: str
    message: str


def decode_request(data: bytes) -> scorer_pb2.ScoreRequest | MalformedRequest:
    """The request gRPC hands the servicer: parsed, or why it could not be."""
    try:
        return scorer_pb2.ScoreRequest.FromString(data)
    except DecodeError as exc:
        return MalformedRequest(
            _leading_request_id(data),
            f"the message ({len(data)} bytes) is not a valid tokenweight.v1.ScoreRequest: "
            f"{exc}; send a ScoreRequest serialized by a protobuf library",
        )


def _leading_request_id(data: bytes) -> str:
    if not data or data[0] != _REQUEST_ID_TAG:
        return ""
    length, shift, pos = 0, 0, 1
    while pos < len(data) and pos <= 10:  # a varint has at most 10 bytes
        byte = data[pos]
        length |= (byte & 0x7F) << shift
        shift, pos = shift + 7, pos + 1
        if not byte & 0x80:
            try:
                return data[pos : pos + length].decode() if pos + length <= len(data) else ""
            except UnicodeDecodeError:
                return ""
    return ""
