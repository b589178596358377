"""The scoring engine against a brute-force oracle: one fresh forward pass per target on
exactly the context docs/DESIGN.md §1.1 gives it."""

import numpy as np
import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    LlamaConfig,
    MistralConfig,
    Qwen2Config,
)

import dataclasses

from tokenweight.service.engine import Outputs, ScoringEngine, ScoringInputError
from tokenweight.service.loading import ModelLoadError

VOCAB, BOS, MAX_POS = 101, 1, 128
TOL = 1e-4

SHAPES = {
    "llama": lambda: LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=MAX_POS,
        bos_token_id=BOS, eos_token_id=2,
    ),
    "qwen2": lambda: Qwen2Config(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=MAX_POS,
        bos_token_id=BOS, eos_token_id=2,
    ),
    "mistral": lambda: MistralConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=MAX_POS,
        bos_token_id=BOS, eos_token_id=2, sliding_window=None,
    ),
    "gpt2": lambda: GPT2Config(
        vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=MAX_POS,
        bos_token_id=BOS, eos_token_id=2,
    ),
}


def save_tiny(path, shape: str, seed: int):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(SHAPES[shape]())
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    return {shape: save_tiny(root / shape, shape, seed) for seed, shape in enumerate(SHAPES)}


def engine_for(checkpoints, shape, window, stride, short=None):
    return ScoringEngine.from_pretrained(
        checkpoints[shape],
        checkpoints[short] if short else None,
        device="cpu",
        dtype="float32",
        window=window,
        stride=stride,
    )


def oracle_logp(model, context: list[int], target: int) -> float:
    with torch.no_grad():
        logits = model(torch.tensor([context])).logits[0, -1].double()
    return float(torch.log_softmax(logits, -1)[target])


