"""Shared pieces of the eval-suite tests: real Python source as held-out text, and a code
tokenizer trained on it (the shared BPE recipe, small vocabulary, built in about a second)."""

import importlib
import inspect
import json

SOURCES = ("textwrap", "json.decoder", "json.encoder", "string", "shlex", "fnmatch", "glob")


def source_texts() -> list[str]:
    return [inspect.getsource(importlib.import_module(name)) for name in SOURCES]


def code_tokenizer(vocab_size: int = 600):
    from tokenweight.bpe import train_byte_level_bpe

    return train_byte_level_bpe(source_texts(), vocab_size)


def write_jsonl(path, texts: list[str]):
    path.write_text(
        "".join(json.dumps({"text": t, "path": f"f{i}.py"}) + "\n" for i, t in enumerate(texts))
    )
    return path
