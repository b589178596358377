import argparse
import hashlib
import json

import numpy as np
import pytest

from tokenweight.trainer import prepare as prepare_mod
from tokenweight.trainer.data import TokenShards
from tokenweight.trainer.prepare import PrepareError, prepare

EOS, BOS = "<|endoftext|>", "<s>"
DOCS = [
    "héllo ünïcode ✓ first document\nwith two lines",
    "the quick brown fox",
    "jumps over the lazy dog",
    "hi",
]


def _train_tokenizer(with_bos: bool):
    """Byte-level BPE (exact decode round trip); EOS id 0, BOS id 1."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=[EOS, BOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(DOCS, trainer)
    if with_bos:
        tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, 1)])
    return tok


@pytest.fixture(scope="module")
def hf_tokenizer_dir(tmp_path_factory):
    """A Llama-style HF tokenizer directory: BOS before every document."""
    from transformers import PreTrainedTokenizerFast

    path = tmp_path_factory.mktemp("tok") / "hf"
    PreTrainedTokenizerFast(
        tokenizer_object=_train_tokenizer(True), bos_token=BOS, eos_token=EOS
    ).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def bare_tokenizer_json(tmp_path_factory):
    """A GPT-2-style bare tokenizer.json: no BOS."""
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    _train_tokenizer(False).save(str(path))
    return path


@pytest.fixture
def inputs(tmp_path):
    text_a = tmp_path / "a.txt"
    text_a.write_text(DOCS[0], encoding="utf-8")
    lines = tmp_path / "b.jsonl"
    lines.write_text("\n".join(json.dumps({"text": d}) for d in DOCS[1:3]) + "\n\n", encoding="utf-8")
    array = tmp_path / "c.json"
    array.write_text(json.dumps([{"text": DOCS[3]}, {"text": ""}]), encoding="utf-8")
    return [text_a, lines, array]


def flat_tokens(shards):
    return shards.take(np.arange(len(shards))).reshape(-1)


def round_trip(tokenizer_path, inputs, out, seq_len, bos: str):
    from tokenizers import Tokenizer

    path = tokenizer_path / "tokenizer.json" if tokenizer_path.is_dir() else tokenizer_path
    tok = Tokenizer.from_file(str(path))
    index = prepare(tokenizer_path, inputs, seq_len, out, shard_sequences=2, progress=False)
    shards = TokenShards(out)
    expected = np.concatenate([tok.encode(d).ids + [0] for d in DOCS]).astype(np.int32)
    kept = len(shards) * seq_len
    flat = flat_tokens(shards)
    assert flat.tolist() == expected[:kept].tolist()
    assert index["stats"]["dropped_tokens"] == expected.size - kept > 0
    # decoding the shards (plus the dropped tail) gives back the documents joined by EOS
    text = tok.decode(flat.tolist() + expected[kept:].tolist(), skip_special_tokens=False)
    assert text == "".join(bos + d + EOS for d in DOCS)
    return index, shards


def test_hf_tokenizer_round_trip_and_index(hf_tokenizer_dir, inputs, tmp_path):
    index, shards = round_trip(hf_tokenizer_dir, inputs, tmp_path / "out", 7, BOS)
    assert shards.bos_token_id == 1 and shards.eos_token_id == 0
    assert index["vocab_size"] == 300 and index["tokenizer"] == str(hf_tokenizer_dir)
    assert index["num_sequences"] == len(shards) and len(index["shards"]) == -(-len(shards) // 2)
    assert [i["path"] for i in index["inputs"]] == [str(p) for p in inputs]
    assert index["inputs"][0]["sha256"] == hashlib.sha256(inputs[0].read_bytes()).hexdigest()
    content = b"".join((shards.path / s["file"]).read_bytes() for s in index["shards"])
    assert index["content_hash"] == hashlib.sha256(content).hexdigest()
    on_disk = json.loads((shards.path / "index.json").read_text())
    assert on_disk["content_hash"] == index["content_hash"] and "stats" not in on_disk
    shards.verify()


def test_bare_tokenizer_json_without_bos(bare_tokenizer_json, inputs, tmp_path):
    _, shards = round_trip(bare_tokenizer_json, inputs, tmp_path / "out", 5, "")
    assert shards.bos_token_id is None and shards.eos_token_id == 0


def test_tokenizer_without_eos_is_refused(tmp_path, inputs):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel()
    tok.train_from_iterator(DOCS, trainers.BpeTrainer(vocab_size=280, special_tokens=["<pad>"]))
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    with pytest.raises(PrepareError, match="--eos-token"):
        prepare(path, inputs, 4, tmp_path / "out", progress=False)
    index = prepare(path, inputs, 4, tmp_path / "out", eos_token="<pad>", progress=False)
    assert index["eos_token_id"] == tok.token_to_id("<pad>")


def test_cli_entry(hf_tokenizer_dir, inputs, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    prepare_mod.add_arguments(parser)
    out = tmp_path / "out"
    args = parser.parse_args(
        [
            "--tokenizer",
            str(hf_tokenizer_dir),
            "--input",
            *map(str, inputs),
            "--seq-len",
            "6",
            "--out",
            str(out),
        ]
    )
    assert prepare_mod.run(args) == 0
    assert "dropped the last" in capsys.readouterr().out
    assert len(TokenShards(out)) > 0
    args.seq_len = 1
    assert prepare_mod.run(args) == 1
    assert "error: --seq-len must be at least 2" in capsys.readouterr().err


def test_bad_jsonl_line_is_named(hf_tokenizer_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"txt": "no"}\n')
    with pytest.raises(PrepareError, match="line 2"):
        prepare(hf_tokenizer_dir, [bad], 4, tmp_path / "out", progress=False)


def test_interrupted_prepare_keeps_the_old_dataset(hf_tokenizer_dir, inputs, tmp_path):
    out = tmp_path / "out"
    first = prepare(hf_tokenizer_dir, inputs, 4, out, progress=False)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\nnot json\n')
    with pytest.raises(PrepareError):
        prepare(hf_tokenizer_dir, [inputs[1], bad], 4, out, progress=False)
    assert TokenShards(out).content_hash == first["content_hash"]  # untouched
    second = prepare(hf_tokenizer_dir, inputs[1:], 4, out, progress=False)
    assert TokenShards(out).content_hash == second["content_hash"] != first["content_hash"]
    assert sorted(p.name for p in out.iterdir()) == ["index.json"] + [
        s["file"] for s in second["shards"]
    ]


def test_crash_while_writing_the_index_leaves_no_index(hf_tokenizer_dir, inputs, tmp_path, monkeypatch):
    out = tmp_path / "out"
    prepare(hf_tokenizer_dir, inputs, 4, out, progress=False)

    def crash(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(prepare_mod.os, "fsync", crash)  # the shards are fsynced too: fails early
    with pytest.raises(KeyboardInterrupt):
        prepare(hf_tokenizer_dir, inputs, 5, out, progress=False)
    assert (out / "index.json").exists()  # the old dataset survives a crash before the swap
    monkeypatch.undo()

    real_json_dump = prepare_mod.json.dump

    def half_written(obj, f, **kw):
        f.write('{"format": ')
        raise KeyboardInterrupt

    monkeypatch.setattr(prepare_mod.json, "dump", half_written)
    with pytest.raises(KeyboardInterrupt):
        prepare(hf_tokenizer_dir, inputs, 5, out, progress=False)
    assert not (out / "index.json").exists()  # no half index, only a temp file
    monkeypatch.setattr(prepare_mod.json, "dump", real_json_dump)
    prepare(hf_tokenizer_dir, inputs, 5, out, progress=False)
    assert TokenShards(out).seq_len == 5


def test_out_dir_with_other_files_is_refused(hf_tokenizer_dir, inputs, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(PrepareError, match="notes.txt"):
        prepare(hf_tokenizer_dir, inputs, 4, out, progress=False)


def test_too_little_data(hf_tokenizer_dir, inputs, tmp_path):
    with pytest.raises(PrepareError, match="lower --seq-len"):
        prepare(hf_tokenizer_dir, inputs, 10_000, tmp_path / "out", progress=False)
