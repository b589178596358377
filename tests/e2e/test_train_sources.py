"""The trainer end to end: 2-process torchrun on CPU (gloo) against a live scorer process,
one run per score source, checking the weights each step applied against the scorer's own
arrays for that batch, fetched independently."""

import numpy as np
import pytest
import torch

from tokenweight.trainer.data import batch_token_hash

from train_helpers import (
    SEQ_LEN,
    WINDOW,
    Scorer,
    batch_tokens,
    check_rank_data,
    check_weights,
    dumps,
    expected_weights,
    losses,
    make_data,
    save_tiny_model,
    scorer_arrays,
    train,
)

STEPS = 3


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    model = save_tiny_model(root / "llama")
    data = make_data(root / "data")
    scorer = Scorer(model)  # scores with the same weights the trained model starts from
    try:
        yield {"root": root, "model": model, "data": data, "scorer": scorer}
    finally:
        scorer.close()


def check_batch(env, record) -> np.ndarray:
    """The dumped token hash is the hash of the batch's rows; returns those rows."""
    tokens = batch_tokens(env["data"], record["indices"])
    assert str(record["token_hash"]) == batch_token_hash(tokens)
    return tokens


def test_service_weights_are_the_scorers_ddp_and_fsdp(env, tmp_path):
    runs = {}
    for parallel in ("ddp", "fsdp"):
        out = tmp_path / parallel
        log = train(
            env["model"],
            env["data"],
            out,
            "--max-steps",
            STEPS,
            "--parallel",
            parallel,
            "--scorer-url",
            env["scorer"].url,
            "--weighting",
            "dense",
            "--lam",
            "0.5",
        )
        assert "fingerprint" in log
        found = dumps(out)
        check_rank_data(found, STEPS)
        for record in found.values():
            scores = scorer_arrays(env["scorer"].url, check_batch(env, record))
            check_weights(record, "dense", -scores["logp_long"], -scores["logp_short"], lam=0.5)
        runs[parallel] = (losses(out), found)
    # Sharding changes where parameters live, not the math: the same data, the same losses.
    ddp, fsdp = runs["ddp"], runs["fsdp"]
    assert list(ddp[0]) == list(fsdp[0]) == list(range(1, STEPS + 1))
    np.testing.assert_allclose(list(ddp[0].values()), list(fsdp[0].values()), rtol=1e-5)
    for key, record in ddp[1].items():
        np.testing.assert_array_equal(record["indices"], fsdp[1][key]["indices"])


def test_hybrid_takes_logp_long_from_the_training_forward(env, tmp_path):
    out = tmp_path / "hybrid"
    train(
        env["model"],
        env["data"],
        out,
        "--max-steps",
        STEPS,
        "--parallel",
        "fsdp",
        "--scorer-url",
        env["scorer"].url,
        "--score-source",
        "hybrid",
        "--weighting",
        "dense",
    )
    found = dumps(out)
    check_rank_data(found, STEPS)
    for (step, _, _), record in found.items():
        short = scorer_arrays(env["scorer"].url, check_batch(env, record), outputs=("logp_short",))[
            "logp_short"
        ]
        # logp_long is the model's own per-token CE of this very forward ...
        np.testing.assert_allclose(record["loss_long"], record["token_ce"], rtol=1e-5, atol=1e-5)
        check_weights(record, "dense", record["loss_long"], -short)
        if step == 1:  # ... and before any update the model is the scorer's model
            long = scorer_arrays(
                env["scorer"].url, check_batch(env, record), outputs=("logp_long",)
            )["logp_long"]
            np.testing.assert_allclose(record["loss_long"], -long, atol=1e-4)


