"""Exact resume, and a scorer that dies mid-training and comes back (2-rank torchrun, CPU)."""

import subprocess
import threading
import time

import numpy as np
import pytest
from train_helpers import (
    Scorer,
    _env,
    batch_tokens,
    check_rank_data,
    dumps,
    expected_weights,
    losses,
    make_data,
    save_tiny_model,
    scorer_arrays,
    torchrun_args,
    train,
)

from tokenweight.trainer.data import batch_token_hash


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    return {"model": save_tiny_model(root / "llama"), "data": make_data(root / "data")}


def test_stop_and_resume_matches_the_uninterrupted_run(env, tmp_path):
    scorer = Scorer(env["model"])
    try:
        # Sparse weighting draws random tie-breaks, gradient accumulation takes two batches a
        # step, warmup + cosine set the LR: all of it must continue where it stopped.
        common = ("--max-steps", 6, "--parallel", "fsdp", "--scorer-url", scorer.url, "--weighting", "sparse",
                  "--kappa", "0.3", "--grad-accum", 2, "--warmup-steps", 2, "--save-every", 2)
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
    args = torchrun_args(env["model"], env["data"], out, "--max-steps", steps, "--parallel", "ddp",
                         "--scorer-url", scorer.url, "--weighting", "dense", "--prefetch-depth", 2)
    trainer = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(trainer.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 120
        while not ((out / "metrics.jsonl").exists() and len(read_metrics(out / "metrics.jsonl")) >= 3):
            assert trainer.poll() is None and time.monotonic() < deadline, "".join(output)[-4000:]
            time.sleep(0.01)
        scorer.kill()
        killed_at = len(read_metrics(out / "metrics.jsonl"))
        time.sleep(2)
        scorer.start()  # same port, same model: the same fingerprint
        assert trainer.wait(240) == 0, "".join(output)[-6000:]
        reader.join(10)
        log = "".join(output)
        assert killed_at < steps, "the run ended before the scorer was killed"
        assert "scorer unreachable" in log and "scorer answering again" in log

        records = read_metrics(out / "metrics.jsonl")
        assert [r["step"] for r in records] == list(range(1, steps + 1))
        assert max(r["scorer_wait_s"] for r in records) > 1.0  # the outage was waited out
        found = dumps(out)
        check_rank_data(found, steps)  # every data step trained once, in order, none skipped
        for record in found.values():
            tokens = batch_tokens(env["data"], record["indices"])
            assert str(record["token_hash"]) == batch_token_hash(tokens)
            scores = scorer_arrays(scorer.url, tokens)
            want = expected_weights("dense", -scores["logp_long"], -scores["logp_short"])
            np.testing.assert_allclose(record["weights"], want, rtol=0, atol=1e-6)
    finally:
        if trainer.poll() is None:
            trainer.kill()
        scorer.close()
