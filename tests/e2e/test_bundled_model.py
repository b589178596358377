"""The bundled default model: at most 25 MB with its tokenizer, trained at
the long context, and on a held-out snippet its own contrast scores are higher on tokens that
repeat an identifier first seen at least a window earlier than on all other tokens (median
against median). The model comes from the H200 run of bench/quality/pipeline.py (see its
model card); `repeat_contrast` itself is also exercised on the tiny model."""

import json
import subprocess
import sys
from pathlib import Path

from tokenweight.bundled import MAX_BYTES, SNIPPET_FILE, bundle_bytes, default_model
from tokenweight.trainer.evals.identifiers import long_range_repeats
from tokenweight.trainer.evals.repeat_contrast import repeat_contrast
from tokenweight.trainer.prepare import load_tokenizer

REPO = Path(__file__).resolve().parents[2]


def test_bundled_model_is_small_and_long_context():
    model, info = default_model()
    assert bundle_bytes(model) <= MAX_BYTES
    config = json.loads((model / "config.json").read_text())
    assert config["max_position_embeddings"] >= info["seq_len"] > info["window"]
    assert (model / "tokenizer.json").is_file() and (model / "README.md").is_file()


def test_identifier_repeats_score_higher_on_a_heldout_snippet():
    model, info = default_model()
    result = repeat_contrast(model, (model / SNIPPET_FILE).read_text(), info["window"])
    assert result["tokens"] > 2 * info["window"] and result["repeat_tokens"] >= 20
    assert result["median_repeat"] > result["median_other"], result


def test_score_with_no_model_ranks_far_repeated_names_first():
    """The README's first command: on examples/inventory.jsonl the highest-scoring tokens are
    pieces of names used more than a window after their definition."""
    model, info = default_model()
    example = REPO / "examples" / "inventory.jsonl"
    done = subprocess.run(
        [sys.executable, "-m", "tokenweight.cli", "score", "--input", str(example), "--top", "8",
         "--device", "cpu", "--dtype", "float32"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    text = json.loads(example.read_text())["text"]
    enc = load_tokenizer(model).backend.encode(text, add_special_tokens=True)
    repeats = long_range_repeats(text, enc.offsets, info["window"])
    targets = [int(row.split()[0]) for row in done.stdout.splitlines()[2:]]
    assert len(targets) == 8 and all(repeats[t - 1] for t in targets), done.stdout


def test_repeat_contrast_on_a_tiny_model(tiny_model_dir):
    text = "def alpha(x):\n    return x\n" + "y = 1\n" * 40 + "alpha(y)\n"
    result = repeat_contrast(tiny_model_dir, text, window=16)
    assert result["window"] == 16 and result["repeat_tokens"] > 0
    assert result["median_repeat"] >= 0 and result["median_other"] >= 0
