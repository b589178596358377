"""The trainer's pieces in-process: flags, LR schedule, context extension, checkpoint
discovery, and the checks that keep a batch from training with another batch's scores."""

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tokenweight.trainer import checkpoint
from tokenweight.trainer.args import parse_args
from tokenweight.trainer.data import Batch
from tokenweight.trainer.model import extend_context, load_model
from tokenweight.trainer.scores import PrecomputedSource, ScoreMismatchError, ServiceSource
from tokenweight.trainer.train import _lr_factor

from train_helpers import save_tiny_model

BASE = ["--model", "m", "--data", "d", "--out", "o", "--max-steps", "10"]


def test_score_source_follows_the_flags():
    assert parse_args(BASE + ["--scores", "s"]).score_source == "precomputed"
    assert parse_args(BASE + ["--scorer-url", "grpc://h:1"]).score_source == "service"
    assert (
        parse_args(BASE + ["--scorer-url", "grpc://h:1", "--score-source", "hybrid"]).score_source
        == "hybrid"
    )
    assert parse_args(BASE + ["--score-source", "self"]).score_source == "self"
    assert parse_args(BASE + ["--weighting", "uniform"]).score_source is None
    cfg = parse_args(
        BASE + ["--score-source", "self", "--weighting", "ppmi", "--shift", "3", "--kappa", "0.1"]
    )
    assert (
        cfg.weighting_config().sparsification == 0.1
        and "shift 3.0" in cfg.weighting_config().transforms
    )


@pytest.mark.parametrize(
    "extra, message",
    [
        ([], "needs scores"),
        (["--score-source", "hybrid"], "--scorer-url"),
        (["--score-source", "precomputed"], "--scores"),
        (["--score-source", "self", "--lam", "2"], "lam"),
        (["--score-source", "self", "--weighting", "dense", "--kappa", "0.2"], "kappa"),
        (["--weighting", "uniform", "--stop-at", "11"], "--stop-at"),
        (["--weighting", "uniform", "--grad-accum", "0"], "--grad-accum"),
    ],
)
def test_bad_flags_fail_before_anything_loads(extra, message, capsys):
    with pytest.raises(SystemExit):
        parse_args(BASE + extra)
    assert message in capsys.readouterr().err


def test_lr_warmup_then_cosine_or_constant():
    cfg = parse_args(
        BASE + ["--weighting", "uniform", "--lr", "1.0", "--min-lr", "0.1", "--warmup-steps", "4"]
    )
    f = _lr_factor(cfg)
    assert [f(s) for s in range(4)] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert f(4) == pytest.approx(1.0)
    assert f(7) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(10) == pytest.approx(0.1)
    constant = _lr_factor(parse_args(BASE + ["--weighting", "uniform", "--schedule", "constant"]))
    assert constant(0) == constant(9) == 1.0


def test_context_extension_sets_positions_and_rope_base(tmp_path):
    lm = load_model(save_tiny_model(tmp_path / "m"), seq_len=1024, rope_theta=500000.0)
    assert lm.config.max_position_embeddings == 1024 and lm.training
    assert lm.config.rope_parameters["rope_theta"] == 500000.0
    dim = lm.config.hidden_size // lm.config.num_attention_heads
    want = 1.0 / 500000.0 ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    torch.testing.assert_close(lm.model.rotary_emb.inv_freq, want)
    # A shorter --seq-len never shrinks the model's context.
    assert (
        load_model(tmp_path / "m", seq_len=64, rope_theta=None).config.max_position_embeddings
        == 256
    )
    # Models with one RoPE per attention type get the new base in each.
    config = SimpleNamespace(
        max_position_embeddings=8,
        rope_parameters={
            "full_attention": {"rope_theta": 1.0},
            "sliding_attention": {"rope_theta": 2.0},
        },
    )
    extend_context(config, 16, 7.0)
    assert config.max_position_embeddings == 16
    assert [p["rope_theta"] for p in config.rope_parameters.values()] == [7.0, 7.0]


