"""The report's statistics against known values: Wilson against published intervals, the BCa
paired bootstrap's coverage over repeated synthetic draws, the hierarchical bootstrap's extra
width when blocks differ, Holm against a hand example, verdicts and pairing by id."""

import math

import numpy as np
import pytest

from tokenweight.trainer.evals.stats import (
    align,
    block_t_interval,
    cluster_sums,
    hierarchical_bootstrap,
    holm,
    mean_stat,
    ratio_stat,
    paired_bca,
    summarize,
    verdict,
    wilson,
)


@pytest.mark.parametrize(
    "successes, n, low, high",
    [
        # Newcombe (1998), Table I, Wilson score method without continuity correction.
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
        # 8 of 10: the usual textbook example.
        (8, 10, 0.4902, 0.9433),
    ],
)
def test_wilson_reproduces_published_intervals(successes, n, low, high):
    w = wilson(successes, n)
    assert w["value"] == pytest.approx(successes / n)
    assert w["ci"] == pytest.approx([low, high], abs=6e-5)


def test_wilson_is_informative_at_the_ceiling():
    w = wilson(60, 60)
    assert w["ci"][1] == pytest.approx(1.0) and 0.93 < w["ci"][0] < 0.95  # not "1.00 [1.00, 1.00]"
    assert math.isnan(wilson(0, 0)["value"])


def test_paired_bca_covers_the_true_difference_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    draws, hits, n = 300, 0, 120
    for d in range(draws):
        # Paired accuracies: item difficulty shared by both arms, arm A 0.08 more likely right.
        difficulty = rng.uniform(0.2, 0.8, n)
        u = rng.uniform(size=n)
        a = (u < difficulty + 0.08).astype(float)
        b = (u < difficulty).astype(float)
        res = paired_bca(mean_stat, [a], [b], seed=d, n_boot=1000)
        hits += res["ci"][0] <= 0.08 <= res["ci"][1]
    assert 0.91 <= hits / draws <= 0.985


def test_paired_bca_of_a_ratio_statistic_matches_its_point_value():
    rng = np.random.default_rng(1)
    n_tokens = rng.integers(1, 5, 200).astype(float)
    ce_b = rng.gamma(2.0, 1.0, 200) * n_tokens
    ce_a = ce_b - 0.3 * n_tokens + rng.normal(0, 0.2, 200)
    res = paired_bca(ratio_stat, [ce_a, n_tokens], [ce_b, n_tokens])
    assert res["value"] == pytest.approx(ce_a.sum() / n_tokens.sum() - ce_b.sum() / n_tokens.sum())
    assert res["ci"][0] < res["value"] < res["ci"][1] < 0 and res["p"] < 0.01


def test_a_degenerate_difference_says_so_instead_of_a_zero_width_interval():
    ones = np.ones(50)
    res = paired_bca(mean_stat, [ones], [ones])
    assert res["degenerate"] and res["value"] == 0.0 and all(math.isnan(x) for x in res["ci"])
    assert verdict(res["ci"]) == "not resolved"
    assert summarize(mean_stat, ones)["degenerate"]  # the quick bootstrap flags it too


def test_hierarchical_bootstrap_is_wider_when_blocks_differ():
    rng = np.random.default_rng(2)
    blocks = []
    for shift in (-0.15, 0.0, 0.2, 0.05, -0.1):  # each pretraining run moves the difference
        b = rng.normal(0.0, 1.0, 300)
        a = b + 0.05 + shift + rng.normal(0.0, 0.3, 300)
        blocks.append(([a], [b]))
    pooled_a = np.concatenate([blk[0][0] for blk in blocks])
    pooled_b = np.concatenate([blk[1][0] for blk in blocks])
    items_only = paired_bca(mean_stat, [pooled_a], [pooled_b])
    hier = hierarchical_bootstrap(mean_stat, blocks)
    assert hier["value"] == pytest.approx(items_only["value"])
    width = lambda r: r["ci"][1] - r["ci"][0]
    assert width(hier) > 3 * width(items_only)
    assert hier["per_block"] == pytest.approx([np.mean(a[0] - b[0]) for a, b in blocks])
    # With identical blocks the block level adds nothing: the widths are alike.
    same = hierarchical_bootstrap(mean_stat, [blocks[0]] * 5)
    tiled = paired_bca(mean_stat, [np.tile(blocks[0][0][0], 5)], [np.tile(blocks[0][1][0], 5)])
    assert 0.7 < width(same) / width(tiled) < 1.4


