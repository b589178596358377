"""What the second replication compares, per item, from `tokenweight eval` JSONs: the three
pre-registered primaries and the LongPPL secondary (docs/PREREGISTRATION.md).

Every endpoint is a statistic over paired items (the same item id in both arms): accuracy is
the mean credit; losses are nats per token (ratio of sums), so a difference of a loss is the
log of a perplexity ratio and the +-0.02 margin reads as about 2%.
"""

from dataclasses import dataclass

import numpy as np


def _mean(credit):
    return np.mean(credit, axis=-1)


def _ratio(total, count):
    return np.sum(total, axis=-1) / np.sum(count, axis=-1)


@dataclass(frozen=True)
class Endpoint:
    key: str
    label: str
    better: str  # "higher" or "lower"
    stat: object  # per-item arrays (items on the last axis) -> value

    def items(self, e: dict, lo: int, hi: int) -> tuple[list[str], list[np.ndarray]]:
        """(ids, per-item arrays) of one eval; `lo`/`hi`: the distance range of `acc_far`."""
        it = e["items"]
        if self.key == "acc_far":
            rs = [r for r in it["retrieval"] if lo <= r["distance"] < hi]
            return [r["id"] for r in rs], [np.array([r["credit"] for r in rs], dtype=float)]
        if self.key == "id_loss":
            rs = it.get("id_loss") or []
            return [r["id"] for r in rs], [
                np.array([r["nll"] for r in rs], dtype=float),
                np.array([r["tokens"] for r in rs], dtype=float),
            ]
        ids, ce, n = {
            "short_nll": ("short_files", "short_ce", "short_n"),
            "longppl_nll": ("long_files", "key_ce", "key_n"),
        }[self.key]
        # A file where the judge marks no token has nothing to say about LongPPL.
        counts = np.asarray(it[n], dtype=float)
        keep = counts > 0
        return [i for i, k in zip(it[ids], keep) if k], [
            np.asarray(it[ce], dtype=float)[keep],
            counts[keep],
        ]


PRIMARIES = (
    Endpoint("acc_far", "retrieval accuracy at 1k-4k (all tasks)", "higher", _mean),
    Endpoint(
        "id_loss", "judge-free loss on long-range identifier repeats (nats/token)", "lower", _ratio
    ),
    Endpoint(
        "short_nll",
        "short-context loss, first window of each held-out file (nats/token)",
        "lower",
        _ratio,
    ),
)
SECONDARY = (
    Endpoint(
        "longppl_nll", "LongPPL loss with the independent judge (nats/token)", "lower", _ratio
    ),
)
ENDPOINTS = PRIMARIES + SECONDARY
PRIMARY_ARM, REFERENCE_ARM = "dense", "uniform"  # the comparison the primaries are about


def paired(a: dict, b: dict, endpoint: Endpoint, lo: int, hi: int):
    """Per-item arrays of two evals on the items both have, in one order (by id)."""
    ids_a, arrays_a = endpoint.items(a, lo, hi)
    ids_b, arrays_b = endpoint.items(b, lo, hi)
    where_b = {i: n for n, i in enumerate(ids_b)}
    if len(where_b) != len(ids_b) or len(set(ids_a)) != len(ids_a):
        raise ValueError(f"{endpoint.key}: an item id appears twice in one eval")
    keep = [(n, where_b[i]) for n, i in enumerate(ids_a) if i in where_b]
    ia = np.array([n for n, _ in keep], dtype=int)
    ib = np.array([m for _, m in keep], dtype=int)
    return [x[ia] for x in arrays_a], [x[ib] for x in arrays_b]
