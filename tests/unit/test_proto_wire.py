"""Packing and unpacking of the wire format (tokenweight/wire.py), no server involved."""

import numpy as np
import pytest

from tokenweight import wire
from tokenweight.v1 import scorer_pb2


def test_tokens_round_trip_little_endian():
    ids = np.array([0, 1, 70000, 2**31 - 1], dtype=np.int64)
    data = wire.pack_tokens(ids)
    assert data[:8] == b"\x00\x00\x00\x00\x01\x00\x00\x00"
    np.testing.assert_array_equal(wire.unpack_tokens(data), ids)
    assert wire.pack_tokens([]) == b""


def test_pack_tokens_refuses_non_int32():
    with pytest.raises(wire.WireFormatError, match="int32"):
        wire.pack_tokens([2**31])
    with pytest.raises(wire.WireFormatError, match="integers"):
        wire.pack_tokens([1.5])


def test_malformed_bytes_name_the_field():
    request = scorer_pb2.ScoreRequest(sequences=[scorer_pb2.TokenSequence(token_ids=b"\x01\x00")])
    with pytest.raises(wire.WireFormatError, match="sequence 0 token_ids has 2 bytes, not a multiple of 4"):
        wire.request_sequences(request)


def test_request_response_round_trip():
    request = wire.build_request([[1, 2, 3]], scorer="s", window=8, outputs=["logp_short"])
    assert wire.requested_outputs(request) == (False, False, True)
    assert wire.requested_outputs(wire.build_request([[1, 2]])) == (True, True, True)
    scores = wire.Scores(None, None, np.array([-1.5, -0.25], dtype=np.float32))
    response = wire.build_response("id", "s", "fp", 8, 6, [scores])
    parsed = wire.parse_response(scorer_pb2.ScoreResponse.FromString(response.SerializeToString()), ["logp_short"])
    assert (parsed.request_id, parsed.scorer, parsed.fingerprint, parsed.window) == ("id", "s", "fp", 8)
    assert parsed.results[0].score is None
    np.testing.assert_array_equal(parsed.results[0].logp_short, scores.logp_short)
    with pytest.raises(ValueError, match="unknown outputs"):
        wire.build_request([[1]], outputs=["logits"])


def test_message_limit_bounds_the_largest_messages():
    tokens, sequences = 1000, 10
    limit = wire.message_limit(tokens, sequences)
    big = [np.full(tokens // sequences, 2**31 - 1) for _ in range(sequences)]
    assert wire.build_request(big, request_id="x" * 100).ByteSize() <= limit
    floats = wire.Scores(*(np.zeros(tokens // sequences - 1, np.float32) for _ in range(3)))
    assert wire.build_response("x" * 100, "s", "f" * 24, 1, 1, [floats] * sequences).ByteSize() <= limit


def test_stream_error_response_raises_with_code():
    import grpc

    response = wire.build_error_response("r7", grpc.StatusCode.INVALID_ARGUMENT, "bad window")
    with pytest.raises(wire.ScoreStreamError, match="r7") as info:
        wire.parse_response(scorer_pb2.ScoreResponse.FromString(response.SerializeToString()))
    assert info.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.message == "bad window"