def test_self_scores_with_the_live_model_ddp_and_fsdp(env, tmp_path):
    runs = {}
    for parallel in ("ddp", "fsdp"):
        out = tmp_path / parallel
        flags = ["--max-steps", STEPS, "--parallel", parallel, "--score-source", "self"]
        train(env["model"], env["data"], out, *flags, "--window", WINDOW, "--weighting", "dense")
        found = dumps(out)
        check_rank_data(found, STEPS)
        for (step, _, _), record in found.items():
            ll, ls = record["loss_long"], record["loss_short"]
            # t < window: one model plays both parts, so the contrast is exactly 0 there.
            np.testing.assert_array_equal(ls[:, : WINDOW - 1], ll[:, : WINDOW - 1])
            assert np.abs(ls[:, WINDOW:] - ll[:, WINDOW:]).max() > 1e-3
            np.testing.assert_array_equal(record["weights"], expected_weights("dense", ll, ls))
            if step == 1:  # the untrained live model scores like the service with its weights
                scores = scorer_arrays(env["scorer"].url, check_batch(env, record))
                want = -scores["logp_short"][:, WINDOW - 1 :]
                np.testing.assert_allclose(ls[:, WINDOW - 1 :], want, atol=1e-5)
        runs[parallel] = losses(out)
    # The chunk passes run between FSDP's forward and backward (layers gathered by their own
    # hooks, the root kept gathered): sharded or not, the same training.
    np.testing.assert_allclose(list(runs["fsdp"].values()), list(runs["ddp"].values()), rtol=1e-5)


def test_precomputed_store_trains_a_tied_qwen2_with_fsdp(env, tmp_path):
    from tokenweight.cli import main as cli
    from tokenweight.trainer.data import TokenShards
    from tokenweight.trainer.score_store import ScoreStore

    store = tmp_path / "scores"
    assert (
        cli(
            [
                "precompute",
                "--data",
                str(env["data"]),
                "--scorer-url",
                env["scorer"].url,
                "--out",
                str(store),
            ]
        )
        == 0
    )
    qwen = save_tiny_model(tmp_path / "qwen2", arch="qwen2", seed=3)
    out = tmp_path / "precomputed"
    train(
        qwen,
        env["data"],
        out,
        "--max-steps",
        STEPS,
        "--parallel",
        "fsdp",
        "--scores",
        store,
        "--weighting",
        "longce",
        "--gamma",
        "3",
    )
    found = dumps(out)
    check_rank_data(found, STEPS)
    with ScoreStore.open(store, TokenShards(env["data"]).content_hash) as scores:
        for record in found.values():
            check_batch(env, record)
            logp_long, logp_short = scores.get(record["indices"])
            want = expected_weights("longce", -logp_long, -logp_short, gamma=3.0)
            np.testing.assert_allclose(record["weights"], want, rtol=0, atol=1e-6)
    # The export is a Hugging Face checkpoint of the trained (tied) model.
    from transformers import AutoModelForCausalLM

    exported, info = AutoModelForCausalLM.from_pretrained(out / "model", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert exported.config.tie_word_embeddings
    initial = AutoModelForCausalLM.from_pretrained(qwen).state_dict()
    assert exported.state_dict().keys() == initial.keys()
    assert any(not torch.equal(t, initial[k]) for k, t in exported.state_dict().items())


def test_uniform_needs_no_scorer_and_accumulates_gradients(env, tmp_path):
    from tokenweight.cli import main as cli
    from tokenweight.trainer.metrics_log import read_metrics

    out = tmp_path / "uniform"
    train(
        env["model"],
        env["data"],
        out,
        "--max-steps",
        2,
        "--grad-accum",
        2,
        "--weighting",
        "uniform",
        "--seq-len",
        SEQ_LEN // 2,
    )
    found = dumps(out)
    check_rank_data(found, 2, grad_accum=2)
    for record in found.values():
        assert record["weights"].shape == (2, SEQ_LEN // 2 - 1)  # rows cut to --seq-len
        assert (record["weights"] == 1).all()
    for record in read_metrics(out / "metrics.jsonl"):
        assert record["loss"] == pytest.approx(record["loss_unweighted"])
        assert record["weight_mean"] == record["weight_max"] == record["weight_nonzero"] == 1
        assert (
            record["weight_std"] == 0
            and record["scorer_wait_s"] >= 0
            and record["tokens_per_s"] > 0
        )
    assert cli(["plot", str(out)]) == 0
    assert list(out.glob("plot_*.png"))
