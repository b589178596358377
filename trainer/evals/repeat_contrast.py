"""The property the bundled model is shipped for, measured on any checkpoint: its own contrast
scores on tokens that repeat an identifier first seen at least a window earlier, against all
other tokens (median against median)."""

from pathlib import Path

import numpy as np

from tokenweight.service.engine import ScoringEngine

from ..prepare import load_tokenizer
from .identifiers import long_range_repeats


def repeat_contrast(model_dir: Path, text: str, window: int, device: str = "cpu") -> dict:
    """The model's own contrast on `text`: medians over identifier repeats first seen
    >= `window` tokens earlier, and over all other targets."""
    engine = ScoringEngine.from_pretrained(model_dir, device=device, dtype="float32", window=window)
    enc = load_tokenizer(model_dir).backend.encode(text, add_special_tokens=True)
    ids, offsets = enc.ids[: engine.max_length], enc.offsets[: engine.max_length]
    score = engine.score([ids])[0].score
    repeats = long_range_repeats(text, offsets, window)
    return {
        "window": window,
        "tokens": len(ids),
        "repeat_tokens": int(repeats.sum()),
        "median_repeat": float(np.median(score[repeats])) if repeats.any() else None,
        "median_other": float(np.median(score[~repeats])),
    }
