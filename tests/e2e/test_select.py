"""`tokenweight select`: stratified top fraction and matched random control, written as
prepared datasets the trainer reads."""

import json
from collections import Counter

import numpy as np
import pytest
from rank_docs import synthetic_documents
from tokenweight.trainer.data import RankBatches, TokenShards
from tokenweight.trainer.prepare import load_tokenizer, prepare
from tokenweight.trainer.selection.documents import DocumentInput
from tokenweight.trainer.selection.rank import rank
from tokenweight.trainer.selection.scoring import LocalScorer
from tokenweight.trainer.selection.select import SelectConfig, SelectError, allocate, choose, strata

from tokenweight.bundled import MODEL_DIR
from tokenweight.cli import main


def _rows(n: int, seed: int) -> list[dict]:
    """Ranking rows with skewed strata: lengths from 3 scales, 3 sources of unequal size."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        source = rng.choice(["pkg_a", "pkg_b", "pkg_c"], p=[0.6, 0.3, 0.1])
        length = int(rng.choice([600, 2000, 9000]) * rng.uniform(0.8, 1.25))
        status = "ok" if rng.random() > 0.05 else "no_long_targets"
        rows.append(
            {
                "index": i,
                "doc": f"{source}/m{i}.py",
                "source": None,
                "length": length,
                "status": status,
                "score": float(rng.gamma(2.0)) if status == "ok" else None,
            }
        )
    return rows


@pytest.mark.parametrize("by", [("length",), ("length", "source")])
@pytest.mark.parametrize("fraction", [0.3, 0.07])
def test_stratified_selection_keeps_each_strata_share(by, fraction):
    rows = _rows(500, seed=1)
    config = SelectConfig(fraction=fraction, by=by, length_bins=3, source_depth=1, seed=5)
    arms, summary = choose(rows, config)
    ranked = [r for r in rows if r["status"] == "ok"]
    keys, _ = strata(ranked, config)
    pool = Counter(keys)
    assert len(pool) == (3 if by == ("length",) else 9)
    assert summary["ranked"] == len(ranked) and summary["unranked"] == len(rows) - len(ranked)
    for arm in ("top", "control"):
        assert len(arms[arm]) == round(fraction * len(ranked))
        per = Counter(key for row, key in zip(ranked, keys) if row["index"] in arms[arm])
        for key, n in pool.items():
            assert abs(per[key] - fraction * n) < 1, (arm, key)  # each stratum's share
    # top: within each stratum, everything kept scores at least everything left out
    for key in pool:
        group = [r for r, k in zip(ranked, keys) if k == key]
        kept = [r["score"] for r in group if r["index"] in arms["top"]]
        left = [r["score"] for r in group if r["index"] not in arms["top"]]
        assert not kept or not left or min(kept) >= max(left)
    # control: the same strata, drawn at random — reproducible with the seed, not the top
    assert choose(rows, config)[0]["control"] == arms["control"]
    other = SelectConfig(fraction=fraction, by=by, length_bins=3, source_depth=1, seed=6)
    assert choose(rows, other)[0]["control"] != arms["control"]
    assert arms["control"] != arms["top"]


def test_allocation_rounds_by_largest_remainder():
    rng = np.random.default_rng(0)
    assert allocate({"a": 10, "b": 1}, 0.3, rng) == {"a": 3, "b": 0}
    # quotas 2.1, 1.5, 1.2 of round(4.8) = 5: the one left over goes to the largest remainder
    assert allocate({"a": 7, "b": 5, "c": 4}, 0.3, rng) == {"a": 2, "b": 2, "c": 1}
    # strata that tie take the leftover documents in a seeded random order, not by name
    winners = set()
    for seed in range(20):
        take = allocate(dict.fromkeys("abcdef", 1), 0.5, np.random.default_rng(seed))
        assert sum(take.values()) == 3 and set(take.values()) == {0, 1}
        winners.add(tuple(k for k, n in take.items() if n))
    assert len(winners) > 5


def test_source_strata_need_a_source():
    rows = _rows(20, seed=2)
    with pytest.raises(SelectError, match="--source-depth"):
        choose(rows, SelectConfig(by=("length", "source")))
    with pytest.raises(SelectError, match="--fraction"):
        SelectConfig(fraction=0)


@pytest.fixture(scope="module")
def ranked_text(tmp_path_factory):
    """The synthetic documents as JSON lines with sources, ranked with the bundled model."""
    tmp = tmp_path_factory.mktemp("select")
    docs = tmp / "docs.jsonl"
    docs.write_text(
        "".join(
            json.dumps({"text": text, "id": f"{kind}-{i}", "source": kind}) + "\n"
            for i, (kind, text) in enumerate(synthetic_documents())
        )
    )
    scorer = LocalScorer(MODEL_DIR, window=512, device="cpu", dtype="float32")
    rank(DocumentInput([str(docs)], str(MODEL_DIR)), scorer, tmp / "rank.jsonl", progress=False)
    return docs, tmp / "rank.jsonl"


def test_select_writes_shards_the_trainer_reads(ranked_text, tmp_path):
    docs, table = ranked_text
    out = tmp_path / "sel"
    argv = [
        "select",
        "--ranking",
        str(table),
        "--out",
        str(out),
        "--fraction",
        "0.34",
        "--length-bins",
        "1",
        "--seq-len",
        "128",
    ]
    assert main(argv) == 0
    summary = json.loads((out / "selection.json").read_text())
    rows = [json.loads(line) for line in table.read_text().splitlines()]
    best = sorted(rows, key=lambda r: -r["score"])[:2]
    assert summary["arms"]["top"]["indices"] == sorted(r["index"] for r in best)
    assert summary["arms"]["control"]["documents"] == 2
    tok = load_tokenizer(MODEL_DIR)
    texts = [json.loads(line)["text"] for line in docs.read_text().splitlines()]
    for arm in ("top", "control"):
        shards = TokenShards(out / arm)
        chosen = summary["arms"][arm]["indices"]
        stream = np.concatenate(tok.encode_documents([texts[i] for i in chosen]))
        assert summary["arms"][arm]["tokens"] == stream.size
        rows_written = stream.size // 128
        assert len(shards) == summary["arms"][arm]["rows"] == rows_written
        assert np.array_equal(
            shards.take(np.arange(len(shards))).reshape(-1), stream[: rows_written * 128]
        )
        assert shards.eos_token_id == tok.eos_id and shards.bos_token_id == tok.bos_id
        assert RankBatches(shards, batch_size=2).batch_at(0).tokens.shape == (2, 128)


def test_select_by_source_and_from_prepared_rows(ranked_text, tmp_path):
    docs, table = ranked_text
    out = tmp_path / "by-source"
    summary_code = main(
        [
            "select",
            "--ranking",
            str(table),
            "--out",
            str(out),
            "--fraction",
            "0.5",
            "--by",
            "length,source",
            "--length-bins",
            "1",
            "--seq-len",
            "64",
        ]
    )
    assert summary_code == 0
    summary = json.loads((out / "selection.json").read_text())
    assert sorted(s["stratum"][1] for s in summary["strata"]) == ["local", "long", "repeat"]
    assert all(s["selected"] == 1 for s in summary["strata"])  # one of the two of each kind

    data = tmp_path / "shards"
    prepare(MODEL_DIR, [docs], 256, data, progress=False)
    scorer = LocalScorer(MODEL_DIR, window=128, device="cpu", dtype="float32")
    rows_table = tmp_path / "rows.jsonl"
    rank(DocumentInput([str(data)], str(MODEL_DIR)), scorer, rows_table, progress=False)
    picked = tmp_path / "rows-sel"
    assert (
        main(["select", "--ranking", str(rows_table), "--out", str(picked), "--fraction", "0.25"])
        == 0
    )
    chosen = json.loads((picked / "selection.json").read_text())["arms"]["top"]["indices"]
    source, top = TokenShards(data), TokenShards(picked / "top")
    assert top.seq_len == 256 and np.array_equal(top.take(np.arange(len(top))), source.take(chosen))
