"""Postprocessing of long/short losses into weights (docs/DESIGN.md §1.2). Expected values are
written out by hand or with independent numpy formulas, never by calling the code under test."""

import math

import numpy as np
import pytest
import torch

from tokenweight.trainer.weighting import PRESETS, WeightingConfig, compute_weights, shift

LN2 = math.log(2.0)


def t(rows):
    return rows if isinstance(rows, torch.Tensor) else torch.tensor(rows, dtype=torch.float32)


def weights(preset, long, short, mask=None, **params):
    return compute_weights(t(long), t(short), WeightingConfig.from_preset(preset, **params), mask)


def close(actual, expected):
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=torch.float32), rtol=1e-5, atol=1e-6)


# difference = long - short = [1, -0.5, 2, 0]
LONG = [[2.0, 1.0, 3.0, 0.5]]
SHORT = [[1.0, 1.5, 1.0, 0.5]]


# --- presets against their formulas ------------------------------------------------------------

def test_uniform_is_all_ones():
    assert WeightingConfig.from_preset("uniform").is_uniform
    close(weights("uniform", LONG, SHORT), [[1.0, 1.0, 1.0, 1.0]])


def test_dense():
    # |d| = [1, .5, 2, 0], L1 sum 3.5 over 4 targets -> |d| * 4 / 3.5, then 0.75 + 0.25 * w.
    expected = [[0.75 + 0.25 * 4 / 3.5, 0.75 + 0.25 * 2 / 3.5, 0.75 + 0.25 * 8 / 3.5, 0.75]]
    close(weights("dense", LONG, SHORT), expected)
    close(weights("dense", LONG, SHORT, lam=0.5),
          [[0.5 + 0.5 * 4 / 3.5, 0.5 + 0.5 * 2 / 3.5, 0.5 + 0.5 * 8 / 3.5, 0.5]])
    close(weights("dense", LONG, SHORT, lam=1.0), [[1.0, 1.0, 1.0, 1.0]])


def test_sparse():
    # |d| = [1, .5, 2, 0]; kappa 0.5 of 4 keeps 2 (indices 0, 2), L1 -> 4 / 2 each.
    close(weights("sparse", LONG, SHORT, kappa=0.5), [[2.0, 0.0, 2.0, 0.0]])
    close(weights("sparse", LONG, SHORT, kappa=0.25), [[0.0, 0.0, 4.0, 0.0]])
    close(weights("sparse", LONG, SHORT, kappa=1.0), [[1.0, 1.0, 1.0, 1.0]])


def test_longce_equals_clipped_probability_ratio():
    long = np.array([[2.0, 1.0, 0.1, 5.0, 0.0]])
    short = np.array([[1.0, 1.5, 3.0, 5.0, 7.0]])
    for gamma in (5.0, 2.0):
        expected = np.minimum(np.exp(short - long), gamma)
        close(weights("longce", long.tolist(), short.tolist(), gamma=gamma), expected.tolist())
    # The default gamma is 5: e^2.9 and e^7 are clipped to 5.
    close(weights("longce", long.tolist(), short.tolist()),
          [[math.exp(-1.0), math.exp(0.5), 5.0, 1.0, 5.0]])


def test_ppmi():
    long = [[1.0, 1.0, 1.0, 1.0, 1.0]]
    short = [[3.0, 1.5, 1.2, 2.0, 0.0]]
    # short - long - ln 2 = [1.31, -0.19, -0.49, 0.31, -1.69] -> max -> positive at 0 and 3.
    close(weights("ppmi", long, short, c=2.0, kappa=0.4), [[2.5, 0.0, 0.0, 2.5, 0.0]])
    close(weights("ppmi", long, short, c=2.0, kappa=0.2), [[5.0, 0.0, 0.0, 0.0, 0.0]])
    # c = e: short - long - 1 = [1, -.5, -.8, 0, -2]; only index 0 positive, kappa keeps 1.
    close(weights("ppmi", long, short, c=math.e, kappa=0.2), [[5.0, 0.0, 0.0, 0.0, 0.0]])


def test_npmi():
    long = [[3.0, 1.0, 1.0, 2.5]]
    short = [[1.0, 1.0, 0.5, 0.0]]
    # long - short - ln 2 = [1.31, -0.69, -0.19, 1.81] -> max -> positive at 0 and 3.
    close(weights("npmi", long, short, c=2.0, kappa=0.5), [[2.0, 0.0, 0.0, 2.0]])
    close(weights("npmi", long, short, c=2.0, kappa=0.25), [[0.0, 0.0, 0.0, 4.0]])


