"""bench/quality's report and hand-off on synthetic eval results: seeds pooled item by item,
claims judged from paired intervals, the results section of RESULTS.md filled, and a run
packed into device-call-sized parts and unpacked again."""

import json
from pathlib import Path

import numpy as np
import pytest

from bench.quality import handoff, report
from bench.quality.jobs import PipelineError
from bench.quality.profiles import ARMS, PROFILES
from bench.quality.stages import Context

N = 40  # held-out sequences (and synthetic items) per eval


def fake_eval(
    key_ce: float, short_ce: float = 2.0, credit: float = 0.25, seed: int = 0, items_hash: str = "h"
) -> dict:
    rng = np.random.default_rng(seed)
    noise = lambda: rng.normal(0, 0.01, N)
    return {
        "model": f"m{seed}",
        "settings": {"window": 32},
        "perplexity": {"by_position": {"edges": [0, 32, 64]}},
        "retrieval": {"edges": [0, 32, 64], "tasks": {"passkey": {"chance": 0.25}}},
        "items": {
            "position_ce": np.stack([100 * (2 + noise()), 100 * (2 + noise())], 1).tolist(),
            "position_n": [[100, 100]] * N,
            "key_ce": (10 * (key_ce + noise())).tolist(),
            "key_n": [10] * N,
            "short_ce": (32 * (short_ce + noise())).tolist(),
            "short_n": [32] * N,
            "retrieval": [
                {"task": "passkey", "distance": 10 + i, "credit": float(i < credit * N)}
                for i in range(N)
            ],
        },
        "items_hash": items_hash,
    }


def test_seeds_pool_item_by_item():
    evals = [fake_eval(1.0, seed=0), fake_eval(2.0, seed=1)]
    metrics = {m.key: m for m in report.metrics_for(evals[0])}
    summary = report.summarize_arm(evals, list(metrics.values()))["long_range_ppl"]
    assert summary["value"] == pytest.approx(np.exp(1.5), rel=1e-2)  # summed CE over both seeds
    assert summary["per_seed"] == pytest.approx([np.e, np.e**2], rel=1e-2)
    assert summary["ci"][0] < summary["value"] < summary["ci"][1] and summary["items"] == N
    assert set(metrics) >= {
        "ppl",
        "ppl_pos_0-32",
        "ppl_pos_32-64",
        "short_ppl",
        "acc_far",
        "acc_passkey_0-32",
    }


def test_a_two_sided_claim_says_which_way_it_missed():
    assert report.verdict([-0.3, -0.2], -0.1, 0.1) == "contradicted (lower)"
    assert report.verdict([0.2, 0.3], -0.1, 0.1) == "contradicted (higher)"
    assert report.verdict([-0.3, -0.2], 0.0, float("inf")) == "contradicted"
    assert report.verdict([-0.2, 0.05], -0.1, 0.1) == "not resolved"
    assert report.verdict([-0.05, 0.05], -0.1, 0.1) == "held"


def test_claims_from_paired_intervals():
    groups = {
        "uniform": [fake_eval(2.0, credit=0.25)],
        "dense": [fake_eval(1.5, credit=0.75)],  # better long-range, same short context
        "sparse-0.2": [fake_eval(2.5, short_ce=2.5, credit=0.25)],  # worse everywhere
        "dense-self": [fake_eval(1.5, credit=0.75, seed=3)],
    }
    metrics = {m.key: m for m in report.metrics_for(groups["uniform"][0])}
    claims = {
        (c["arm"], c["reference"], c["metric"]): c["verdict"]
        for c in report.check_claims(groups, metrics)
    }
    assert claims[("dense", "uniform", "long_range_ppl")] == "held"
    assert claims[("dense", "uniform", "short_ppl")] == "held"
    assert claims[("sparse-0.2", "uniform", "long_range_ppl")] == "contradicted"
    assert claims[("sparse-0.2", "uniform", "short_ppl")] == "contradicted"
    assert claims[("dense-self", "dense", "long_range_ppl")] == "held"
    assert claims[("sparse-0.2", "dense", "short_ppl")] == "held"  # sparse loses more
    assert claims[("sparse-0.2", "dense", "acc_far")] == "contradicted"  # and retrieves less
    assert ("sparse-0.4", "dense", "acc_far") not in claims  # no such arm in this run
    # acc_far counts distances >= the window: the items at 32..49
    assert claims[("dense", "uniform", "acc_far")] in ("held", "not resolved")


def _context(tmp_path, repo: Path) -> Context:
    doc = repo / "docs" / "RESULTS.md"
    doc.parent.mkdir(parents=True)
    doc.write_text(f"# intro\n\n{report.BEGIN}\npending\n{report.END}\n\ntail\n")
    return Context(
        profile=PROFILES["smoke"],
        work=tmp_path / "work",
        runner=None,
        device="cpu",
        seeds=(0,),
        arms=ARMS,
        results=repo / "bench" / "results" / "quality_smoke.json",
        doc=doc,
        plots=repo / "docs" / "results",
        bundle=tmp_path / "work" / "bundle",
    )