def test_latest_checkpoint_skips_interrupted_saves(tmp_path):
    assert checkpoint.latest(tmp_path) is None
    for step, complete in ((2, True), (10, True), (9, True), (12, False)):
        path = checkpoint.step_dir(tmp_path, step)
        path.mkdir(parents=True)
        if complete:
            (path / checkpoint.META).write_text(json.dumps({"step": step}))
    (tmp_path / checkpoint.CHECKPOINTS / "step_11.tmp").mkdir()
    assert checkpoint.latest(tmp_path) == checkpoint.step_dir(tmp_path, 10)
    assert checkpoint.resolve_resume("auto", tmp_path) == checkpoint.step_dir(tmp_path, 10)
    with pytest.raises(FileNotFoundError, match="not a completed checkpoint"):
        checkpoint.resolve_resume(str(checkpoint.step_dir(tmp_path, 12)), tmp_path)


def _batch(step=0, rows=2, length=9):
    tokens = np.arange(rows * length, dtype=np.int64).reshape(rows, length)
    return Batch(step, 0, np.arange(rows, dtype=np.int64), tokens)


def _result(batch, fingerprint="f", window=4, stride=3, lengths=None):
    lengths = lengths or [batch.tokens.shape[1] - 1] * len(batch.tokens)
    rows = [
        SimpleNamespace(logp_long=-np.ones(n, np.float32), logp_short=-np.ones(n, np.float32))
        for n in lengths
    ]
    return SimpleNamespace(
        scorer="default", fingerprint=fingerprint, window=window, stride=stride, results=rows
    )


def test_service_scores_are_checked_against_their_batch():
    from tokenweight.trainer.data import batch_token_hash

    source = ServiceSource(
        "grpc://127.0.0.1:1",
        hybrid=False,
        window=None,
        stride=None,
        scorer="",
        depth=2,
        retry_for=1,
    )
    try:
        batch = _batch()
        good = source._check(batch, batch_token_hash(batch.tokens), _result(batch))
        assert good.logp_long.shape == good.logp_short.shape == (2, 8)
        with pytest.raises(ScoreMismatchError, match="changed after they were sent"):
            source._check(batch, batch_token_hash(batch.tokens + 1), _result(batch))
        with pytest.raises(ScoreMismatchError, match="scorer changed mid-run"):
            source._check(
                batch, batch_token_hash(batch.tokens), _result(batch, fingerprint="other")
            )
        with pytest.raises(ScoreMismatchError, match="has 7 values"):
            source._check(batch, batch_token_hash(batch.tokens), _result(batch, lengths=[8, 7]))
        with pytest.raises(ScoreMismatchError, match="1 logp_long arrays for 2 sequences"):
            source._check(batch, batch_token_hash(batch.tokens), _result(batch, lengths=[8]))
    finally:
        source.close()


def test_hybrid_asks_for_logp_short_alone():
    source = ServiceSource(
        "grpc://127.0.0.1:1", hybrid=True, window=8, stride=4, scorer="", depth=2, retry_for=1
    )
    try:
        assert source.outputs == ("logp_short",) and source.long_from_model
    finally:
        source.close()


def test_precomputed_rows_are_cut_like_the_tokens():
    full = np.random.default_rng(0).standard_normal((2, 15)).astype(np.float32)
    store = SimpleNamespace(
        path="store", get=lambda indices: (full[indices], full[indices] - 1), close=lambda: None
    )
    batch = _batch(length=9)  # rows cut from 16 to 9 tokens by --seq-len
    ((_, scores),) = PrecomputedSource(store, long_from_model=False).scored([batch])
    np.testing.assert_array_equal(scores.logp_long, full[:, :8])
    np.testing.assert_array_equal(scores.logp_short, full[:, :8] - 1)
    ((_, scores),) = PrecomputedSource(store, long_from_model=True).scored([batch])
    assert scores.logp_long is None
    full[0, 3] = np.nan
    with pytest.raises(ScoreMismatchError, match="NaN"):
        list(PrecomputedSource(store, long_from_model=False).scored([batch]))