def test_pmi_transforms_before_sparsification():
    long = np.array([[1.0, 2.0, 0.5, 4.0]])
    short = np.array([[3.0, 1.0, 0.5, 1.0]])
    ppmi = WeightingConfig(transforms=("minus", shift(2.0), "max"))
    npmi = WeightingConfig(transforms=(shift(2.0), "max"))
    close(compute_weights(t(long), t(short), ppmi), np.maximum(0, short - long - LN2).tolist())
    close(compute_weights(t(long), t(short), npmi), np.maximum(0, long - short - LN2).tolist())


def test_preset_fields():
    assert WeightingConfig.from_preset("ppmi", c=2.0, kappa=0.2) == WeightingConfig(
        transforms=("minus", "shift 2.0", "max"), sparsification=0.2, normalization="L1")
    assert WeightingConfig.from_preset("npmi", c=3, kappa=0.1) == WeightingConfig(
        transforms=("shift 3.0", "max"), sparsification=0.1, normalization="L1")
    assert WeightingConfig.from_preset("longce") == WeightingConfig(transforms=("minus", "exp"), truncation=5.0)
    assert WeightingConfig.from_preset("dense") == WeightingConfig(
        transforms=("absolute",), normalization="L1", interpolation=0.75)
    assert WeightingConfig.from_preset("sparse") == WeightingConfig(
        transforms=("absolute",), sparsification=0.2, normalization="L1")
    assert WeightingConfig.from_preset("sparse", seed=7).seed == 7


# --- individual steps --------------------------------------------------------------------------

def test_comparison_quotient():
    long = np.array([[2.0, 0.0, 1.0]])
    short = np.array([[1.0, 0.0, 4.0]])
    config = WeightingConfig(comparison="quotient")
    close(compute_weights(t(long), t(short), config), ((long + 1e-5) / (short + 1e-5)).tolist())


def test_transforms_apply_in_listed_order():
    # d = [1, -0.5, 2, 0]: exp then minus = -e^d; minus then exp = e^-d; abs after minus = |d|.
    d = np.array([[1.0, -0.5, 2.0, 0.0]])
    close(compute_weights(t(LONG), t(SHORT), WeightingConfig(transforms=("exp", "minus"))), (-np.exp(d)).tolist())
    close(compute_weights(t(LONG), t(SHORT), WeightingConfig(transforms=("minus", "exp"))), np.exp(-d).tolist())
    close(compute_weights(t(LONG), t(SHORT), WeightingConfig(transforms=("minus", "max"))), [[0.0, 0.5, 0.0, 0.0]])
    close(compute_weights(t(LONG), t(SHORT), WeightingConfig(transforms=("shift 4",))), (d - math.log(4)).tolist())


def test_truncation_clips_above_only():
    config = WeightingConfig(truncation=0.75)
    close(compute_weights(t(LONG), t(SHORT), config), [[0.75, -0.5, 0.75, 0.0]])


def test_interpolation_without_normalization():
    # docs/DESIGN.md lists interpolation as its own step (the released code only ran it inside
    # normalisation): 0.5 + 0.5 * |d|.
    config = WeightingConfig(transforms=("absolute",), interpolation=0.5)
    close(compute_weights(t(LONG), t(SHORT), config), [[1.0, 0.75, 1.5, 0.5]])


def test_l1_rows_have_mean_one():
    gen = torch.Generator().manual_seed(0)
    long, short = torch.rand(6, 37, generator=gen) * 5, torch.rand(6, 37, generator=gen) * 5
    w = compute_weights(long, short, WeightingConfig(transforms=("absolute",), normalization="L1"))
    torch.testing.assert_close(w.mean(dim=1), torch.ones(6))
    expected = (long - short).abs().numpy()
    expected = expected / expected.sum(axis=1, keepdims=True) * 37
    torch.testing.assert_close(w, torch.from_numpy(expected))


def test_softmax_rows_sum_to_length():
    config = WeightingConfig(transforms=("absolute",), normalization="softmax")
    e = np.exp([1.0, 0.5, 2.0, 0.0])
    close(compute_weights(t(LONG), t(SHORT), config), [(4 * e / e.sum()).tolist()])
    gen = torch.Generator().manual_seed(1)
    w = compute_weights(torch.randn(5, 23, generator=gen), torch.randn(5, 23, generator=gen), config)
    torch.testing.assert_close(w.sum(dim=1), torch.full((5,), 23.0))


