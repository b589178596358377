"""Buckets, intervals and tests shared by every metric of the suite and by the report.

- `summarize`, `paired_difference`: percentile bootstraps over evaluation items (sequences,
  files or synthetic items), the quick intervals of a single eval;
- `wilson`: the interval of an accuracy (successes out of n);
- `paired_bca`: the difference of two arms on the same items, BCa bootstrap over items;
- `hierarchical_bootstrap`: the same difference across blocks (independent pretraining runs):
  blocks resampled, then items within each drawn block;
- `holm`, `bootstrap_p`: multiplicity correction for a family of primary endpoints;
- `verdict`: a claim's status from an interval and an equivalence margin;
- `align`: per-item records of two evals paired by their stable ids (records.py);
  `cluster_sums`: records summed per file, the unit to resample when a file's items are
  not independent of each other (many identifier repeats of one file).
A statistic is a function of per-item arrays indexed `[..., n_items]` that reduces the last
axis (`mean_stat`, `ppl_stat`), so one vectorised call does many resamples. An interval whose
resamples all agree says `degenerate: true`: it carries no information, it is not certainty.
"""

import itertools
import math
import warnings

import numpy as np

N_BOOT = 1000
ALPHA = 0.05  # 95% intervals


def doubling_edges(window: int, seq_len: int) -> list[int]:
    """`[0, k, 2k, 4k, ..., L]`: the first bucket is what the short context already covers."""
    edges, edge = [0], window
    while edge < seq_len:
        edges.append(edge)
        edge *= 2
    return edges + [seq_len]


def bucket_labels(edges: list[int]) -> list[str]:
    return [f"{lo}-{hi}" for lo, hi in itertools.pairwise(edges)]


def bucket_index(values, edges: list[int]) -> np.ndarray:
    """Bucket of each value: `i` with `edges[i] <= v < edges[i+1]`, or -1 outside them all."""
    values = np.asarray(values)
    index = np.searchsorted(np.asarray(edges), values, side="right") - 1
    return np.where((values >= edges[0]) & (values < edges[-1]), index, -1)


