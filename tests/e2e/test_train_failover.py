"""Two scorer replicas behind the trainer's round-robin, one SIGKILLed mid-run and left down
(2-rank torchrun, CPU): the trainer fails over to the other and trains every batch with its
own scores."""

from train_helpers import (
    BackgroundTraining,
    Scorer,
    check_trained_with_scores_of,
    make_data,
    save_tiny_model,
)


def test_replica_killed_mid_run_fails_over_without_losing_a_batch(tmp_path):
    model = save_tiny_model(tmp_path / "llama")
    data = make_data(tmp_path / "data")
    steps = 40
    out = tmp_path / "run"
    survivor, victim = Scorer(model, http=True), Scorer(model, http=True)
    trainer = None
    try:
        trainer = BackgroundTraining(
            model,
            data,
            out,
            "--max-steps",
            steps,
            "--scorer-url",
            f"{survivor.url},{victim.url}",
            "--parallel",
            "fsdp",  # the restart test covers DDP
            "--weighting",
            "dense",
        )
        trainer.wait_for_step(3)
        # Both replicas have been answering: what follows is a failover, not one replica that
        # happened to do all the work.
        before = {"survivor": survivor.score_calls(), "victim": victim.score_calls()}
        assert min(before.values()) > 0, before
        victim.kill()
        killed_at = trainer.steps_done()
        log = trainer.finish()
        assert killed_at < steps, "the run ended before the replica was killed"

        # Only the killed replica failed, the trainer said so, and the survivor took the rest.
        unreachable = [line for line in log.splitlines() if "scorer unreachable" in line]
        assert unreachable and all(f"127.0.0.1:{victim.port}" in line for line in unreachable)
        assert survivor.score_calls() > before["survivor"]
        # No step lost, none reordered, none trained with another batch's scores.
        check_trained_with_scores_of(survivor.url, out, data, steps)
    finally:
        if trainer is not None:
            trainer.close()
        survivor.close()
        victim.close()
