"""Natural identifier recall (`idrecall`) and judge-free loss on identifier repeats (`id_loss`).

Both read long held-out files, not templates. At an occurrence of an identifier first seen
at least `min_distance` tokens earlier and absent from the last `absent` tokens (identifiers.py)
only context beyond the short window can tell which name comes next:

- `idrecall` asks the model to rank the true name against other identifiers of the same file,
  seen before that point and of the same token length, by likelihood (retrieval.py); the
  prompt is the file up to the occurrence;
- `id_loss` records the model's own summed NLL of the occurrence's tokens in the full file.
Both are keyed by (file id, token position), so arms are compared on the same occurrences.
"""

import random
from dataclasses import dataclass

import numpy as np

from .identifiers import identifier_spans, repeat_sites
from .records import site_id
from .stats import bucket_index, bucket_labels, ratio_stat, summarize
from .tasks import Codec, Item


@dataclass(frozen=True)
class SourceFile:
    id: str
    text: str
    ids: np.ndarray  # token ids with the template (BOS first), cut to the evaluation length
    offsets: np.ndarray  # [len(ids), 2] character spans


@dataclass(frozen=True)
class IdRecallConfig:
    edges: tuple[int, ...]  # distance buckets
    min_distance: int
    absent: int
    items_per_bucket: int = 40
    per_file: int = 8
    choices: int = 4
    seed: int = 0


def source_files(heldout) -> list[SourceFile]:
    """The long held-out sequences with their text (file units only)."""
    return [
        SourceFile(fid, text, ids, offsets)
        for fid, text, ids, offsets in zip(
            heldout.long_ids, heldout.long_texts, heldout.long, heldout.long_offsets
        )
    ]


def idrecall_items(files: list[SourceFile], cfg: IdRecallConfig, codec: Codec) -> list[Item]:
    """At most `per_file` items per file and `items_per_bucket` per distance bucket, drawn by
    the seed; in bucket order, then by id."""
    by_bucket: dict[int, list[Item]] = {}
    for f in files:
        rng = random.Random(f"{cfg.seed}/idrecall/{f.id}")
        sites = repeat_sites(f.text, f.offsets, cfg.min_distance, cfg.absent)
        spans = identifier_spans(f.text)
        rng.shuffle(sites)
        made = 0
        for site in sites:
            if made == cfg.per_file:
                break
            bucket = int(bucket_index([site.distance], list(cfg.edges))[0])
            if bucket < 0 or (item := _item(f, spans, site, bucket, rng, cfg, codec)) is None:
                continue
            by_bucket.setdefault(bucket, []).append(item)
            made += 1
    items = []
    for bucket in sorted(by_bucket):
        pool = sorted(by_bucket[bucket], key=lambda it: it.id)
        chosen = random.Random(f"{cfg.seed}/idrecall/b{bucket}").sample(
            pool, min(len(pool), cfg.items_per_bucket)
        )
        items += sorted(chosen, key=lambda it: it.id)
    return items


def _item(f: SourceFile, spans, site, bucket: int, rng, cfg: IdRecallConfig, codec: Codec):
    answer = f.ids[site.start : site.end]
    if not np.array_equal(codec.ids(site.prefix + site.name), answer):
        return None  # the name tokenizes differently on its own: no fair stand-in exists
    cut = f.offsets[site.start][0]
    seen = sorted({name for name, _, hi in spans if hi <= cut and name != site.name})
    same_length = [n for n in seen if len(codec.ids(site.prefix + n)) == len(answer)]
    if len(same_length) < cfg.choices - 1:
        return None
    others = rng.sample(same_length, cfg.choices - 1)
    candidates = [site.prefix + n for n in [site.name, *others]]
    order = list(range(cfg.choices))
    rng.shuffle(order)
    return Item(
        task="idrecall",
        bucket=bucket,
        prompt=f.ids[: site.start],
        candidates=tuple(codec.ids(candidates[k]) for k in order),
        answer=order.index(0),
        fact_position=site.first,
        distance=site.distance,
        value=candidates[0],
        id=site_id("idrecall", f.id, site.start),
        file=f.id,
    )


def id_loss_records(files: list[SourceFile], logps: list[np.ndarray], window: int) -> list[dict]:
    """One record per identifier occurrence whose name was seen before but not in the last
    `window` tokens: the model's summed NLL of its tokens (`logps` are target-aligned: entry
    j scores token j + 1)."""
    records = []
    for f, lp in zip(files, logps):
        for site in repeat_sites(f.text, f.offsets, window, window):
            nll = -float(lp[site.start - 1 : site.end - 1].sum(dtype=np.float64))
            records.append(
                {
                    "id": site_id("idloss", f.id, site.start),
                    "file": f.id,
                    "position": site.start,
                    "distance": site.start - site.previous,
                    "tokens": site.end - site.start,
                    "nll": round(nll, 4),
                }
            )
    return records


def id_loss_mask(f: SourceFile, window: int) -> np.ndarray:
    """Target-aligned mask of the `id_loss` tokens of one file (the scorer diagnostics)."""
    mask = np.zeros(len(f.ids), dtype=bool)
    for site in repeat_sites(f.text, f.offsets, window, window):
        mask[site.start : site.end] = True
    return mask[1:]


def id_loss_summary(records: list[dict], edges: list[int], seed: int = 0) -> dict:
    """Mean NLL per token (nats) of the `id_loss` occurrences, overall and by the distance
    back to the previous sighting, with bootstrap intervals over occurrences."""
    nll = np.asarray([r["nll"] for r in records], dtype=np.float64)
    tokens = np.asarray([r["tokens"] for r in records], dtype=np.float64)
    buckets = bucket_index([r["distance"] for r in records], edges)
    by_distance = [
        {
            "bucket": label,
            **summarize(ratio_stat, nll[buckets == b], tokens[buckets == b], seed=seed),
        }
        for b, label in enumerate(bucket_labels(edges))
    ]
    return {
        **summarize(ratio_stat, nll, tokens, seed=seed),
        "tokens": int(tokens.sum()),
        "by_distance": by_distance,
    }
