"""Perplexity by position against a brute-force full-logits forward, the long-range token
rule, identifier repeats, the bootstrap summaries and the eval's model loading."""

import numpy as np
import pytest
import torch

from tokenweight.trainer.evals import perplexity as ppl
from tokenweight.trainer.evals.identifiers import identifier_spans, long_range_repeats
from tokenweight.trainer.evals.lm import LocalJudge, load_engine, logprob_fn
from tokenweight.trainer.evals.stats import (
    bucket_index,
    doubling_edges,
    mean_stat,
    paired_difference,
    point,
    ppl_stat,
    summarize,
)

EDGES = [0, 8, 16, 32, 64, 100]


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return load_engine(tiny_model_dir, 100, 8, "cpu", "float32")


def _sequences(n=5, length=100, vocab=300):
    rng = np.random.default_rng(0)
    return [
        np.concatenate([[1], rng.integers(3, vocab, length - 1)]).astype(np.int64) for _ in range(n)
    ]


def test_position_buckets_match_a_full_logits_forward(engine):
    sequences = _sequences()
    ce, n = ppl.position_sums(logprob_fn(engine)(sequences), EDGES)
    model = engine.long_model
    expected_ce, expected_n = np.zeros_like(ce), np.zeros_like(n)
    with torch.no_grad():
        for s, seq in enumerate(sequences):
            ids = torch.as_tensor(seq)[None]
            logp = torch.log_softmax(model(ids).logits.float(), -1)[0, :-1]
            target = logp.gather(1, ids[0, 1:, None])[:, 0].numpy()
            for t in range(1, len(seq)):  # target position t, entry t-1
                b = np.searchsorted(EDGES, t, side="right") - 1
                expected_ce[s, b] -= target[t - 1]
                expected_n[s, b] += 1
    np.testing.assert_allclose(ce, expected_ce, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(n, expected_n)
    summary = ppl.by_position_summary(ce, n, EDGES)
    assert summary["overall"]["value"] == pytest.approx(
        np.exp(expected_ce.sum() / expected_n.sum())
    )
    assert [b["tokens"] for b in summary["buckets"]] == [5 * n for n in (7, 8, 16, 32, 36)]
    for b in summary["buckets"]:
        assert b["ci"][0] <= b["value"] <= b["ci"][1]


def test_long_sequences_of_a_shorter_rope_model(tiny_model_dir):
    long = load_engine(tiny_model_dir, 600, 8, "cpu", "float32")
    assert long.max_length == 600
    (logp,) = logprob_fn(long)([np.ones(600, dtype=np.int64)])
    assert logp.shape == (599,) and np.isfinite(logp).all()


def test_key_tokens_follow_the_longppl_rule(engine):
    keys = ppl.KeyTokens(2.0, -2.0)
    long = np.array([-0.5, -0.5, -3.0, -1.0], np.float32)
    short = np.array([-3.0, -2.0, -6.0, -2.5], np.float32)
    assert keys.mask(long, short).tolist() == [True, False, False, False]
    (pair,) = LocalJudge(engine, 8).contrast(_sequences(1))
    assert pair[0].shape == pair[1].shape == (99,)
    np.testing.assert_array_equal(pair[0][:7], pair[1][:7])  # within the window: no contrast


def test_masked_and_whole_sums():
    logps = [np.array([-1.0, -2.0, -3.0]), np.array([-4.0])]
    ce, n = ppl.masked_sums(logps, [np.array([True, False, True]), np.array([False])])
    assert ce.tolist() == [4.0, 0.0] and n.tolist() == [2, 0]
    ce, n = ppl.whole_sums(logps)
    assert ce.tolist() == [6.0, 4.0] and n.tolist() == [3, 1]


def test_identifier_repeats_first_seen_a_window_earlier():
    text = "alpha = 1\n" + "beta = alpha\n" + "x = 2\n" * 20 + "print(alpha, beta, if_)\n"
    spans = identifier_spans(text)
    assert [s[0] for s in spans[:4]] == ["alpha", "beta", "alpha", "x"]
    assert ("print", text.index("print"), text.index("print") + 5) in spans
    offsets = [(0, 0)] + [
        (i, i + 1) for i in range(len(text))
    ]  # one token per character, BOS first
    mask = long_range_repeats(text, offsets, window=100)
    marked = {text[t] for t in np.flatnonzero(mask)}  # target t-1 is character t-1
    last = text.rindex("alpha")
    assert mask[last : last + 5].all()  # "alpha" at the end: first seen ~150 characters earlier
    assert not mask[text.index("alpha", 1) : text.index("alpha", 1) + 5].any()  # seen 17 earlier
    assert marked <= set("alphbetx")
    assert long_range_repeats("def f(:\n", [(0, 0), (0, 3)], 1).shape == (
        1,
    )  # broken code: no crash


def test_bootstrap_summaries():
    values = np.array([0.0, 1.0, 1.0, 1.0])
    s = summarize(mean_stat, values, seed=3)
    assert s["value"] == 0.75 and s["items"] == 4 and 0.0 <= s["ci"][0] <= 0.75 <= s["ci"][1] <= 1.0
    assert summarize(mean_stat, values, seed=3) == s  # seeded
    assert np.isnan(summarize(mean_stat, np.array([]))["value"]) and np.isnan(point(mean_stat, []))
    d = paired_difference(
        ppl_stat,
        [np.array([2.0, 2.0]), np.array([2.0, 2.0])],
        [np.array([4.0, 4.0]), np.array([2.0, 2.0])],
    )
    assert d["value"] == pytest.approx(np.e - np.e**2) and d["ci"][0] == pytest.approx(d["ci"][1])
    assert doubling_edges(512, 4096) == [0, 512, 1024, 2048, 4096]
    assert bucket_index([0, 511, 512, 4095, 4096, -1], [0, 512, 4096]).tolist() == [
        0,
        0,
        1,
        1,
        -1,
        -1,
    ]