@pytest.mark.parametrize("normalization", ["L1", "softmax"])
def test_all_zero_rows_become_uniform(normalization):
    long = t([[1.0, 2.0, 3.0], [1.0, 1.0, 4.0]])
    short = t([[1.0, 2.0, 3.0], [0.0, 1.0, 4.0]])  # row 0: no difference anywhere
    w = compute_weights(long, short, WeightingConfig(transforms=("absolute",), normalization=normalization))
    close(w[0:1], [[1.0, 1.0, 1.0]])
    assert w[1, 0] > w[1, 1]
    # dense: 0.75 + 0.25 * 1 = 1 on an all-zero row
    close(compute_weights(long[:1], short[:1], WeightingConfig.from_preset("dense")), [[1.0, 1.0, 1.0]])


# --- sparsification ----------------------------------------------------------------------------

@pytest.mark.parametrize(("n", "kappa", "kept"), [
    (10, 0.2, 2), (10, 0.3, 3), (10, 0.25, 2), (7, 0.5, 3), (100, 0.29, 29), (33, 1.0, 33), (3, 0.5, 1),
])
def test_sparse_keeps_floor_kappa_n_largest(n, kappa, kept):
    # floor(kappa * n), as the released code's int(k * n), robust to 0.29 * 100 = 28.999...
    gen = torch.Generator().manual_seed(n)
    long, short = torch.rand(4, n, generator=gen), torch.rand(4, n, generator=gen)
    w = compute_weights(long, short, WeightingConfig(transforms=("absolute",), sparsification=kappa))
    assert ((w == 0) | (w == 1)).all()
    assert (w.sum(dim=1) == kept).all()
    d = (long - short).abs()
    threshold = d.topk(kept, dim=1).values[:, -1:]
    assert torch.equal(w.bool(), d >= threshold)
    # after L1 the kept entries carry n / kept each
    w = weights("sparse", long.tolist(), short.tolist(), kappa=kappa)
    torch.testing.assert_close(w.max(dim=1).values, torch.full((4,), n / kept))


def test_sparse_row_too_short_stays_uniform():
    # floor(0.2 * 4) = 0: the released code's indices[:, -0:] keeps every entry.
    close(weights("sparse", LONG, SHORT, kappa=0.2), [[1.0, 1.0, 1.0, 1.0]])
    w = compute_weights(t(LONG), t(SHORT), WeightingConfig(transforms=("absolute",), sparsification=0.2))
    close(w, [[1.0, 1.0, 1.0, 1.0]])


def _tied_rows():
    # ppmi with kappa 0.5 on 40 targets: 3 positive entries, 37 zeros; 17 of the zeros are kept.
    long = torch.ones(2, 40)
    short = torch.ones(2, 40)
    short[:, [3, 10, 25]] = torch.tensor([4.0, 3.0, 5.0])
    return long, short


def test_ties_among_zeros_random_but_seeded():
    long, short = _tied_rows()
    w42 = compute_weights(long, short, WeightingConfig.from_preset("ppmi", kappa=0.5, seed=42))
    assert (w42.bool().sum(dim=1) == 20).all()
    assert w42[:, [3, 10, 25]].bool().all()  # the positive entries always win
    again = compute_weights(long, short, WeightingConfig.from_preset("ppmi", kappa=0.5, seed=42))
    assert torch.equal(w42, again)
    w7 = compute_weights(long, short, WeightingConfig.from_preset("ppmi", kappa=0.5, seed=7))
    assert not torch.equal(w42, w7)
    assert (w7.bool().sum(dim=1) == 20).all()
    # not simply the lowest or highest indices
    zeros_kept = w42[0].bool().clone()
    zeros_kept[[3, 10, 25]] = False
    assert zeros_kept[:20].any() and zeros_kept[20:].any()
    assert not torch.equal(w42[0], w42[1])  # each row draws its own tie-breaks


def test_persistent_generator_varies_between_steps():
    long, short = _tied_rows()
    config = WeightingConfig.from_preset("ppmi", kappa=0.5)
    gen = torch.Generator().manual_seed(0)
    first = compute_weights(long, short, config, generator=gen)
    second = compute_weights(long, short, config, generator=gen)
    assert not torch.equal(first, second)
    gen.manual_seed(0)
    assert torch.equal(first, compute_weights(long, short, config, generator=gen))


# --- mask --------------------------------------------------------------------------------------

def test_mask_hand_case():
    long = t([[2.0, 1.0, float("nan"), 9.0]])
    short = t([[1.0, 1.5, 0.0, float("inf")]])
    mask = torch.tensor([[True, True, False, False]])
    # |d| = [1, .5] over 2 real targets: L1 -> [4/3, 2/3] -> 0.75 + 0.25 * w
    close(weights("dense", long, short, mask), [[0.75 + 0.25 * 4 / 3, 0.75 + 0.25 * 2 / 3, 0.0, 0.0]])
    close(weights("uniform", long, short, mask), [[1.0, 1.0, 0.0, 0.0]])
    close(weights("sparse", long, short, mask, kappa=0.5), [[2.0, 0.0, 0.0, 0.0]])
    e = np.exp(np.array([1.0, 0.5]))
    config = WeightingConfig(transforms=("absolute",), normalization="softmax")
    close(compute_weights(long, short, config, mask), [(2 * e / e.sum()).tolist() + [0.0, 0.0]])


