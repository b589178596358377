"""Loading the configured scorers. A model (or tokenizer) shared by several scorers loads once."""

import logging
from dataclasses import dataclass
from pathlib import Path

from .config import ConfigError, ScorerConfig
from .engine import ScoringEngine
from .loading import (
    LoadedModel,
    has_tokenizer,
    load_causal_lm,
    load_hf_tokenizer,
    resolve_device,
    resolve_dtype,
)

log = logging.getLogger(__name__)


@dataclass
class Scorer:
    config: ScorerConfig
    engine: ScoringEngine
    # The long model's tokenizer, for text input over HTTP; None when the checkpoint has none.
    tokenizer: object | None


class _Loader:
    """Caches loaded models by (directory, device, dtype) and tokenizers by directory."""

    def __init__(self):
        self._models: dict[tuple, LoadedModel] = {}
        self._tokenizers: dict[str, object | None] = {}

    def model(self, path: str, config: ScorerConfig) -> LoadedModel:
        device = resolve_device(config.device)
        dtype = resolve_dtype(config.dtype, device)
        key = (str(Path(path).resolve()), str(device), dtype)
        if key not in self._models:
            log.info("loading %s on %s as %s", path, device, dtype)
            self._models[key] = load_causal_lm(path, device, dtype, config.allow_pickle)
        return self._models[key]

    def tokenizer(self, path: str):
        key = str(Path(path).resolve())
        if key not in self._tokenizers:
            self._tokenizers[key] = load_hf_tokenizer(path) if has_tokenizer(path) else None
        return self._tokenizers[key]


def load_scorers(configs: list[ScorerConfig]) -> dict[str, Scorer]:
    """Build every scorer; ConfigError (or ModelLoadError) names the scorer that failed."""
    loader = _Loader()
    scorers = {}
    for config in configs:
        long = loader.model(config.model, config)
        same = not config.short_model or Path(config.short_model).resolve() == Path(config.model).resolve()
        short = None if same else loader.model(config.short_model, config)
        try:
            engine = ScoringEngine.from_loaded(
                long,
                short,
                name=config.name,
                window=config.window,
                stride=config.stride,
                max_length=config.max_length,
                token_budget=config.token_budget,
                batch_invariant=config.batch_invariant,
                compile_blocks=config.compile_blocks,
            )
        except ValueError as exc:
            raise ConfigError(f"scorer {config.name!r}: {exc}") from None
        scorers[config.name] = Scorer(config, engine, loader.tokenizer(config.model))
    return scorers
