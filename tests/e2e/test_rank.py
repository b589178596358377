"""`tokenweight rank` with the bundled model on CPU: the ranking property on synthetic
documents, the statistics against a brute-force computation from `tokenweight score`, long
documents in pieces, no-target rows, a resume after SIGKILL, and the page."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from rank_docs import local_document, long_range_document, repetition_document, synthetic_documents
from tokenweight.trainer.prepare import load_tokenizer
from tokenweight.trainer.selection import page
from tokenweight.trainer.selection.documents import DocumentInput
from tokenweight.trainer.selection.rank import RankConfig, RankError, rank
from tokenweight.trainer.selection.scoring import LocalScorer, ScoringError
from tokenweight.trainer.selection.stats import copied_targets, word_copies

from tokenweight.bundled import MODEL_DIR
from tokenweight.cli import main

WINDOW = 512


@pytest.fixture(scope="module")
def scorer():
    return LocalScorer(MODEL_DIR, window=WINDOW, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    path = tmp_path_factory.mktemp("synthetic") / "docs.jsonl"
    path.write_text(
        "".join(
            json.dumps({"text": t, "id": f"{k}-{i}"}) + "\n"
            for i, (k, t) in enumerate(synthetic_documents())
        )
    )
    return path


@pytest.fixture(scope="module")
def ranked(synthetic, scorer, tmp_path_factory):
    out = tmp_path_factory.mktemp("ranked") / "rank.jsonl"
    rank(DocumentInput([str(synthetic)], str(MODEL_DIR)), scorer, out, progress=False)
    return out, [json.loads(line) for line in out.read_text().splitlines()]


def test_long_range_documents_rank_first_and_repetition_not_first(ranked):
    _, rows = ranked
    by_score = [r["doc"].split("-")[0] for r in sorted(rows, key=lambda r: -r["score"])]
    assert by_score[:2] == ["long"] * 2, by_score
    assert by_score[-2:] == ["repeat"] * 2, by_score
    # Without the specificity correction repetition would win: it has the most raw gain,
    # and it is explained by copies.
    by_gain = [r["doc"].split("-")[0] for r in sorted(rows, key=lambda r: -r["context_gain"])]
    assert by_gain[:2] == ["repeat"] * 2, by_gain
    for row in rows:
        kind = row["doc"].split("-")[0]
        assert (row["repetition_share"] > 0.5) == (kind == "repeat"), row
        assert row["fingerprint"] and row["window"] == WINDOW and row["stride"] == 384


def _brute_force(ids, long, short, window, strings=None, key_gain=2.0, key_logp=-2.0):
    """The documented formulas, one target at a time (copies: 8-gram, 48 word-stream chars)."""
    ngram, chars = 8, 48
    targets = [t for t in range(1, len(ids)) if t >= window]
    if not targets:
        return None
    gain = {t: max(0.0, long[t - 1] - short[t - 1]) for t in targets}
    grams = {}
    for j in range(ngram - 1, len(ids)):
        grams.setdefault(tuple(ids[j - ngram + 1 : j + 1]), j)  # first end of each n-gram
    copied = {t: t >= ngram - 1 and grams[tuple(ids[t - ngram + 1 : t + 1])] < t for t in targets}
    if strings is not None:
        stream, ends = "", []
        for s in strings:
            for c in s:
                if c.isalnum() or c == "_":
                    stream += c
                elif stream and stream[-1] != " ":
                    stream += " "
            ends.append(len(stream))
        for t in targets:
            end = ends[t]
            key = stream[end - chars : end]
            if end > ends[t - 1] and end >= chars and key in stream[: ends[t - 1]]:
                copied[t] = True
    total = sum(gain.values())
    n = len(targets)
    return {
        "long_targets": n,
        "context_gain": total / n,
        "key_density": sum(gain[t] > key_gain and long[t - 1] > key_logp for t in targets) / n,
        "copied_share": sum(copied.values()) / n,
        "repetition_share": sum(gain[t] for t in targets if copied[t]) / total if total else 0.0,
        "score": sum(gain[t] for t in targets if not copied[t]) / n,
    }


def _strings(ids):
    backend = load_tokenizer(MODEL_DIR).backend
    return [backend.decode([int(i)], skip_special_tokens=True) for i in ids]


def test_statistics_equal_brute_force_from_score_output(tmp_path, scorer, capsys):
    tok = load_tokenizer(MODEL_DIR)
    texts = [long_range_document(7), repetition_document(8), "x = 1\n" * 40]
    docs = [tok.encode_documents([t])[0].tolist() for t in texts] + [[], [5]]
    lines = tmp_path / "ids.jsonl"
    lines.write_text("".join(json.dumps({"token_ids": ids}) + "\n" for ids in docs))
    assert (
        main(
            [
                "score",
                "--input",
                str(lines),
                "--window",
                str(WINDOW),
                "--device",
                "cpu",
                "--dtype",
                "float32",
            ]
        )
        == 0
    )
    scored = [json.loads(line) for line in capsys.readouterr().out.splitlines()]

    out = tmp_path / "rank.jsonl"
    rank(DocumentInput([str(lines)], str(MODEL_DIR)), scorer, out, progress=False)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["length"] for r in rows] == [len(d) for d in docs]
    assert [r["doc"] for r in rows] == [f"{lines}:{n}" for n in range(1, 6)]
    for row, s in zip(rows, scored):
        ids = s["token_ids"]
        expected = _brute_force(ids, s["logp_long"], s["logp_short"], WINDOW, _strings(ids))
        if expected is None:
            continue
        assert row["status"] == "ok"
        for name, value in expected.items():
            assert row[name] == pytest.approx(value, abs=2e-5), name
    assert rows[1]["copied_share"] > 0.5  # the brute force saw copies, not only zeros
    assert rows[2]["status"] == "no_long_targets"  # 41 short lines: fewer than k + 1 tokens
    for row in rows[2:]:
        assert row["score"] is None and row["context_gain"] is None and row["top_tokens"] == []
    assert [r["status"] for r in rows[3:]] == ["no_targets", "no_targets"]
    assert "NaN" not in out.read_text()


def test_long_documents_are_split_into_overlapping_pieces(tmp_path):
    window, stride, size, overlap = 256, 192, 512, 256
    scorer = LocalScorer(MODEL_DIR, window=window, device="cpu", dtype="float32")
    scorer.max_length = size  # as if the scorer accepted 512 tokens
    # without its BOS, so that a piece's chunks are exactly the whole document's chunks
    ids = load_tokenizer(MODEL_DIR).encode_documents([long_range_document(3)])[0][1:]
    lines = tmp_path / "ids.jsonl"
    lines.write_text(json.dumps({"token_ids": ids.tolist()}) + "\n")

    with pytest.raises(ScoringError, match="accepts at most 512.*--long-docs split"):
        rank(
            DocumentInput([str(lines)], str(MODEL_DIR)),
            scorer,
            tmp_path / "refused.jsonl",
            RankConfig(long_docs="refuse"),
            progress=False,
        )

    out = tmp_path / "split.jsonl"
    documents = DocumentInput([str(lines)], str(MODEL_DIR))
    rank(documents, scorer, out, RankConfig(overlap=overlap), progress=False)
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    # Pieces start every 192 tokens (the largest multiple of the stride within 512 - 256);
    # target t comes from the latest piece that gives it at least 256 tokens of context.
    starts = list(range(0, ids.size, stride))
    starts = starts[: next(i for i, s in enumerate(starts) if s + size >= ids.size) + 1]
    assert row["pieces"] == len(starts) >= 4
    answers = scorer.engine.score([ids[s : s + size] for s in starts])
    long, short = np.empty(ids.size - 1), np.empty(ids.size - 1)
    for t in range(1, ids.size):
        p = max(i for i, s in enumerate(starts) if i == 0 or s + overlap <= t)
        long[t - 1] = answers[p].logp_long[t - starts[p] - 1]
        short[t - 1] = answers[p].logp_short[t - starts[p] - 1]
    expected = _brute_force(ids.tolist(), long.tolist(), short.tolist(), window, _strings(ids))
    for name, value in expected.items():
        assert row[name] == pytest.approx(value, abs=2e-5), name
    # the short context of every target is the one the unsplit document gives it
    whole = scorer.engine.score([ids])[0]
    np.testing.assert_allclose(short, whole.logp_short, atol=1e-4)


def test_resume_refuses_other_settings(ranked, synthetic):
    out, _ = ranked
    other = LocalScorer(MODEL_DIR, window=256, device="cpu", dtype="float32")
    with pytest.raises(RankError, match="fingerprint.*window"):
        rank(DocumentInput([str(synthetic)], str(MODEL_DIR)), other, out, progress=False)


def _rank_cli(docs, out):
    argv = [
        sys.executable,
        "-m",
        "tokenweight.cli",
        "rank",
        "--input",
        str(docs),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--dtype",
        "float32",
        "--batch-size",
        "1",
    ]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_resume_after_kill_gives_the_same_table(tmp_path):
    docs = tmp_path / "docs.jsonl"
    docs.write_text(
        "".join(json.dumps({"text": local_document(s, functions=9)}) + "\n" for s in range(6))
    )
    whole = tmp_path / "whole.jsonl"
    assert _rank_cli(docs, whole).wait(timeout=300) == 0

    killed = tmp_path / "killed.jsonl"
    proc = _rank_cli(docs, killed)
    deadline = time.monotonic() + 300
    while not (killed.exists() and killed.read_bytes().count(b"\n") >= 2):
        assert proc.poll() is None and time.monotonic() < deadline, "rank ended before the kill"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    written = killed.read_bytes()
    assert 2 <= written.count(b"\n") < 6
    with killed.open("ab") as f:  # as if killed in the middle of a line
        f.write(b'{"index": 99, "doc": "half')
    proc = _rank_cli(docs, killed)
    assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()
    assert killed.read_bytes().startswith(written)
    assert killed.read_bytes() == whole.read_bytes()


def test_page_shows_the_ranking(ranked, tmp_path):
    out, rows = ranked
    html = page.render(out, top=3, bottom=2)
    best = max(rows, key=lambda r: r["score"])
    worst = min(rows, key=lambda r: r["score"])
    assert html.index(best["doc"]) < html.index("Bottom documents") < html.index(worst["doc"])
    assert html.count("<svg") == len(page.STATISTICS)
    assert (
        ">def</span>" in html
        and '<span class="tok" style="background: rgba(230, 80, 0, 1.000)"' in html
    )
    assert "<script" not in html


def test_rank_command_errors_are_clear(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a"}\n{"tokens": [1]}\n')
    code = main(
        ["rank", "--input", str(bad), "--out", str(tmp_path / "o.jsonl"), "--device", "cpu"]
    )
    assert code == 1
    assert f"{bad}:2: needs exactly one of" in capsys.readouterr().err


def test_empty_and_tiny_text_get_explicit_rows(tmp_path, scorer):
    docs = tmp_path / "docs.jsonl"
    docs.write_text('{"text": ""}\n{"text": "x"}\n')
    out = tmp_path / "t.jsonl"
    rank(DocumentInput([str(docs)], str(MODEL_DIR)), scorer, out, progress=False)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["length"], r["pieces"], r["status"]) for r in rows] == [
        (0, 0, "no_targets"),
        (3, 1, "no_long_targets"),  # BOS, x, EOS: two targets, none beyond the window
    ]
    assert all(r["score"] is None and r["long_targets"] == 0 for r in rows)


def test_word_stream_copies_see_through_reformatting():
    imports = ["from", " .", "api", " import", " (\n", "    Alpha", "Ledger", ",\n", "    Beta"]
    imports += ["Ledger", ",\n", "    Gamma", "Ledger", ",\n", ")\n"]
    listed = ["__all__", " = [", '"', "Alpha", "Ledger", '", "', "Beta", "Ledger", '", "']
    listed += ["Gamma", "Ledger", '"]\n']
    strings = imports + listed
    copied = word_copies(strings, chars=12)
    marked = {strings[t] for t in range(len(imports), len(strings)) if copied[t - 1]}
    # "AlphaLedger Beta…" repeats the import list once quotes and commas are ignored;
    # "__all__ AlphaLedger" is new, and so is the first name after it
    assert marked >= {"Beta", "Gamma", "Ledger"}
    assert not copied[len(imports) + 3 - 1]  # the "Alpha" right after "__all__"
    assert not copied[: len(imports) - 1].any()
    # token n-grams alone do not see it: the list's separators are other tokens
    ids = np.array([hash(s) % 1000 for s in strings])
    assert not copied_targets(ids, 4)[len(imports) :].any()