def resample_indices(n: int, n_boot: int = N_BOOT, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def interval(samples: np.ndarray, alpha: float = ALPHA) -> list[float]:
    finite = samples[np.isfinite(samples)]
    if finite.size == 0:
        return [math.nan, math.nan]
    return [float(np.quantile(finite, alpha / 2)), float(np.quantile(finite, 1 - alpha / 2))]


def mean_stat(values: np.ndarray) -> np.ndarray:
    return values.mean(axis=-1)


def ppl_stat(ce: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Token-level perplexity of the items together: exp(total CE / total tokens)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.exp(ce.sum(axis=-1) / n.sum(axis=-1))


def ratio_stat(total: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Total over count of the items together: mean NLL per token from (nll, tokens), or
    accuracy per item from file clusters' (credit, items)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return total.sum(axis=-1) / count.sum(axis=-1)


def point(stat, *arrays) -> float:
    """`stat(*arrays)`, NaN when there are no items."""
    arrays = [np.asarray(a, dtype=np.float64) for a in arrays]
    return float(stat(*arrays)) if arrays[0].shape[0] else math.nan


def summarize(stat, *arrays, seed: int = 0, n_boot: int = N_BOOT) -> dict:
    """`{"value", "ci", "items"}` for `stat(*arrays)` with a bootstrap interval over items."""
    arrays = [np.asarray(a, dtype=np.float64) for a in arrays]
    n = arrays[0].shape[0]
    if n == 0:
        return {"value": math.nan, "ci": [math.nan, math.nan], "items": 0}
    value = point(stat, *arrays)
    idx = resample_indices(n, n_boot, seed)
    ci = interval(stat(*[a[idx] for a in arrays]))
    return {"value": value, "ci": ci, "items": n, **_degenerate_flag(ci)}


def _degenerate_flag(ci: list[float]) -> dict:
    return {"degenerate": True} if ci[0] == ci[1] else {}


def paired_difference(stat, a: list, b: list, seed: int = 0, n_boot: int = N_BOOT) -> dict:
    """`stat(*a) - stat(*b)` where a and b are the same items scored two ways, resampled together."""
    k = len(a)
    return summarize(lambda *xs: stat(*xs[:k]) - stat(*xs[k:]), *a, *b, seed=seed, n_boot=n_boot)


def wilson(successes: float, n: int, alpha: float = ALPHA) -> dict:
    """Wilson score interval of a proportion (Wilson 1927): sensible at 0 and at n, where a
    bootstrap collapses to a point. `successes` may be fractional (split ties)."""
    from scipy.stats import norm

    if n <= 0:
        return {"value": math.nan, "ci": [math.nan, math.nan], "items": 0, "ci_method": "wilson"}
    z = float(norm.ppf(1 - alpha / 2))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return {
        "value": p,
        "ci": [max(0.0, centre - half), min(1.0, centre + half)],
        "items": n,
        "ci_method": "wilson",
    }


def paired_bca(
    stat, a: list, b: list, seed: int = 0, n_boot: int = 2 * N_BOOT, alpha: float = ALPHA
) -> dict:
    """`stat(*a) - stat(*b)` for the same items measured in two arms, with a BCa interval
    (bias-corrected and accelerated; Efron 1987) from resampling items, both arms together.

    Also returns `p` (two-sided bootstrap p-value of "no difference", for `holm`). When every
    resample gives the same difference (e.g. both arms right on every item) the interval is
    reported as `degenerate` with NaN bounds rather than as a zero-width certainty.
    """
    from scipy.stats import DegenerateDataWarning, bootstrap

    arrays = [np.asarray(x, dtype=np.float64) for x in (*a, *b)]
    k, n = len(a), arrays[0].shape[0]
    if n == 0:
        return {"value": math.nan, "ci": [math.nan, math.nan], "items": 0, "degenerate": True}

    def diff(*xs, axis=-1):
        xs = [np.moveaxis(x, axis, -1) for x in xs]
        return stat(*xs[:k]) - stat(*xs[k:])

    value = float(diff(*arrays))
    if n < 2:
        return _degenerate(value, n)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DegenerateDataWarning)
        warnings.simplefilter("ignore", RuntimeWarning)  # 0/0 acceleration: caught below
        try:
            res = bootstrap(
                arrays,
                diff,
                paired=True,
                vectorized=True,
                n_resamples=n_boot,
                batch=max(1, 2_000_000 // n),  # resamples per batch: bounded memory at any n
                confidence_level=1 - alpha,
                method="BCa",
                rng=np.random.default_rng(seed),
            )
        except DegenerateDataWarning:
            return _degenerate(value, n)
    replicates = res.bootstrap_distribution
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if not (np.isfinite(lo) and np.isfinite(hi)) or np.ptp(replicates) == 0:
        return _degenerate(value, n)
    return {
        "value": value,
        "ci": [lo, hi],
        "items": n,
        "ci_method": "bca",
        "p": bootstrap_p(replicates),
    }


def _degenerate(value: float, n: int) -> dict:
    return {
        "value": value,
        "ci": [math.nan, math.nan],
        "items": n,
        "ci_method": "bca",
        "degenerate": True,
        "p": math.nan,
    }


def hierarchical_bootstrap(
    stat,
    blocks: list[tuple[list, list]],
    seed: int = 0,
    n_boot: int = N_BOOT,
    alpha: float = ALPHA,
) -> dict:
    """`stat(A) - stat(B)` pooled over blocks, each block `(a_arrays, b_arrays)` of its own
    paired items; the interval resamples blocks with replacement, then items within each
    drawn block, so it carries the block-to-block (pretraining) variance as well as the
    items'. Percentile interval; `per_block` gives each block's own difference."""
    if not blocks:
        return {"value": math.nan, "ci": [math.nan, math.nan], "blocks": 0, "degenerate": True}
    k = len(blocks[0][0])
    blocks = [[np.asarray(x, dtype=np.float64) for x in (*a, *b)] for a, b in blocks]

    def diff(arrays):
        return stat(*arrays[:k]) - stat(*arrays[k:])

    pooled = [np.concatenate([blk[i] for blk in blocks]) for i in range(2 * k)]
    rng = np.random.default_rng(seed)
    replicates = np.empty(n_boot)
    for r in range(n_boot):
        drawn = [blocks[j] for j in rng.integers(0, len(blocks), len(blocks))]
        picks = [rng.integers(0, blk[0].shape[0], blk[0].shape[0]) for blk in drawn]
        replicates[r] = diff(
            [np.concatenate([blk[i][p] for blk, p in zip(drawn, picks)]) for i in range(2 * k)]
        )
    ci = interval(replicates, alpha)
    out = {
        "value": float(diff(pooled)),
        "ci": ci,
        "blocks": len(blocks),
        "items": int(pooled[0].shape[0]),
        "ci_method": "hierarchical percentile",
        "per_block": [float(diff(blk)) for blk in blocks],
        "p": bootstrap_p(replicates),
    }
    return {**out, **_degenerate_flag(ci)}


def block_t_interval(per_block: list[float], alpha: float = ALPHA) -> list[float]:
    """Student-t interval of the mean of per-block differences, blocks as the unit (df = blocks
    - 1). It rests on no resampling and widens honestly for few blocks, where resampling the
    blocks themselves shrinks their variance by (blocks - 1) / blocks."""
    from scipy.stats import t

    x = np.asarray(per_block, dtype=np.float64)
    if x.size < 2:
        return [math.nan, math.nan]
    half = t.ppf(1 - alpha / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size)
    return [float(x.mean() - half), float(x.mean() + half)]


def bootstrap_p(replicates: np.ndarray, null: float = 0.0) -> float:
    """Two-sided p-value of `null` from bootstrap replicates of a difference: twice the
    smaller tail beyond `null`, counted with the (+1)/(n+1) rule so it is never exactly 0."""
    r = np.asarray(replicates, dtype=np.float64)
    r = r[np.isfinite(r)]
    below = (np.sum(r <= null) + 1) / (r.size + 1)
    above = (np.sum(r >= null) + 1) / (r.size + 1)
    return float(min(1.0, 2 * min(below, above)))


def holm(p_values: dict[str, float], alpha: float = ALPHA) -> dict[str, dict]:
    """Holm's step-down correction (Holm 1979) of a family: per endpoint the adjusted p-value
    and whether it is rejected at family-wise level `alpha`."""
    names = sorted(p_values, key=lambda name: p_values[name])
    m, running, out = len(names), 0.0, {}
    for rank, name in enumerate(names):
        running = max(running, min(1.0, (m - rank) * p_values[name]))
        out[name] = {"p": p_values[name], "p_holm": running, "rejected": running <= alpha}
    return out


VERDICTS = ("held", "contradicted", "equivalent", "not resolved")


def verdict(ci: list[float], margin: float = 0.02, better: str = "higher") -> str:
    """A claim "the arm is better by more than nothing" judged from a difference's interval:
    `held` when all of it is beyond `margin` in the better direction, `contradicted` when all
    of it is beyond `margin` in the worse direction, `equivalent` when all of it lies within
    +-margin, else (or for a degenerate interval) `not resolved`."""
    if better not in ("higher", "lower"):
        raise ValueError(f"better must be 'higher' or 'lower', got {better!r}")
    lo, hi = ci
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo == hi:
        return "not resolved"
    sign = 1.0 if better == "higher" else -1.0
    lo, hi = sorted((sign * lo, sign * hi))
    if lo > margin:
        return "held"
    if hi < -margin:
        return "contradicted"
    if -margin < lo and hi < margin:
        return "equivalent"
    return "not resolved"


def align(a: list[dict], b: list[dict], key: str = "id") -> tuple[list[dict], list[dict]]:
    """The records two evals share, in one order, paired by `key`; an id present twice in
    one eval is an error (the pairing would be ambiguous)."""
    index_b = {}
    for r in b:
        if r[key] in index_b:
            raise ValueError(f"id {r[key]!r} appears twice in one eval")
        index_b[r[key]] = r
    seen, left, right = set(), [], []
    for r in a:
        if r[key] in seen:
            raise ValueError(f"id {r[key]!r} appears twice in one eval")
        seen.add(r[key])
        if r[key] in index_b:
            left.append(r)
            right.append(index_b[r[key]])
    return left, right


def cluster_sums(records: list[dict], fields: tuple[str, ...], key: str = "file") -> list[dict]:
    """One record per `key` value (a file), `id` = that value: the sums of `fields` over its
    records and their count as `items`; in order of first appearance."""
    out: dict[str, dict] = {}
    for r in records:
        c = out.setdefault(r[key], {"id": r[key], **dict.fromkeys(fields, 0.0), "items": 0})
        for f in fields:
            c[f] += r[f]
        c["items"] += 1
    return list(out.values())
