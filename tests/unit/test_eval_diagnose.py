"""Scorer diagnostics: Spearman and AUROC against brute force, and `tokenweight diagnose` end
to end on two tiny scorers (a scorer agrees with itself exactly)."""

import json

import numpy as np
import pytest
from eval_helpers import source_texts, write_jsonl

from tokenweight.cli import main
from tokenweight.trainer.evals.diagnose import auroc, spearman


def _average_ranks(x: np.ndarray) -> np.ndarray:
    return np.asarray([np.sum(x < v) + (np.sum(x == v) + 1) / 2 for v in x])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_spearman_and_auroc_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 8, 60).astype(float)  # ties on purpose
    y = x + rng.normal(0, 3, 60)
    assert spearman(x, y) == pytest.approx(np.corrcoef(_average_ranks(x), _average_ranks(y))[0, 1])
    labels = rng.uniform(size=60) < 0.3
    pos, neg = x[labels], x[~labels]
    pairs = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    assert auroc(x, labels) == pytest.approx(pairs.mean())
    assert np.isnan(auroc(x, np.zeros(60, dtype=bool)))


def test_diagnose_end_to_end(tiny_model_dir, tiny_short_model_dir, tmp_path, capsys):
    data = write_jsonl(tmp_path / "heldout.jsonl", source_texts())
    common = ["--data", str(data), "--seq-len", "512", "--window", "64", "--max-sequences", "4"]
    out = tmp_path / "same.json"
    args = ["diagnose", "--scorer", str(tiny_model_dir), "--scorer", str(tiny_model_dir)]
    assert main([*args, *common, "--out", str(out)]) == 0
    same = json.loads(out.read_text())
    assert same["rank_agreement"]["pooled"] == pytest.approx(1.0)
    assert same["repeat_tokens"] > 0 and same["tokens"] == 4 * 511
    assert 0.0 <= same["scorers"][0]["auroc"] <= 1.0
    assert same["scorers"][0]["auroc"] == same["scorers"][1]["auroc"]
    out = tmp_path / "two.json"
    args = ["diagnose", "--scorer", str(tiny_model_dir), "--scorer", str(tiny_short_model_dir)]
    assert main([*args, *common, "--out", str(out), "--preset", "sparse"]) == 0
    two = json.loads(out.read_text())
    assert -1.0 <= two["rank_agreement"]["pooled"] < 0.99
    assert two["scorers"][0]["auroc"] == pytest.approx(same["scorers"][0]["auroc"])
    assert "AUROC" in capsys.readouterr().out
    assert main([*args, *common, "--out", str(out), "--preset", "nope"]) == 1
    assert "--preset" in capsys.readouterr().err


def test_diagnose_long_model_pairs_its_logp_long_with_each_scorers_logp_short(
    tiny_model_dir, tiny_short_model_dir, tmp_path
):
    """With the first scorer as the long model, its hybrid contrast is its own contrast; the
    second scorer's hybrid AUROC is the one computed by hand from the two engines."""
    from tokenweight.trainer.evals.diagnose import auroc
    from tokenweight.trainer.evals.heldout import load_heldout
    from tokenweight.trainer.evals.idrecall import id_loss_mask, source_files
    from tokenweight.trainer.evals.lm import load_engine
    from tokenweight.trainer.prepare import load_tokenizer

    data = write_jsonl(tmp_path / "heldout.jsonl", source_texts())
    out = tmp_path / "hybrid.json"
    args = ["diagnose", "--scorer", str(tiny_model_dir), "--scorer", str(tiny_short_model_dir)]
    args += ["--long-model", str(tiny_model_dir), "--data", str(data), "--seq-len", "512"]
    assert main([*args, "--window", "64", "--max-sequences", "4", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    own_long, short = result["scorers"]
    assert own_long["auroc_hybrid"] == pytest.approx(own_long["auroc"], abs=1e-12)
    assert short["auroc_hybrid"] != pytest.approx(short["auroc"], abs=1e-6)

    tok = load_tokenizer(str(tiny_model_dir))
    heldout = load_heldout(str(data), tok.backend, 512, 64, 4, 0)
    targets = np.concatenate([id_loss_mask(f, 64) for f in source_files(heldout)])
    long_engine = load_engine(tiny_model_dir, 512, 64, "cpu", None)
    short_engine = load_engine(tiny_short_model_dir, 512, 64, "cpu", None)
    delta = np.concatenate(
        [
            np.abs(a.logp_long - b.logp_short)
            for a, b in zip(long_engine.score(heldout.long), short_engine.score(heldout.long))
        ]
    )
    assert short["auroc_hybrid"] == pytest.approx(auroc(delta, targets), abs=1e-9)
    assert -1.0 <= result["rank_agreement_hybrid"]["pooled"] <= 1.0


def test_a_scorer_without_a_tokenizer_is_refused_by_name(tiny_model_dir, tmp_path, capsys):
    """A checkpoint directory with no tokenizer files is a coded error, not a traceback."""
    import shutil

    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(tiny_model_dir / "config.json", bare / "config.json")
    data = write_jsonl(tmp_path / "heldout.jsonl", source_texts())
    args = ["diagnose", "--scorer", str(bare), "--data", str(data), "--seq-len", "64"]
    assert main([*args, "--out", str(tmp_path / "d.json")]) == 1
    assert f"{bare} holds no tokenizer" in capsys.readouterr().err
