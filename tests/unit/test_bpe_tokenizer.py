"""`tokenweight tokenizer` and the shared byte-level BPE recipe: exact round trips, the
special tokens, and loading by AutoTokenizer and `tokenweight prepare`."""

import json

import pytest
from eval_helpers import source_texts

from tokenweight.bpe import SPECIAL_TOKENS
from tokenweight.cli import main
from tokenweight.trainer.corpus import CorpusConfig, build_corpus
from tokenweight.trainer.prepare import load_tokenizer
from tokenweight.trainer.tokenizer import META_FILE, TokenizerError, train_tokenizer

TEXTS = [
    'def f(x):\n\tif x:\n        return "héllo ✓"\r\n    return None  # 💡\n',
    "",
    "   leading spaces and trailing   \n\n\n",
    "class A:\n    pass\n" * 3,
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("src")
    for i, text in enumerate(source_texts()):
        (root / f"m{i}.py").write_text(text)
    corpus = tmp_path_factory.mktemp("corpus") / "c"
    manifest = build_corpus(CorpusConfig(corpus, (root,), heldout_fraction=0.0))
    out = tmp_path_factory.mktemp("tok") / "t"
    assert (
        main(["tokenizer", "--corpus", str(corpus), "--vocab-size", "400", "--out", str(out)]) == 0
    )
    return out, manifest


def test_round_trip_and_special_tokens(trained):
    from transformers import AutoTokenizer

    out, _ = trained
    tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
    assert len(tok) == 400
    assert [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3]
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == (
        "<s>",
        "</s>",
        "<pad>",
        "<unk>",
    )
    for text in TEXTS:
        ids = tok(text)["input_ids"]
        assert ids[0] == tok.bos_token_id and tok.eos_token_id not in ids
        assert tok.decode(ids, skip_special_tokens=True) == text


def test_prepare_loads_it(trained):
    out, manifest = trained
    doc_tok = load_tokenizer(out)
    assert (doc_tok.bos_id, doc_tok.eos_id, doc_tok.eos_token) == (1, 2, "</s>")
    ids = doc_tok.encode_documents(["x = 1\n"])[0]
    assert ids[0] == 1 and ids[-1] == 2
    meta = json.loads((out / META_FILE).read_text())
    assert meta["corpus_list_hash"] == manifest["list_hash"] and meta["vocab_size"] == 400


def test_errors(tmp_path):
    with pytest.raises(TokenizerError, match="build the corpus first"):
        train_tokenizer(tmp_path, 400, tmp_path / "out")
    (tmp_path / "train.jsonl").write_text('{"text": "x"}\n')
    with pytest.raises(TokenizerError, match="no room"):
        train_tokenizer(tmp_path, 100, tmp_path / "out")