@pytest.mark.parametrize("preset", PRESETS)
def test_padded_rows_match_unpadded(preset):
    gen = torch.Generator().manual_seed(3)
    lengths = [30, 17, 0, 5]
    long = torch.rand(4, 30, generator=gen) * 4
    short = torch.rand(4, 30, generator=gen) * 4
    mask = torch.arange(30)[None, :] < torch.tensor(lengths)[:, None]
    config = WeightingConfig.from_preset(preset)
    w = compute_weights(long, short, config, mask)
    assert (w[~mask] == 0).all()
    for row, n in enumerate(lengths):
        if n:
            alone = compute_weights(long[row:row + 1, :n], short[row:row + 1, :n], config)
            torch.testing.assert_close(w[row:row + 1, :n], alone)


def test_sparse_count_uses_real_length():
    long = torch.rand(1, 20)
    short = torch.zeros(1, 20)
    mask = torch.zeros(1, 20, dtype=torch.bool)
    mask[0, :10] = True
    w = compute_weights(long, short, WeightingConfig(transforms=("absolute",), sparsification=0.3), mask)
    assert w.sum() == 3 and w[0, :10].sum() == 3


# --- output and errors -------------------------------------------------------------------------

def test_output_float32_without_grad():
    long = torch.rand(2, 6, dtype=torch.float64, requires_grad=True)
    short = torch.rand(2, 6, dtype=torch.bfloat16)
    for preset in PRESETS:
        w = compute_weights(long, short, WeightingConfig.from_preset(preset))
        assert w.dtype == torch.float32 and w.shape == (2, 6) and not w.requires_grad


@pytest.mark.parametrize(("name", "params", "message"), [
    ("dens", {}, "uniform"),
    ("dense", {"kappa": 0.2}, "lam"),
    ("uniform", {"lam": 0.5}, "none"),
    ("ppmi", {"gamma": 1.0}, "c, kappa"),
    ("sparse", {"kappa": 0.0}, "(0, 1]"),
    ("sparse", {"kappa": 1.5}, "(0, 1]"),
    ("ppmi", {"kappa": -0.1}, "(0, 1]"),
    ("dense", {"lam": 1.1}, "[0, 1]"),
    ("dense", {"lam": -0.1}, "[0, 1]"),
    ("longce", {"gamma": 0.0}, "> 0"),
    ("npmi", {"c": 0.0}, "> 0"),
    ("ppmi", {"c": -2.0}, "> 0"),
    ("sparse", {"kappa": "0.2"}, "number"),
    ("sparse", {"kappa": True}, "number"),
    ("longce", {"gamma": float("inf")}, "finite"),
])
def test_from_preset_errors(name, params, message):
    with pytest.raises(ValueError) as err:
        WeightingConfig.from_preset(name, **params)
    assert message in str(err.value)


@pytest.mark.parametrize(("fields", "message"), [
    ({"comparison": "ratio"}, "difference"),
    ({"transforms": ("abs",)}, "absolute"),
    ({"transforms": "absolute"}, "sequence"),
    ({"transforms": ("shift 0",)}, "> 0"),
    ({"transforms": ("shift two",)}, "shift <c>"),
    ({"normalization": "l2"}, "softmax"),
    ({"sparsification": 0.0}, "(0, 1]"),
    ({"interpolation": 2.0}, "[0, 1]"),
    ({"truncation": -1.0}, "> 0"),
    ({"seed": 1.5}, "seed"),
])
def test_config_validation(fields, message):
    with pytest.raises(ValueError) as err:
        WeightingConfig(**fields)
    assert message in str(err.value)


def test_transforms_list_becomes_tuple():
    config = WeightingConfig(transforms=["absolute", "shift 2"])
    assert config.transforms == ("absolute", "shift 2")
    hash(config)


def test_shape_errors():
    config = WeightingConfig.from_preset("dense")
    with pytest.raises(ValueError, match="batch, targets"):
        compute_weights(torch.zeros(4), torch.zeros(4), config)
    with pytest.raises(ValueError, match="batch, targets"):
        compute_weights(torch.zeros(2, 4), torch.zeros(2, 5), config)
    with pytest.raises(ValueError, match="mask"):
        compute_weights(torch.zeros(2, 4), torch.zeros(2, 4), config, torch.ones(2, 4))
