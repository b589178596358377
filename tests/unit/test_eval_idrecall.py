"""Identifier recall and identifier-repeat loss on real files, checked by brute force on the
token ids: each item's name was first seen exactly `distance` tokens back (at least d), is
nowhere in the last k tokens, and its candidates are other names of the file, seen before,
of the same token length; the loss records sum exactly the occurrence's target log-probs."""

import re
from pathlib import Path

import numpy as np
import pytest
from eval_helpers import code_tokenizer

from tokenweight.trainer.evals.idrecall import (
    IdRecallConfig,
    SourceFile,
    id_loss_mask,
    id_loss_records,
    id_loss_summary,
    idrecall_items,
)
from tokenweight.trainer.evals.records import file_id
from tokenweight.trainer.evals.retrieval import answer_items
from tokenweight.trainer.evals.stats import doubling_edges
from tokenweight.trainer.evals.tasks import Codec

SEQ_LEN, WINDOW, D, K = 512, 64, 96, 48
EDGES = tuple(doubling_edges(WINDOW, SEQ_LEN))
ROOT = Path(__file__).resolve().parents[2]


def _real_files() -> list[str]:
    """This project's own modules: real code the tokenizer has not been fitted to."""
    paths = sorted((ROOT / "trainer").rglob("*.py")) + sorted((ROOT / "service").rglob("*.py"))
    return [p.read_text() for p in paths if p.stat().st_size > 3000][:40]


@pytest.fixture(scope="module")
def setup():
    tok = code_tokenizer()
    files = []
    for text in _real_files():
        enc = tok.backend_tokenizer.encode(text, add_special_tokens=True)
        files.append(
            SourceFile(
                file_id(text),
                text,
                np.asarray(enc.ids[:SEQ_LEN], dtype=np.int64),
                np.asarray(enc.offsets[:SEQ_LEN], dtype=np.int64),
            )
        )
    return tok, Codec(tok.backend_tokenizer), files


def _items(setup, seed=0, per_bucket=50):
    _, codec, files = setup
    cfg = IdRecallConfig(EDGES, D, K, per_bucket, per_file=6, seed=seed)
    return idrecall_items(files, cfg, codec)


def _sightings(tok, ids: np.ndarray, name: str) -> list[tuple[int, int]]:
    """(first token, last token) of each whole-word sighting of `name`, from the ids alone."""
    pieces = [tok.decode([int(i)], skip_special_tokens=True) for i in ids]
    ends = np.cumsum([len(p) for p in pieces])
    text = "".join(pieces)
    token_of = lambda char: int(np.searchsorted(ends, char, side="right"))
    return [
        (token_of(m.start()), token_of(m.end() - 1))
        for m in re.finditer(rf"(?<!\w){re.escape(name)}(?!\w)", text)
    ]


def test_items_are_first_sightings_beyond_d_and_absent_from_the_last_k(setup):
    tok, _, files = setup
    items = _items(setup)
    assert len(items) >= 20 and len({it.file for it in items}) >= 5
    by_id = {f.id: f for f in files}
    for it in items:
        f, n = by_id[it.file], len(it.prompt)
        assert it.id == f"idrecall/{it.file}/{n}" and np.array_equal(it.prompt, f.ids[:n])
        answer = it.candidates[it.answer]
        assert np.array_equal(answer, f.ids[n : n + len(answer)])  # the file's own next tokens
        name = tok.decode(answer.tolist()).strip()
        seen = _sightings(tok, it.prompt, name)
        assert seen and seen[0][0] == n - it.distance and it.distance >= D
        assert all(last < n - K for _, last in seen)  # nowhere in the last K tokens
        assert len({len(c) for c in it.candidates}) == 1 and len(it.candidates) == 4
        names = [tok.decode(c.tolist()).strip() for c in it.candidates]
        assert len(set(names)) == 4
        assert all(_sightings(tok, it.prompt, other) for other in names)  # all seen before
        assert 0 <= it.bucket < len(EDGES) - 1
        assert EDGES[it.bucket] <= it.distance < EDGES[it.bucket + 1]


def test_items_depend_only_on_the_seed_and_cap_per_bucket(setup):
    key = lambda items: [(it.id, it.answer, *(c.tobytes() for c in it.candidates)) for it in items]
    a, b, c = _items(setup), _items(setup), _items(setup, seed=1)
    assert key(a) == key(b) != key(c)
    few = _items(setup, per_bucket=3)
    assert max(np.bincount([it.bucket for it in few])) == 3
    assert {it.id for it in few} <= {it.id for it in a}


def test_an_oracle_gets_every_item_and_ignorance_gets_chance(setup):
    items = _items(setup)
    right = {np.concatenate([it.prompt, it.candidates[it.answer]]).tobytes() for it in items}

    def oracle(sequences):
        return [np.full(len(s) - 1, 0.0 if s.tobytes() in right else -1.0) for s in sequences]

    assert all(r["credit"] == 1.0 for r in answer_items(items, oracle))
    uniform = lambda sequences: [np.full(len(s) - 1, -3.0) for s in sequences]
    records = answer_items(items, uniform)
    assert all(r["credit"] == 0.25 for r in records)
    assert all(
        r["file"] == it.file and r["position"] == len(it.prompt) for r, it in zip(records, items)
    )


def test_id_loss_sums_the_occurrence_log_probs(setup):
    tok, _, files = setup
    rng = np.random.default_rng(0)
    logps = [-rng.uniform(0, 5, len(f.ids) - 1) for f in files]
    records = id_loss_records(files, logps, WINDOW)
    assert len(records) >= 50
    by_id = {f.id: (f, lp) for f, lp in zip(files, logps)}
    for r in records[:: max(1, len(records) // 60)]:
        f, lp = by_id[r["file"]]
        p, t = r["position"], r["tokens"]
        assert r["nll"] == pytest.approx(-lp[p - 1 : p - 1 + t].sum(), abs=1e-3)
        name = tok.decode(f.ids[p : p + t].tolist()).strip()
        seen = [s for s in _sightings(tok, f.ids[: p + t], name) if s[0] < p]
        assert seen and all(last < p - WINDOW for _, last in seen)
        assert r["distance"] == p - seen[-1][1] and r["distance"] > WINDOW
    # The mask marks exactly the recorded tokens, and the summary is the ratio of sums.
    masked = sum(int(id_loss_mask(f, WINDOW).sum()) for f in files)
    assert masked == sum(r["tokens"] for r in records)
    summary = id_loss_summary(records, list(EDGES))
    total = sum(r["nll"] for r in records) / sum(r["tokens"] for r in records)
    assert summary["value"] == pytest.approx(total) and summary["items"] == len(records)
    assert sum(b["items"] for b in summary["by_distance"]) == len(records)
