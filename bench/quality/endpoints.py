"""What the second replication compares, per item, from `tokenweight eval` JSONs: the three
pre-registered primaries and the LongPPL secondary (docs/PREREGISTRATION.md).

Items are paired across arms by id, then summed per cluster, the unit the bootstraps resample:
a held-out file for everything read from files (identifier repeats, idrecall items, files'
windows), since items of one file are not independent of each other; the item itself for
synthetic tasks. Every endpoint is then a ratio of sums over clusters: accuracy = credit /
items; losses = nats / tokens, so a difference of a loss is the log of a perplexity ratio and
the +-0.02 margin reads as about 2%.
"""

from dataclasses import dataclass

import numpy as np

from tokenweight.trainer.evals.stats import align, cluster_sums, ratio_stat


@dataclass(frozen=True)
class Endpoint:
    key: str
    label: str
    better: str  # "higher" or "lower"
    fields: tuple[str, ...]  # summed per cluster: (credit,) -> credit / items; (x, y) -> x / y

    stat = staticmethod(ratio_stat)

    def records(self, e: dict, lo: int, hi: int) -> list[dict]:
        """One eval's items: `id`, `cluster` and the fields; `lo`/`hi` bound acc_far's distance."""
        it = e["items"]
        if self.key == "acc_far":
            return [
                {"id": r["id"], "cluster": r.get("file", r["id"]), "credit": r["credit"]}
                for r in it["retrieval"]
                if lo <= r["distance"] < hi
            ]
        if self.key == "id_loss":
            return [
                {"id": r["id"], "cluster": r["file"], "nll": r["nll"], "tokens": r["tokens"]}
                for r in it.get("id_loss") or []
            ]
        ids, ce, n = {
            "short_nll": ("short_files", "short_ce", "short_n"),
            "longppl_nll": ("long_files", "key_ce", "key_n"),
        }[self.key]
        # A file where the judge marks no token has nothing to say about LongPPL.
        return [
            {"id": i, "cluster": i, "ce": c, "n": k}
            for i, c, k in zip(it[ids], it[ce], it[n])
            if k > 0
        ]

    def arrays(self, records: list[dict]) -> list[np.ndarray]:
        """Per-cluster sums, the arguments of `stat`."""
        clusters = cluster_sums(records, self.fields, key="cluster")
        names = self.fields if len(self.fields) == 2 else (self.fields[0], "items")
        return [np.array([c[f] for c in clusters], dtype=float) for f in names]


PRIMARIES = (
    Endpoint("acc_far", "retrieval accuracy at 1k-4k (all tasks)", "higher", ("credit",)),
    Endpoint(
        "id_loss",
        "judge-free loss on long-range identifier repeats (nats/token)",
        "lower",
        ("nll", "tokens"),
    ),
    Endpoint(
        "short_nll",
        "short-context loss, first window of each held-out file (nats/token)",
        "lower",
        ("ce", "n"),
    ),
)
SECONDARY = (
    Endpoint(
        "longppl_nll", "LongPPL loss with the independent judge (nats/token)", "lower", ("ce", "n")
    ),
)
ENDPOINTS = PRIMARIES + SECONDARY
PRIMARY_ARM, REFERENCE_ARM = "dense", "uniform"  # the comparison the primaries are about


def paired(a: dict, b: dict, endpoint: Endpoint, lo: int, hi: int):
    """Per-cluster arrays of two evals over the items both have (paired by id): the clusters
    come out in the same order on both sides, so index i is one file (or item) in both."""
    ra, rb = align(endpoint.records(a, lo, hi), endpoint.records(b, lo, hi))
    return endpoint.arrays(ra), endpoint.arrays(rb)