def short_context(x: list[int], t: int, k: int, s: int) -> list[int]:
    """docs/DESIGN.md §1.1, written out independently of the engine's chunk plan."""
    if t < k:
        return x[:t]
    a = ((t - k) // s + 1) * s
    context = x[a:t]
    if x[0] == BOS:
        context = [BOS] + context[1:]
    return context


def brute_force(long_model, short_model, x, k, s):
    logp_long = [oracle_logp(long_model, x[:t], x[t]) for t in range(1, len(x))]
    logp_short = [
        oracle_logp(short_model, short_context(x, t, k, s), x[t]) for t in range(1, len(x))
    ]
    return np.array(logp_long), np.array(logp_short)


def make_sequence(length: int, with_bos: bool, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    seq = rng.integers(3, VOCAB, size=length).tolist()
    if with_bos and length:
        seq[0] = BOS
    return seq


def assert_matches_oracle(engine, sequences, k, s):
    results = engine.score([np.array(x) for x in sequences])
    short_model = engine.short_model or engine.long_model
    for x, r in zip(sequences, results):
        want_long, want_short = brute_force(engine.long_model, short_model, x, k, s)
        assert r.logp_long.dtype == np.float32 and r.logp_long.shape == (max(len(x) - 1, 0),)
        np.testing.assert_allclose(r.logp_long, want_long, atol=TOL, rtol=0)
        np.testing.assert_allclose(r.logp_short, want_short, atol=TOL, rtol=0)
        np.testing.assert_allclose(r.score, np.abs(want_short - want_long), atol=2 * TOL, rtol=0)
        if engine.short_model is None:
            # t < k: the same model with the same context, so exactly zero contrast.
            assert np.all(r.score[: min(k, len(x)) - 1] == 0)


K = 8
# 1, 2, k-1, k, k+1, and lengths where (L-k) is not a multiple of s.
LENGTHS = [1, 2, K - 1, K, K + 1, K + 5, 3 * K + 3]


@pytest.mark.parametrize("shape", ["llama", "qwen2"])
@pytest.mark.parametrize("with_bos", [True, False])
@pytest.mark.parametrize("stride", [6, K - 1, 1])
def test_engine_matches_brute_force(checkpoints, shape, with_bos, stride):
    engine = engine_for(checkpoints, shape, K, stride)
    sequences = [make_sequence(n, with_bos, seed=n) for n in LENGTHS]
    assert_matches_oracle(engine, sequences, K, stride)


@pytest.mark.parametrize("shape", ["mistral", "gpt2"])
def test_other_architectures_match_brute_force(checkpoints, shape):
    """GPT-2 has learned absolute positions: every chunk is a fresh pass from position 0."""
    engine = engine_for(checkpoints, shape, K, 5)
    assert_matches_oracle(engine, [make_sequence(29, True, 1), make_sequence(20, False, 2)], K, 5)


def test_window_not_shorter_than_sequence_gives_zero_contrast(checkpoints):
    engine = engine_for(checkpoints, "llama", 64, 48)
    sequences = [make_sequence(n, True, n) for n in (30, 64)]
    assert_matches_oracle(engine, sequences, 64, 48)
    for r in engine.score([np.array(x) for x in sequences]):
        assert np.all(r.score == 0) and np.array_equal(r.logp_long, r.logp_short)


def test_long_short_pair_of_different_models(checkpoints):
    engine = engine_for(checkpoints, "llama", K, 6, short="qwen2")
    sequences = [make_sequence(n, bos, n) for n in (3, K, 2 * K + 3) for bos in (True, False)]
    assert_matches_oracle(engine, sequences, K, 6)


def test_mixed_length_batch_equals_scoring_alone(checkpoints):
    engine = engine_for(checkpoints, "qwen2", K, 6)
    # several padded forward calls, rows of different lengths
    engine.options = dataclasses.replace(engine.options, token_budget=96)
    sequences = [np.array(make_sequence(n, n % 2 == 0, n)) for n in (40, 3, 17, 1, 26, 9, 33)]
    together = engine.score(sequences)
    for seq, r in zip(sequences, together):
        (alone,) = engine.score([seq])
        for name in ("score", "logp_long", "logp_short"):
            np.testing.assert_allclose(getattr(r, name), getattr(alone, name), atol=1e-5, rtol=0)


def test_per_request_window_overrides_default(checkpoints):
    engine = engine_for(checkpoints, "llama", K, 6)
    x = make_sequence(30, True, 3)
    (r,) = engine.score([np.array(x)], window=5, stride=2)
    _, want_short = brute_force(engine.long_model, engine.long_model, x, 5, 2)
    np.testing.assert_allclose(r.logp_short, want_short, atol=TOL, rtol=0)
    assert engine.fingerprint(5, 2) != engine.fingerprint()


def test_short_only_skips_the_long_pass(checkpoints):
    """The `hybrid` source: logp_short alone, with no long forward over the sequence."""
    engine = engine_for(checkpoints, "llama", K, 6)
    x = np.array(make_sequence(3 * K, True, 4))
    calls = []
    hook = engine.long_model.base_model.register_forward_pre_hook(
        lambda mod, args, kwargs: calls.append(kwargs["input_ids"].shape[1]), with_kwargs=True
    )
    try:
        (short_only,) = engine.score([x], outputs=Outputs(score=False, logp_long=False))
    finally:
        hook.remove()
    (full,) = engine.score([x])
    assert short_only.logp_long is None and short_only.score is None
    np.testing.assert_allclose(short_only.logp_short, full.logp_short, atol=1e-5, rtol=0)
    assert max(calls) < K, "no forward pass longer than the window ran"


def test_lm_head_runs_in_bounded_slices(checkpoints):
    engine = engine_for(checkpoints, "llama", K, 6)
    engine.options = dataclasses.replace(engine.options, logits_budget=10 * VOCAB)
    rows = []
    head = engine.long_model.get_output_embeddings()
    hook = head.register_forward_hook(lambda mod, inp, out: rows.append(out.shape[0]))
    try:
        x = np.array(make_sequence(60, True, 5))
        (sliced,) = engine.score([x])
    finally:
        hook.remove()
    assert max(rows) <= 10
    engine.options = dataclasses.replace(engine.options, logits_budget=1 << 26)
    (whole,) = engine.score([x])
    np.testing.assert_allclose(sliced.logp_long, whole.logp_long, atol=1e-6, rtol=0)


def test_deterministic_for_same_input(checkpoints):
    engine = engine_for(checkpoints, "llama", K, 6)
    x = np.array(make_sequence(40, True, 6))
    a, b = engine.score([x]), engine.score([x])
    assert np.array_equal(a[0].score, b[0].score)


@pytest.mark.parametrize(
    "sequence, window, stride, message",
    [
        ([1, 5, VOCAB], None, None, "outside the vocabulary"),
        ([1, -3, 5], None, None, "negative token id -3 at position 1"),
        ([1] * (MAX_POS + 1), None, None, f"accepts at most {MAX_POS}"),
        ([1, 2, 3], 1, None, "window must be at least 2"),
        ([1, 2, 3], 8, 8, "stride must satisfy 1 <= stride <= window-1"),
    ],
)
def test_bad_input_is_refused_with_a_clear_error(checkpoints, sequence, window, stride, message):
    engine = engine_for(checkpoints, "llama", K, 6)
    with pytest.raises(ScoringInputError, match=message):
        engine.score([np.array(sequence)], window=window, stride=stride)


def test_empty_request_and_non_integer_ids_are_refused(checkpoints):
    engine = engine_for(checkpoints, "llama", K, 6)
    with pytest.raises(ScoringInputError, match="no sequences"):
        engine.score([])
    with pytest.raises(ScoringInputError, match="integer token ids"):
        engine.score([np.array([1.5, 2.0])])


def test_pickle_checkpoint_refused_unless_allowed(tmp_path):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(SHAPES["llama"]())
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="pickle"):
        ScoringEngine.from_pretrained(tmp_path, device="cpu", window=K)
    engine = ScoringEngine.from_pretrained(tmp_path, device="cpu", window=K, allow_pickle=True)
    assert engine.score([np.array([1, 4, 5])])[0].score.shape == (2,)


def test_pair_with_different_vocabularies_refused(checkpoints, tmp_path):
    config = SHAPES["qwen2"]()
    config.vocab_size = VOCAB + 7
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="share a tokenizer"):
        ScoringEngine.from_pretrained(checkpoints["llama"], tmp_path, device="cpu", window=K)


