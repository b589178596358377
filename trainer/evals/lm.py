"""The model under evaluation and the judge, both through the project's scoring engine.

The engine gives per-token log-probs without materialising `[tokens x vocab]` logits, and the
judge's contrast uses exactly the chunk plan the trainer's weights come from (docs/DESIGN.md §1.1).
"""

import dataclasses

import numpy as np

from tokenweight.service.engine import Outputs, ScoringEngine, default_options
from tokenweight.service.loading import (
    ModelLoadError,
    load_causal_lm,
    resolve_device,
    resolve_dtype,
)

LONG_ONLY = Outputs(score=False, logp_long=True, logp_short=False)
CONTRAST = Outputs(score=False, logp_long=True, logp_short=True)


def load_engine(
    path, seq_len: int, window: int, device: str | None, dtype: str | None
) -> ScoringEngine:
    dev = resolve_device(device)
    loaded = load_causal_lm(path, dev, resolve_dtype(dtype, dev))
    config = loaded.model.config
    if seq_len > (config.max_position_embeddings or 0):
        if not isinstance(getattr(config, "rope_parameters", None), dict):
            raise ModelLoadError(
                f"{path} has {config.max_position_embeddings} learned positions, fewer than "
                f"--seq-len {seq_len}; evaluate it at its own length"
            )
        # A RoPE model computes its positions, so one trained shorter (the baseline before
        # context extension) can be read at --seq-len; only the engine's length check needs telling.
        config.max_position_embeddings = seq_len
    # Compiling the LM-head slice (the CUDA default) costs more start-up than it saves on the
    # few million tokens of an eval.
    options = dataclasses.replace(default_options(dev), compile_logprobs=False)
    return ScoringEngine.from_loaded(loaded, options=options, window=window, max_length=seq_len)


def logprob_fn(engine: ScoringEngine):
    """Sequences -> their target-aligned `logp_long` (the retrieval and perplexity input)."""
    return lambda sequences: [r.logp_long for r in engine.score(sequences, outputs=LONG_ONLY)]


class LocalJudge:
    """Contrast from a model loaded here, with the given window."""

    def __init__(self, engine: ScoringEngine, window: int):
        self.engine, self.window = engine, window
        self.describe = {
            "kind": "local",
            "model": engine.long_path,
            "window": window,
            "fingerprint": engine.fingerprint(window),
        }

    def contrast(self, sequences: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        results = self.engine.score(sequences, window=self.window, outputs=CONTRAST)
        return [(r.logp_long, r.logp_short) for r in results]


class RemoteJudge:
    """Contrast from a running `tokenweight serve` (its default window unless one is given)."""

    def __init__(self, url: str, window: int | None):
        from tokenweight.client import ScorerClient

        self.client, self.window = ScorerClient(url, timeout=600), window
        self.describe = {"kind": "service", "url": url, "window": window, "fingerprint": None}

    def contrast(self, sequences: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        result = self.client.score(
            sequences, window=self.window, outputs=("logp_long", "logp_short")
        )
        self.describe["fingerprint"] = result.fingerprint
        return [(r.logp_long, r.logp_short) for r in result.results]
