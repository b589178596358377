"""Answering the synthetic items by likelihood, and their accuracy by distance bucket.

A candidate's score is the sum of the model's log-probabilities of its tokens after the
prompt (all candidates have the same token length, so sums compare fairly). The most likely
candidate is the model's answer; a tie among k candidates that include the right one earns
1/k, so a model that cannot tell them apart gets exactly chance in expectation and in fact.
Accuracies carry Wilson intervals, with the summed credit as the successes.
"""

from collections.abc import Callable

import numpy as np

from .stats import bucket_index, bucket_labels, wilson
from .tasks import Item

# target-aligned log-probs (L-1 values) for each token sequence given
LogProbFn = Callable[[list[np.ndarray]], list[np.ndarray]]


def candidate_logprobs(item: Item, logps: list[np.ndarray]) -> np.ndarray:
    """Summed log-prob of each candidate; `logps[c]` belongs to prompt + candidate c."""
    start = len(item.prompt) - 1  # target index of the first answer token
    return np.asarray(
        [lp[start : start + len(c)].sum(dtype=np.float64) for c, lp in zip(item.candidates, logps)]
    )


def credit(scores: np.ndarray, answer: int) -> float:
    best = np.flatnonzero(scores >= scores.max() - 1e-6)
    return 1.0 / best.size if answer in best else 0.0


def answer_items(
    items: list[Item], logprobs: LogProbFn, batch_items: int = 16, bar=None
) -> list[dict]:
    """One record per item: task, distance, credit (1 = right, 0 = wrong) and the scores."""
    records = []
    for lo in range(0, len(items), batch_items):
        chunk = items[lo : lo + batch_items]
        sequences = [np.concatenate([it.prompt, c]) for it in chunk for c in it.candidates]
        logps = iter(logprobs(sequences))
        for it in chunk:
            scores = candidate_logprobs(it, [next(logps) for _ in it.candidates])
            records.append(
                {
                    "id": it.id,
                    "task": it.task,
                    "distance": it.distance,
                    "credit": credit(scores, it.answer),
                    "answer": it.answer,
                    "scores": scores.round(4).tolist(),
                    **({"file": it.file, "position": len(it.prompt)} if it.file else {}),
                }
            )
        if bar is not None:
            bar.update(len(chunk))
    return records


def label_buckets(records: list[dict], edges: list[int]) -> None:
    """Set each record's `bucket` to the label of its distance's bucket ("" outside them)."""
    labels = bucket_labels(edges)
    for r, b in zip(records, bucket_index([r["distance"] for r in records], edges)):
        r["bucket"] = labels[b] if b >= 0 else ""


def accuracy_summary(records: list[dict], edges: list[int]) -> dict:
    """Accuracy with Wilson 95% intervals per task: overall and per distance bucket."""
    out = {"edges": edges, "tasks": {}}
    for task in sorted({r["task"] for r in records}):
        mine = [r for r in records if r["task"] == task]
        credits = np.asarray([r["credit"] for r in mine])
        buckets = bucket_index([r["distance"] for r in mine], edges)
        by_distance = []
        for b, label in enumerate(bucket_labels(edges)):
            picked = credits[buckets == b]
            by_distance.append({"bucket": label, **wilson(float(picked.sum()), picked.size)})
        chance = 1.0 / len(mine[0]["scores"]) if mine else float("nan")
        out["tasks"][task] = {
            "overall": wilson(float(credits.sum()), credits.size),
            "by_distance": by_distance,
            "chance": chance,
        }
    return out