def _write_run(ctx: Context, evals: dict) -> None:
    (ctx.work / "eval").mkdir(parents=True)
    for name, e in evals.items():
        (ctx.work / "eval" / f"{name}.json").write_text(json.dumps(e))
    (ctx.work / "corpus").mkdir()
    (ctx.work / "corpus" / "manifest.json").write_text(
        json.dumps(
            {"list_hash": "abc", "python": "3.x", "counts": {"train_files": 9, "heldout_files": 1}}
        )
    )
    (ctx.work / "corpus" / "train.jsonl").write_text("{}\n" * 1000)
    (ctx.work / "environment.json").write_text(
        json.dumps(
            {
                "date": "today",
                "devices": ["cpu"],
                "torch": "t",
                "transformers": "x",
                "python": "p",
                "commit": "c",
                "command": "pipeline.py all",
            }
        )
    )
    (ctx.work / "stages.jsonl").write_text(json.dumps({"stage": "eval", "wall_s": 60.0}) + "\n")
    (ctx.work / "commands.jsonl").write_text(
        json.dumps(
            {"name": "eval-base", "argv": ["tokenweight", "eval"], "wall_s": 60.0, "slot": "cpu"}
        )
        + "\n"
    )


def test_report_fills_the_results_section(tmp_path):
    repo = tmp_path / "repo"
    ctx = _context(tmp_path, repo)
    _write_run(
        ctx,
        {
            "base": fake_eval(2.2),
            "uniform-s0": fake_eval(2.0),
            "dense-s0": fake_eval(1.5, credit=0.75),
        },
    )
    report.write_report(ctx)
    doc = ctx.doc.read_text()
    assert doc.startswith("# intro") and doc.endswith("tail\n") and "pending" not in doc
    assert (
        "| metric | base | uniform | dense |" in doc
        and "| held |" in doc
        and "eval-base (60 s)" in doc
    )
    assert {p.name for p in ctx.plots.glob("*.png")} == {
        "retrieval_by_distance.png",
        "ppl_by_position.png",
        "summary.png",
    }
    result = json.loads(ctx.results.read_text())
    assert set(result["arms"]) == {"base", "uniform", "dense"} and result["stage_wall_s"] == {
        "eval": 60.0
    }
    (ctx.work / "eval" / "dense-s0.json").write_text(json.dumps(fake_eval(1.5, items_hash="other")))
    with pytest.raises(PipelineError, match="different items"):
        report.write_report(ctx)


def test_export_parts_and_unpack(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    ctx = _context(tmp_path, repo)
    _write_run(ctx, {"uniform-s0": fake_eval(2.0)})
    (ctx.work / "shards-long").mkdir()
    (ctx.work / "shards-long" / "index.json").write_text("{}")
    (ctx.work / "extend" / "x" / "checkpoints").mkdir(parents=True)
    (ctx.work / "extend" / "x" / "checkpoints" / "meta.json").write_text("{}")
    (ctx.work / "extend" / "x" / "metrics.jsonl").write_text('{"step": 1}\n')
    ctx.bundle.mkdir()
    (ctx.bundle / "config.json").write_text("{}")
    ctx.results.parent.mkdir(parents=True)
    ctx.results.write_text('{"ok": 1}')
    monkeypatch.setattr(handoff, "PART_BYTES", 8192)
    parts = handoff.first_run_export(ctx, repo, tmp_path / "out", models=[])
    assert len(parts) > 1 and all(p.stat().st_size <= 8192 for p in parts)
    work2, repo2 = tmp_path / "work2", tmp_path / "repo2"
    handoff.unpack(tmp_path / "out", work2, repo2)
    assert (work2 / "eval" / "uniform-s0.json").read_text() == (
        ctx.work / "eval" / "uniform-s0.json"
    ).read_text()
    assert (work2 / "extend" / "x" / "metrics.jsonl").is_file() and (
        work2 / "bundle" / "config.json"
    ).is_file()
    assert (work2 / "corpus" / "manifest.json").is_file() and not (
        work2 / "corpus" / "train.jsonl"
    ).exists()
    assert (
        not (work2 / "shards-long").exists()
        and not (work2 / "extend" / "x" / "checkpoints").exists()
    )
    assert (repo2 / "bench" / "results" / "quality_smoke.json").read_text() == '{"ok": 1}'
    assert (repo2 / "docs" / "RESULTS.md").is_file()
    monkeypatch.setattr(handoff, "PART_BYTES", 512)
    with pytest.raises(PipelineError, match="at most"):
        handoff.first_run_export(ctx, repo, tmp_path / "out", models=[])
