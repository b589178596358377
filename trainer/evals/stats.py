"""Buckets and bootstrap confidence intervals, shared by every metric of the suite.

Intervals are percentile bootstraps over evaluation items (sequences, files or synthetic
items): items are resampled with replacement and the statistic recomputed, `n_boot` times.
A statistic is a function of per-item arrays indexed `[n_boot, n_items]` that reduces the
last axis, so one vectorised call does every resample.
"""

import itertools
import math

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
    return {"value": value, "ci": interval(stat(*[a[idx] for a in arrays])), "items": n}


def paired_difference(stat, a: list, b: list, seed: int = 0, n_boot: int = N_BOOT) -> dict:
    """`stat(*a) - stat(*b)` where a and b are the same items scored two ways, resampled together."""
    k = len(a)
    return summarize(lambda *xs: stat(*xs[:k]) - stat(*xs[k:]), *a, *b, seed=seed, n_boot=n_boot)
