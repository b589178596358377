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
from tokenweight.client import ScorerClient
from tokenweight.integrations.attached import AttachedScores
from tokenweight.trainer.data import TokenShards

from train_helpers import SEQ_LEN, Scorer, _env, losses, make_data, save_tiny_model, train

STEPS, GRAD_ACCUM, LAM = 3, 2, 0.5
HF_RUN = Path(__file__).parents[1] / "hf_trainer_run.py"


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
    proc = subprocess.run(
        command, check=False, capture_output=True, text=True, env=_env(), timeout=300
    )
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


def test_a_used_collator_pickles_without_its_channel(env):
    """DataLoader workers may be spawned: they get the collator pickled, and open their own."""
    import pickle

    collator = ScoreCollator(ServiceScores(env["scorer"].url))
    features = [{"input_ids": torch.arange(3, 20)}]
    first = collator(features)
    copy = pickle.loads(pickle.dumps(collator))
    assert copy.scores._resource is None
    torch.testing.assert_close(
        copy(features)["tokenweight_logp_long"], first["tokenweight_logp_long"]
    )


def batch_loss(env, batch: dict, loss: TokenWeightLoss) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(env["model"])
    batch = dict(batch)
    scores = AttachedScores.pop(batch)
    hidden = model.model(batch["input_ids"]).last_hidden_state
    return loss(hidden, model.lm_head, batch["input_ids"], batch["labels"], scores)


