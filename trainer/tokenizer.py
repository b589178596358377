"""`tokenweight tokenizer`: train a byte-level BPE on a corpus's training split.

The result is a Hugging Face tokenizer directory (tokenizer.json + tokenizer_config.json,
BOS/EOS/PAD named) that `tokenweight prepare --tokenizer`, `AutoTokenizer` and the service
load as they are. Only `train.jsonl` is read, so held-out files stay unseen by the
tokenizer too. `tokenweight_tokenizer.json` beside it records what it was trained on.
"""

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from tokenweight.flags import add_flags, flag, values_of

from .corpus import MANIFEST_FILE, TRAIN_FILE
from .prepare import iter_documents

META_FILE = "tokenweight_tokenizer.json"


class TokenizerError(ValueError):
    """Bad input for `tokenweight tokenizer`; the message names the fix."""


@dataclass(frozen=True)
class TokenizerConfig:
    corpus: str = flag(help=f"corpus directory from `tokenweight corpus` ({TRAIN_FILE})")
    out: str = flag(help="tokenizer directory to write")
    vocab_size: int = flag(8192, "vocabulary size")


def add_arguments(parser) -> None:
    add_flags(parser, TokenizerConfig)


def run(args) -> int:
    config = TokenizerConfig(**values_of(args, TokenizerConfig))
    try:
        tokenizer = train_tokenizer(Path(config.corpus), config.vocab_size, Path(config.out))
    except TokenizerError as exc:
        print(f"tokenweight tokenizer: error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote a {len(tokenizer)}-token byte-level BPE to {config.out}")
    return 0


def train_tokenizer(corpus: Path, vocab_size: int, out: Path):
    from tokenweight.bpe import SPECIAL_TOKENS, train_byte_level_bpe

    train = corpus / TRAIN_FILE
    if not train.is_file():
        raise TokenizerError(
            f"{train} not found; build the corpus first (tokenweight corpus --out {corpus})"
        )
    if vocab_size <= len(SPECIAL_TOKENS) + 256:
        raise TokenizerError(
            f"--vocab-size {vocab_size} leaves no room for merges (256 bytes + "
            f"{len(SPECIAL_TOKENS)} special tokens); use a larger size"
        )
    if train.stat().st_size == 0:
        raise TokenizerError(f"{train} is empty; build the corpus from roots that hold .py files")
    manifest_path = corpus / MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    documents = manifest.get("outputs", {}).get("train", {}).get("documents")  # progress bar only
    tokenizer = train_byte_level_bpe(iter_documents(train), vocab_size, length=documents)
    tokenizer.save_pretrained(out)
    meta = {
        "vocab_size": len(tokenizer),
        "trained_on": str(train),
        "corpus_list_hash": manifest.get("list_hash"),
    }
    (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return tokenizer