def test_block_t_interval_against_a_hand_computation():
    # Five blocks: mean 0.03, sample sd 0.01, t(0.975, df=4) = 2.776445.
    per_block = [0.02, 0.03, 0.04, 0.02, 0.04]
    half = 2.776445 * 0.01 / math.sqrt(5)
    assert block_t_interval(per_block) == pytest.approx([0.03 - half, 0.03 + half], abs=1e-7)
    assert all(math.isnan(x) for x in block_t_interval([0.05]))  # one block has no spread


def test_holm_against_a_hand_example():
    # Sorted 0.01, 0.03, 0.04 -> 3 x 0.01 = 0.03; 2 x 0.03 = 0.06; max(0.06, 1 x 0.04) = 0.06.
    out = holm({"acc": 0.01, "id_loss": 0.04, "short_ppl": 0.03})
    assert {k: v["p_holm"] for k, v in out.items()} == pytest.approx(
        {"acc": 0.03, "id_loss": 0.06, "short_ppl": 0.06}
    )
    assert [k for k, v in out.items() if v["rejected"]] == ["acc"]
    assert holm({"a": 0.6, "b": 0.7})["b"]["p_holm"] == 1.0  # capped at 1


@pytest.mark.parametrize(
    "ci, better, expected",
    [
        ([0.03, 0.08], "higher", "held"),
        ([-0.08, -0.03], "higher", "contradicted"),
        ([-0.01, 0.015], "higher", "equivalent"),
        ([0.01, 0.05], "higher", "not resolved"),
        ([-0.08, -0.03], "lower", "held"),  # a loss that went down
        ([0.03, 0.08], "lower", "contradicted"),
    ],
)
def test_verdicts(ci, better, expected):
    assert verdict(ci, 0.02, better) == expected


def test_align_pairs_records_by_id():
    a = [{"id": "x", "v": 1}, {"id": "y", "v": 2}, {"id": "z", "v": 3}]
    b = [{"id": "z", "v": 30}, {"id": "x", "v": 10}, {"id": "w", "v": 0}]
    left, right = align(a, b)
    assert [r["v"] for r in left] == [1, 3] and [r["v"] for r in right] == [10, 30]
    with pytest.raises(ValueError, match="twice"):
        align(a, [*b, {"id": "x", "v": 11}])


def test_cluster_sums_resample_files_not_their_correlated_items():
    rng = np.random.default_rng(3)
    records_a, records_b = [], []
    for f in range(40):
        shift = rng.normal(0, 1.0)  # a file's items move together
        for i in range(int(rng.integers(5, 30))):
            nll = rng.gamma(2.0, 1.0)
            records_a.append({"id": f"{f}/{i}", "file": f"f{f}", "nll": nll + shift, "tokens": 1})
            records_b.append({"id": f"{f}/{i}", "file": f"f{f}", "nll": nll, "tokens": 1})
    ca, cb = cluster_sums(records_a, ("nll", "tokens")), cluster_sums(records_b, ("nll", "tokens"))
    assert len(ca) == 40 and sum(c["items"] for c in ca) == len(records_a)
    assert ca[0]["nll"] == pytest.approx(sum(r["nll"] for r in records_a if r["file"] == "f0"))
    pick = lambda rs: [np.array([r["nll"] for r in rs]), np.array([r["tokens"] for r in rs])]
    items = paired_bca(ratio_stat, pick(records_a), pick(records_b))
    files = paired_bca(ratio_stat, pick(ca), pick(cb))
    assert files["value"] == pytest.approx(items["value"])
    assert files["ci"][1] - files["ci"][0] > 2 * (items["ci"][1] - items["ci"][0])