def test_not_a_checkpoint_directory(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        ScoringEngine.from_pretrained(tmp_path, device="cpu")


def test_batch_invariant_scores_do_not_depend_on_batch_company(checkpoints):
    engine = engine_for(checkpoints, "qwen2", K, 6)
    engine.options = dataclasses.replace(engine.options, batch_invariant=True)
    sequences = [np.array(make_sequence(n, True, n)) for n in (40, 3, 17, 26, 9)]
    together = engine.score(sequences)
    for seq, r in zip(sequences, together):
        (alone,) = engine.score([seq])
        for name in ("score", "logp_long", "logp_short"):
            assert np.array_equal(getattr(r, name), getattr(alone, name))
    plain = engine_for(checkpoints, "qwen2", K, 6)
    assert plain.fingerprint() != engine.fingerprint()


def _spy_packed_checks(monkeypatch) -> list:
    import transformers.masking_utils as masking

    calls, check = [], masking.find_packed_sequence_indices
    monkeypatch.setattr(
        masking, "find_packed_sequence_indices", lambda pos: calls.append(1) or check(pos)
    )
    return calls


@pytest.mark.parametrize(
    "config, maskless",
    [
        (SHAPES["llama"], True),
        # A sliding window narrower than the rows: its mask must stay, or far tokens leak in.
        (lambda: MistralConfig(**{**SHAPES["mistral"]().to_dict(), "sliding_window": 16}), False),
    ],
)
def test_forward_skips_the_packed_sequence_check_only_where_the_mask_is_plain_causal(
    config, maskless, monkeypatch
):
    """The engine's forwards build no transformers mask for a plain causal "sdpa" model (the
    packed-sequence check is a GPU sync per forward); the scores are the masked path's, bit
    for bit, and the config is left as it was."""
    from tokenweight.service import logprobs

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config(), attn_implementation="sdpa").eval()
    engine = ScoringEngine(model, window=16)
    rows = [np.random.default_rng(i).integers(3, VOCAB, n) for i, n in enumerate((60, 41, 7))]
    calls = _spy_packed_checks(monkeypatch)
    fast = engine.score(rows)
    assert (not calls) == maskless
    assert model.config._attn_implementation == "sdpa"
    monkeypatch.setattr(logprobs, "_plain_causal", lambda config: False)  # the masked path
    masked = engine.score(rows)
    assert calls
    for a, b in zip(fast, masked):
        np.testing.assert_array_equal(a.logp_long, b.logp_long)
        np.testing.assert_array_equal(a.logp_short, b.logp_short)


def test_fp32_forward_hands_sdpa_repeated_heads_and_keeps_the_numbers(monkeypatch):
    """Grouped key/value heads in fp32 reach SDPA repeated: on a GPU only the math kernel takes
    grouped heads in fp32, and it holds the whole T x T score matrix (out of memory at 32k).
    The scores stay those of transformers' own "sdpa" path."""
    from tokenweight.service import logprobs

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(SHAPES["llama"](), attn_implementation="sdpa").eval()
    assert model.config.num_key_value_heads < model.config.num_attention_heads
    engine = ScoringEngine(model, window=16)
    rows = [np.random.default_rng(i).integers(3, VOCAB, n) for i, n in enumerate((60, 41, 7))]
    heads, sdpa = [], torch.nn.functional.scaled_dot_product_attention

    def spy(query, key, value, *args, **kwargs):
        heads.append((query.shape[1], key.shape[1], value.shape[1]))
        return sdpa(query, key, value, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    repeated = engine.score(rows)
    assert heads and all(q == k == v for q, k, v in heads)
    monkeypatch.setattr(logprobs, "_plain_causal", lambda config: False)  # transformers' path
    for a, b in zip(repeated, engine.score(rows)):
        np.testing.assert_allclose(a.logp_long, b.logp_long, atol=1e-5, rtol=0)
        np.testing.assert_allclose(a.logp_short, b.logp_short, atol=1e-5, rtol=0)
