"""The bundled default model (issue 6, item 5): at most 25 MB with its tokenizer, trained at
the long context, and on a held-out snippet its own contrast scores are higher on tokens that
repeat an identifier first seen at least a window earlier than on all other tokens (median
against median). Skipped while no model is bundled (it comes from the H200 run of
bench/quality/pipeline.py); `repeat_contrast` itself is exercised on the tiny model."""

import json

import pytest

from tokenweight.bundled import (
    MAX_BYTES,
    SNIPPET_FILE,
    bundle_bytes,
    bundled_model_dir,
    read_info,
    repeat_contrast,
)

bundled = pytest.mark.skipif(
    bundled_model_dir() is None, reason="no bundled model yet (pending the H200 run)"
)


@bundled
def test_bundled_model_is_small_and_long_context():
    model = bundled_model_dir()
    assert bundle_bytes(model) <= MAX_BYTES
    info = read_info(model)
    config = json.loads((model / "config.json").read_text())
    assert config["max_position_embeddings"] >= info["seq_len"] > info["window"]
    assert (model / "tokenizer.json").is_file() and (model / "README.md").is_file()


@bundled
def test_identifier_repeats_score_higher_on_a_heldout_snippet():
    model = bundled_model_dir()
    info = read_info(model)
    result = repeat_contrast(model, (model / SNIPPET_FILE).read_text(), info["window"])
    assert result["tokens"] > 2 * info["window"] and result["repeat_tokens"] >= 20
    assert result["median_repeat"] > result["median_other"], result


def test_repeat_contrast_on_a_tiny_model(tiny_model_dir):
    text = "def alpha(x):\n    return x\n" + "y = 1\n" * 40 + "alpha(y)\n"
    result = repeat_contrast(tiny_model_dir, text, window=16)
    assert result["window"] == 16 and result["repeat_tokens"] > 0
    assert result["median_repeat"] >= 0 and result["median_other"] >= 0
