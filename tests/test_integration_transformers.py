"""Hugging Face Trainer with tokenweight's collator and loss: 2 ranks (torchrun, gloo, CPU) x
3 steps x gradient accumulation 2 against a live `tokenweight serve`, step losses equal to
tokenweight's own trainer on the same checkpoint, rows, seed, weighting and scores; and
batches whose scores belong elsewhere refused."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tokenweight.integrations.transformers import (
    ScoreCollator,
    ScoreMismatchError,
    ServiceScores,
    TokenWeightLoss,
    WeightingConfig,
)
from tokenweight.integrations.attached import AttachedScores
from tokenweight.trainer.data import TokenShards

from train_helpers import SEQ_LEN, Scorer, _env, losses, make_data, save_tiny_model, train

STEPS, GRAD_ACCUM, LAM = 3, 2, 0.5
HF_RUN = Path(__file__).with_name("hf_trainer_run.py")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    model = save_tiny_model(root / "llama")
    data = make_data(root / "data")
    scorer = Scorer(model)
    try:
        yield {"model": model, "data": data, "scorer": scorer}
    finally:
        scorer.close()


def hf_train(env, out: Path, source: str) -> dict[int, float]:
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        str(HF_RUN), str(env["model"]), str(env["data"]), str(out), env["scorer"].url, source,
        str(STEPS), str(GRAD_ACCUM), str(LAM),
    ]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    return {int(k): v for k, v in json.loads((out / "losses.json").read_text()).items()}


def own_train(env, out: Path, source: str) -> dict[int, float]:
    flags = ["--max-steps", STEPS, "--grad-accum", GRAD_ACCUM, "--schedule", "constant"]
    flags += ["--scorer-url", env["scorer"].url, "--score-source", source]
    train(env["model"], env["data"], out, *flags, "--weighting", "dense", "--lam", LAM)
    return losses(out)


@pytest.mark.parametrize("source", ["service", "hybrid"])
def test_hf_trainer_losses_equal_tokenweights_own_trainer(env, tmp_path, source):
    hf = hf_train(env, tmp_path / "hf", source)
    own = own_train(env, tmp_path / "own", source)
    assert list(hf) == list(own) == list(range(1, STEPS + 1))
    np.testing.assert_allclose(list(hf.values()), list(own.values()), rtol=0, atol=1e-5)
    # Training moved the model: equal losses across steps are not three copies of step 1.
    assert len({round(v, 6) for v in own.values()}) == STEPS


def collated(env, rows, hybrid=False) -> dict:
    shards = TokenShards(env["data"])
    features = [{"input_ids": torch.as_tensor(shards[i], dtype=torch.long)} for i in rows]
    return ScoreCollator(ServiceScores(env["scorer"].url, hybrid=hybrid))(features)


def batch_loss(env, batch: dict, loss: TokenWeightLoss) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(env["model"])
    batch = dict(batch)
    scores = AttachedScores.pop(batch)
    hidden = model.model(batch["input_ids"]).last_hidden_state
    return loss(hidden, model.lm_head, batch["input_ids"], batch["labels"], scores)


def test_collator_attaches_the_scorers_arrays_and_the_loss_weights_them(env):
    batch = collated(env, [0, 1])
    assert batch["input_ids"].shape == (2, SEQ_LEN) and torch.equal(batch["labels"], batch["input_ids"])
    weighting = WeightingConfig.from_preset("dense", lam=LAM)
    got = batch_loss(env, batch, TokenWeightLoss(weighting))
    # Brute force: full logits, per-token CE, weights from the attached arrays.
    from transformers import AutoModelForCausalLM

    from tokenweight.trainer.weighting import compute_weights

    model = AutoModelForCausalLM.from_pretrained(env["model"])
    logits = model(batch["input_ids"]).logits[:, :-1].float()
    ce = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), batch["input_ids"][:, 1:].reshape(-1), reduction="none"
    ).view(2, -1)
    w = compute_weights(-batch["tokenweight_logp_long"], -batch["tokenweight_logp_short"], weighting)
    torch.testing.assert_close(got, (w * ce).mean(), rtol=0, atol=1e-5)
    assert not torch.allclose(w, torch.ones_like(w))  # the scores do weight the tokens


def test_a_batch_with_another_batchs_scores_is_refused(env):
    a, b = collated(env, [0, 1]), collated(env, [2, 3])
    swapped = {**a, **{k: v for k, v in b.items() if k.startswith("tokenweight_")}}
    loss = TokenWeightLoss(WeightingConfig.from_preset("dense"))
    with pytest.raises(ScoreMismatchError, match="computed for other tokens"):
        batch_loss(env, swapped, loss)
    # Tokens edited after scoring are refused the same way.
    edited = dict(a, input_ids=a["input_ids"].flip(0), labels=a["labels"].flip(0))
    with pytest.raises(ScoreMismatchError, match="computed for other tokens"):
        batch_loss(env, edited, loss)


def test_scores_of_another_scorer_are_refused(env):
    batch = collated(env, [0, 1])
    loss = TokenWeightLoss(WeightingConfig.from_preset("dense"), fingerprint="another-scorer")
    with pytest.raises(ScoreMismatchError, match="fingerprint"):
        batch_loss(env, batch, loss)
    # Pinned by the first batch when not given: a later batch of another scorer is refused.
    pinned = TokenWeightLoss(WeightingConfig.from_preset("dense"))
    batch_loss(env, collated(env, [0, 1]), pinned)
    later = collated(env, [2, 3])
    later["tokenweight_fingerprint"] = "restarted-with-other-settings"
    with pytest.raises(ScoreMismatchError, match="fingerprint"):
        batch_loss(env, later, pinned)


def test_hybrid_scores_need_a_hybrid_loss(env):
    batch = collated(env, [0, 1], hybrid=True)
    assert "tokenweight_logp_long" not in batch
    with pytest.raises(ScoreMismatchError, match="hybrid"):
        batch_loss(env, batch, TokenWeightLoss(WeightingConfig.from_preset("dense")))


def test_readme_example_runs_as_written(tmp_path):
    from tokenweight.bundled import default_model

    example = Path(__file__).parents[1] / "examples" / "hf_trainer.py"
    code = example.read_text()
    assert len(code.splitlines()) <= 15
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert f"```python\n{code}```" in readme  # the README shows exactly this file
    model, info = default_model()
    scorer = Scorer(model, window=info["window"], http=True)
    try:
        proc = subprocess.run(
            [sys.executable, str(example)],
            cwd=tmp_path,
            env={**_env(), "SCORER_URL": scorer.url},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
        assert "train_loss" in proc.stdout + proc.stderr
        assert scorer.score_calls() >= 1  # the batches were scored by the service
    finally:
        scorer.close()
