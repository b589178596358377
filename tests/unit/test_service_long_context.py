"""128k-token contexts fit the service's defaults: message limits, request token budget, the
forward-token bound and a client's queue share, and the scorer's length check (the scoring
itself is the same code at every length)."""

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tokenweight import wire
from tokenweight.service.config import ServerConfig
from tokenweight.service.engine import ALL_OUTPUTS, ScoringEngine, ScoringInputError

LONG = 131072


def test_default_limits_carry_a_128k_request_and_its_response():
    server = ServerConfig()
    assert server.max_request_tokens >= LONG
    limit = wire.message_limit(server.max_request_tokens, server.max_sequences)
    tokens = np.full(LONG, 2**31 - 1)
    assert wire.build_request([tokens], request_id="r").ByteSize() <= limit
    scores = wire.Scores(*(np.zeros(LONG - 1, np.float32) for _ in range(3)))
    assert wire.build_response("r", "s", "f" * 24, 32768, 24576, [scores]).ByteSize() <= limit


def test_a_128k_scorer_accepts_128k_tokens_and_refuses_one_more():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=LONG, bos_token_id=1, eos_token_id=2)
    engine = ScoringEngine(LlamaForCausalLM(config).eval(), window=32768)
    assert engine.max_length == LONG and engine.stride == 24576
    engine.check([np.zeros(LONG, np.int64)], engine.window, engine.stride)
    with pytest.raises(ScoringInputError, match=f"{LONG + 1} tokens.*at most {LONG}"):
        engine.check([np.zeros(LONG + 1, np.int64)], engine.window, engine.stride)
    server = ServerConfig()
    for window in (8192, 32768):  # the windows the docs name for 64k/128k contexts
        stride = window * 3 // 4
        work = engine.check_work(
            [np.zeros(LONG, np.int64)], window, stride, ALL_OUTPUTS, server.max_forward_tokens
        )
        assert LONG < work <= server.queue_tokens * server.client_share
