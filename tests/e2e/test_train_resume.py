"""Exact resume, and a scorer that dies mid-training and comes back (2-rank torchrun, CPU)."""

import time

import numpy as np
import pytest

from train_helpers import (
    BackgroundTraining,
    Scorer,
    check_rank_data,
    check_trained_with_scores_of,
    dumps,
    losses,
    make_data,
    save_tiny_model,
    train,
)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    return {"model": save_tiny_model(root / "llama"), "data": make_data(root / "data")}


def test_stop_and_resume_matches_the_uninterrupted_run(env, tmp_path):
    scorer = Scorer(env["model"])
    try:
        # Sparse weighting draws random tie-breaks, gradient accumulation takes two batches a
        # step, warmup + cosine set the LR: all of it must continue where it stopped.
        common = (
            "--max-steps",
            6,
            "--parallel",
            "fsdp",
            "--scorer-url",
            scorer.url,
            "--weighting",
            "sparse",
            "--kappa",
            "0.3",
            "--grad-accum",
            2,
            "--warmup-steps",
            2,
            "--save-every",
            2,
        )
        whole = tmp_path / "whole"
        train(env["model"], env["data"], whole, *common)
        split = tmp_path / "split"
        train(env["model"], env["data"], split, *common, "--stop-at", 3)
        assert sorted(losses(split)) == [1, 2, 3] and not (split / "model").exists()
        log = train(env["model"], env["data"], split, *common, "--resume", "auto")
    finally:
        scorer.close()
    assert "resumed from" in log and "step_3" in log

    a, b = losses(whole), losses(split)
    assert list(a) == list(b) == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose(list(b.values()), list(a.values()), rtol=0, atol=1e-6)
    # Same data order and the same weights, tie-breaks included, after the resume.
    found_a, found_b = dumps(whole), dumps(split)
    check_rank_data(found_b, 6, grad_accum=2)
    assert found_a.keys() == found_b.keys()
    for key, record in found_a.items():
        np.testing.assert_array_equal(found_b[key]["indices"], record["indices"])
        np.testing.assert_array_equal(found_b[key]["weights"], record["weights"])


def test_scorer_killed_and_restarted_mid_training(env, tmp_path):
    from tokenweight.trainer.metrics_log import read_metrics

    steps = 60
    scorer = Scorer(env["model"])
    out = tmp_path / "outage"
    trainer = BackgroundTraining(
        env["model"],
        env["data"],
        out,
        "--max-steps",
        steps,
        "--parallel",
        "ddp",
        "--scorer-url",
        scorer.url,
        "--weighting",
        "dense",
        "--prefetch-depth",
        2,
    )
    try:
        trainer.wait_for_step(3)
        scorer.kill()
        killed_at = trainer.steps_done()
        time.sleep(2)
        scorer.start()  # same port, same model: the same fingerprint
        log = trainer.finish()
        assert killed_at < steps, "the run ended before the scorer was killed"
        assert "scorer unreachable" in log and "scorer answering again" in log
        records = read_metrics(out / "metrics.jsonl")
        assert max(r["scorer_wait_s"] for r in records) > 1.0  # the outage was waited out
        check_trained_with_scores_of(scorer.url, out, env["data"], steps)
    finally:
        trainer.close()
        scorer.close()
