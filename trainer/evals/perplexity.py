"""Perplexities of held-out code: by position, on long-range tokens, and in the first window.

Each is built from per-sequence sums (`ce`: summed -log p, `n`: token count), so a bucket's
perplexity is token-weighted (exp of total CE over total tokens) and its interval comes from
resampling whole sequences.

Long-range tokens (LongPPL, Fang et al. 2024): a fixed scorer ("judge") marks the targets
where the whole context raised its log-probability by more than `key_gain` nats over the
short window and where it then predicts them well (log p > `key_min_logp`); the defaults are
LongPPL's (2, -2). Every model evaluated with the same judge is measured on the same tokens.
"""

from dataclasses import dataclass

import numpy as np

from .stats import bucket_index, bucket_labels, ppl_stat, summarize


@dataclass(frozen=True)
class KeyTokens:
    key_gain: float = 2.0
    key_min_logp: float = -2.0

    def mask(self, logp_long: np.ndarray, logp_short: np.ndarray) -> np.ndarray:
        return (logp_long - logp_short > self.key_gain) & (logp_long > self.key_min_logp)


def position_sums(logps: list[np.ndarray], edges: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """`[sequences, buckets]` CE sums and counts; target entry i is position i + 1."""
    ce = np.zeros((len(logps), len(edges) - 1))
    n = np.zeros_like(ce)
    for s, lp in enumerate(logps):
        buckets = bucket_index(np.arange(1, lp.size + 1), edges)
        keep = buckets >= 0
        np.add.at(ce[s], buckets[keep], -lp[keep].astype(np.float64))
        np.add.at(n[s], buckets[keep], 1)
    return ce, n


def masked_sums(logps: list[np.ndarray], masks: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    ce = np.asarray([-lp[m].sum(dtype=np.float64) for lp, m in zip(logps, masks)])
    return ce, np.asarray([m.sum() for m in masks], dtype=np.float64)


def whole_sums(logps: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    return masked_sums(logps, [np.ones(lp.size, dtype=bool) for lp in logps])


def ppl_summary(ce: np.ndarray, n: np.ndarray, seed: int = 0) -> dict:
    return {**summarize(ppl_stat, ce, n, seed=seed), "tokens": int(np.sum(n))}


def by_position_summary(ce: np.ndarray, n: np.ndarray, edges: list[int], seed: int = 0) -> dict:
    buckets = [
        {"bucket": label, **ppl_summary(ce[:, b], n[:, b], seed)}
        for b, label in enumerate(bucket_labels(edges))
    ]
    return {"edges": edges, "buckets": buckets, "overall": ppl_summary(ce.sum(1), n.sum(1), seed)}