def test_collator_attaches_the_scorers_arrays_and_the_loss_weights_them(env):
    batch = collated(env, [0, 1])
    scorer = ScorerClient(env["scorer"].url)
    want = scorer.score(list(batch["input_ids"].numpy()))
    scorer.close()
    assert batch["tokenweight_fingerprint"] == want.fingerprint
    for name in ("logp_long", "logp_short"):
        np.testing.assert_allclose(
            batch[f"tokenweight_{name}"], [getattr(r, name) for r in want.results], atol=1e-5
        )
    assert batch["input_ids"].shape == (2, SEQ_LEN) and torch.equal(
        batch["labels"], batch["input_ids"]
    )
    weighting = WeightingConfig.from_preset("dense", lam=LAM)
    got = batch_loss(env, batch, TokenWeightLoss(weighting))
    # Brute force: full logits, per-token CE, weights from the attached arrays.
    from transformers import AutoModelForCausalLM

    from tokenweight.trainer.weighting import compute_weights

    model = AutoModelForCausalLM.from_pretrained(env["model"])
    logits = model(batch["input_ids"]).logits[:, :-1].float()
    ce = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        batch["input_ids"][:, 1:].reshape(-1),
        reduction="none",
    ).view(2, -1)
    w = compute_weights(
        -batch["tokenweight_logp_long"], -batch["tokenweight_logp_short"], weighting
    )
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

    example = Path(__file__).parents[2] / "examples" / "hf_trainer.py"
    code = example.read_text()
    assert len(code.splitlines()) <= 15
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert f"```python\n{code}```" in readme  # the README shows exactly this file
    model, info = default_model()
    scorer = Scorer(model, window=info["window"], http=True)
    try:
        proc = subprocess.run(
            [sys.executable, str(example)],
            check=False,
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


def test_store_scores_are_the_stores_rows_for_the_examples_tokens(env, tmp_path):
    from tokenweight.cli import main as cli
    from tokenweight.integrations.transformers import StoreScores
    from tokenweight.trainer.score_store import ScoreStore

    store = tmp_path / "scores"
    argv = ["precompute", "--data", str(env["data"]), "--scorer-url", env["scorer"].url]
    assert cli([*argv, "--out", str(store)]) == 0
    shards = TokenShards(env["data"])
    collator = ScoreCollator(StoreScores(store, env["data"]))
    # Rows cut to 40 tokens, as a shorter training context would: the first 39 values.
    features = [
        {"input_ids": torch.as_tensor(shards[i][:40], dtype=torch.long), "sequence_index": i}
        for i in (5, 9)
    ]
    batch = collator(features)
    assert "sequence_index" not in batch  # not a model input
    with ScoreStore.open(store, shards.content_hash) as scores:
        logp_long, logp_short = scores.get([5, 9])
        assert batch["tokenweight_fingerprint"] == scores.meta.fingerprint
    np.testing.assert_array_equal(batch["tokenweight_logp_long"], logp_long[:, :39])
    np.testing.assert_array_equal(batch["tokenweight_logp_short"], logp_short[:, :39])
    # An example whose tokens are not its row's is refused, as is one without its row.
    with pytest.raises(ScoreMismatchError, match="holds other tokens than row 9"):
        collator(
            [
                features[0],
                {**features[1], "sequence_index": 9, "input_ids": features[0]["input_ids"]},
            ]
        )
    with pytest.raises(ScoreMismatchError, match="sequence_index"):
        collator([{"input_ids": features[0]["input_ids"]}])


def pad_right(features):
    from torch.nn.utils.rnn import pad_sequence

    ids = [f["input_ids"] for f in features]
    mask = [torch.ones_like(i) for i in ids]
    return {
        "input_ids": pad_sequence(ids, batch_first=True, padding_value=0),
        "attention_mask": pad_sequence(mask, batch_first=True, padding_value=0),
    }


def test_right_padded_rows_are_scored_and_weighted_over_their_own_tokens(env):
    shards = TokenShards(env["data"])
    lengths = (SEQ_LEN, 30)
    features = [
        {"input_ids": torch.as_tensor(shards[i][:n], dtype=torch.long)}
        for i, n in enumerate(lengths)
    ]
    padded = ScoreCollator(ServiceScores(env["scorer"].url), base=pad_right)(features)
    assert (padded["labels"][1, 30:] == -100).all() and padded["tokenweight_logp_short"][
        1, 29:
    ].isnan().all()
    # The short row alone, unpadded, gives the same arrays and the same loss.
    alone = collated(env, [0])
    short = ScoreCollator(ServiceScores(env["scorer"].url))(features[1:])
    np.testing.assert_allclose(
        padded["tokenweight_logp_short"][1, :29], short["tokenweight_logp_short"][0], atol=1e-5
    )
    weighting = WeightingConfig.from_preset("dense")
    losses = [batch_loss(env, b, TokenWeightLoss(weighting)) for b in (padded, alone, short)]
    # Mean over all real targets of the batch: (63 * loss_row0 + 29 * loss_row1) / 92.
    want = (63 * losses[1] + 29 * losses[2]) / 92
    torch.testing.assert_close(losses[0], want, rtol=0, atol=1e-5)


def test_left_padding_is_refused(env):
    def pad_left(features):
        batch = pad_right([{"input_ids": f["input_ids"].flip(0)} for f in features])
        return {k: v.flip(1) for k, v in batch.items()}

    shards = TokenShards(env["data"])
    features = [
        {"input_ids": torch.as_tensor(shards[i][:n], dtype=torch.long)}
        for i, n in ((0, 20), (1, 10))
    ]
    with pytest.raises(ValueError, match="padding_side='right'"):
        ScoreCollator(ServiceScores(env["scorer"].url), base=pad_left)(features)


def test_the_mixin_replaces_a_subclass_loss_in_a_one_process_trainer(env, tmp_path):
    """One process, no accumulation: step 1's logged loss is the batch's weighted loss at the
    initial weights; a Trainer subclass whose own loss needs full logits is bypassed."""
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    from tokenweight.integrations.transformers import TokenWeightTrainerMixin

    class NeedsLogits(Trainer):
        def compute_loss(self, *args, **kwargs):
            raise AssertionError("the subclass loss ran")

    class Weighted(TokenWeightTrainerMixin, NeedsLogits):
        pass

    shards = TokenShards(env["data"])
    rows = [{"input_ids": torch.as_tensor(shards[i], dtype=torch.long)} for i in (0, 1)]
    weighting = WeightingConfig.from_preset("dense", lam=LAM)
    args = TrainingArguments(
        tmp_path, max_steps=1, per_device_train_batch_size=2, use_cpu=True, logging_steps=1,
        train_sampling_strategy="sequential", save_strategy="no", disable_tqdm=True,
    )  # fmt: skip
    trainer = Weighted(
        model=AutoModelForCausalLM.from_pretrained(env["model"]),
        args=args,
        train_dataset=rows,
        data_collator=ScoreCollator(ServiceScores(env["scorer"].url)),
        token_weight_loss=TokenWeightLoss(weighting),
    )
    trainer.train()
    logged = next(r["loss"] for r in trainer.state.log_history if "loss" in r)
    want = batch_loss(env, collated(env, [0, 1]), TokenWeightLoss(weighting))
    assert logged == pytest.approx(want.item(), abs=1e-5)
