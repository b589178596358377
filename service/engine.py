"""The scoring engine: `logp_long`, `logp_short` and `score` for batches of sequences.

`compute_logprobs` is the one implementation of the scoring math of docs/DESIGN.md §1.1;
the service's `ScoringEngine` wraps it with input checks, defaults and a fingerprint, and the
trainer's `self` source calls it with the live model. No web framework is imported here.
"""

import bisect
import dataclasses
import functools
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tokenweight.wire import ScorerInfo, Scores

from .blocks import compile_blocks
from .chunking import (
    LONG,
    SHORT,
    check_window,
    default_stride,
    forward_tokens,
    plan_sequence,
    share_whole_prefix,
)
from .loading import LoadedModel, load_causal_lm, resolve_device, resolve_dtype
from .logprobs import ForwardOptions, run_segments

# Bumped whenever the scoring math changes, so old fingerprints stop matching.
SCORING_VERSION = "tokenweight-scoring-1"


class ScoringInputError(ValueError):
    """A request the engine refuses; the message says what is wrong and how to fix it."""


@dataclass(frozen=True)
class Outputs:
    """Which arrays to compute; `logp_short` alone skips the long pass."""

    score: bool = True
    logp_long: bool = True
    logp_short: bool = True

    @property
    def need_long(self) -> bool:
        return self.score or self.logp_long

    @property
    def need_short(self) -> bool:
        return self.score or self.logp_short


ALL_OUTPUTS = Outputs()


@dataclass
class ScoreJob:
    tokens: torch.Tensor  # 1-D int64
    window: int
    stride: int
    outputs: Outputs = ALL_OUTPUTS
    # True once nobody waits for the result: the engine skips the job's remaining forward
    # calls (checked between calls) and its result is left undefined.
    abandoned: Callable[[], bool] | None = None


@dataclass
class LogProbs:
    long: torch.Tensor | None  # fp32 [L-1] or None when not requested
    short: torch.Tensor | None


@torch.inference_mode()
def compute_logprobs(
    long_model: nn.Module,
    short_model: nn.Module | None,
    jobs: list[ScoreJob],
    bos_token_id: int | None,
    options: ForwardOptions,
) -> list[LogProbs]:
    """Log-probs for every job; `short_model=None` means the long model plays both parts.

    All passes of all jobs (long passes and short chunks alike, each a fresh forward from
    position 0) are pooled per model and run in as few padded forward calls as
    `options.token_budget` allows.
    """
    short_is_long = short_model is None
    segments = []
    for i, job in enumerate(jobs):
        segments += plan_sequence(
            i,
            job.tokens,
            job.window,
            job.stride,
            bos_token_id,
            job.outputs.need_long,
            job.outputs.need_short,
            short_is_long,
        )
    by_model: dict[int, tuple[nn.Module, list]] = {}
    for seg in segments:
        model = short_model if (seg.role == SHORT and not short_is_long) else long_model
        by_model.setdefault(id(model), (model, []))[1].append(seg)

    results = []
    for job in jobs:
        targets = max(job.tokens.numel() - 1, 0)
        long = torch.empty(targets) if job.outputs.need_long else None
        short = torch.empty(targets) if job.outputs.need_short else None
        results.append(LogProbs(long, short))

    def abandoned(seg) -> bool:
        check = jobs[seg.sequence].abandoned
        return check is not None and check()

    for model, segs in by_model.values():
        for seg, logp in zip(segs, run_segments(model, segs, options, abandoned)):
            result = results[seg.sequence]
            out = result.long if seg.role == LONG else result.short
            out[seg.out_offset : seg.out_offset + logp.numel()] = logp

    if short_is_long:
        for job, result in zip(jobs, results):
            if result.long is not None and result.short is not None:
                share_whole_prefix(result.short, result.long, job.window)
    return results


def default_options(device: torch.device) -> ForwardOptions:
    if device.type == "cuda":
        # Measured on an H200 (BENCHMARKS.md): the fused LM-head slice is worth ~7%; torch's
        # own SDPA choice there is already cuDNN attention, the fastest of those tried.
        return ForwardOptions(token_budget=131072, compile_logprobs=True)
    return ForwardOptions()


def _max_positions(model: nn.Module) -> int | None:
    return getattr(model.config, "max_position_embeddings", None)


def module_digest(model: nn.Module) -> str:
    """sha256 over a model's parameters, for models built in memory rather than loaded."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class ScoringEngine:
    """One scorer: a long model, an optional separate short model, and default settings."""

    def __init__(
        self,
        long_model: nn.Module,
        short_model: nn.Module | None = None,
        *,
        name: str = "default",
        window: int = 1024,
        stride: int | None = None,
        max_length: int | None = None,
        token_budget: int | None = None,
        batch_invariant: bool | None = None,
        compile_blocks: bool | None = None,
        options: ForwardOptions | None = None,
        long_path: str = "",
        short_path: str = "",
        long_digest: str | None = None,
        short_digest: str | None = None,
    ):
        self.name = name
        self.long_model = long_model
        self.short_model = short_model
        self.long_path, self.short_path = long_path, short_path
        config = long_model.config
        self.vocab_size = int(config.vocab_size)
        self.bos_token_id = config.bos_token_id
        if short_model is not None:
            _check_pair(long_model, short_model)
        self.window = window
        self.stride = default_stride(window) if stride is None else stride
        check_window(self.window, self.stride)
        model_max = _max_positions(long_model)
        if max_length is None and model_max is None:
            raise ValueError(
                f"scorer {name!r}: the model config has no max_position_embeddings; "
                "set max_length explicitly"
            )
        self.max_length = min(x for x in (max_length, model_max) if x is not None)
        self.short_max_positions = (
            _max_positions(short_model) if short_model is not None else None
        )
        param = next(long_model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.options = options or default_options(self.device)
        if token_budget:
            self.options = dataclasses.replace(self.options, token_budget=token_budget)
        if batch_invariant is not None:
            self.options = dataclasses.replace(self.options, batch_invariant=batch_invariant)
        if compile_blocks is not None:
            self.options = dataclasses.replace(self.options, compile_blocks=compile_blocks)
        # Digests of models built in memory are computed on the first fingerprint, not here:
        # hashing a multi-GB model costs seconds that scoring alone never needs.
        self._given_digests = (long_digest, short_digest)
        if self.options.compile_blocks:
            self._compile_blocks()

    def _compile_blocks(self) -> None:
        """Compile the models' decoder layers and pay the compilation now, not on a request.

        Symbolic shapes (dynamic=True) make one compilation serve every length and batch
        size; torch specialises sizes of one, so the warm-up covers one-row and several-row
        batches and a one-token pass.
        """
        for model in (self.long_model, self.short_model):
            if model is not None:
                compile_blocks(
                    model,
                    dynamic=True,
                    emulate_precision_casts=self.options.compile_blocks_eager_rounding,
                )
        length = min(self.max_length, self.window + self.stride + 1)
        tokens = np.arange(length, dtype=np.int64) % self.vocab_size
        self.score([tokens])
        self.score([tokens, tokens[: max(2, length // 2)], tokens[:2]])

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        short_path: str | Path | None = None,
        *,
        device: str | None = None,
        dtype: str | None = None,
        allow_pickle: bool = False,
        **settings,
    ) -> "ScoringEngine":
        dev = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, dev)
        long = load_causal_lm(path, dev, torch_dtype, allow_pickle)
        short = load_causal_lm(short_path, dev, torch_dtype, allow_pickle) if short_path else None
        return cls.from_loaded(long, short, **settings)

    @classmethod
    def from_loaded(
        cls, long: LoadedModel, short: LoadedModel | None = None, **settings
    ) -> "ScoringEngine":
        """The engine over checkpoints already loaded (their paths and digests included);
        `from_pretrained`, the service's scorers and the evals all build it here."""
        return cls(
            long.model,
            short.model if short else None,
            long_path=long.path,
            short_path=short.path if short else "",
            long_digest=long.digest,
            short_digest=short.digest if short else None,
            **settings,
        )

    def fingerprint(self, window: int | None = None, stride: int | None = None) -> str:
        window, stride = self.resolve(window, stride)
        parts = [SCORING_VERSION, *self._weight_digests, str(self.dtype), self.device.type]
        if self.options.batch_invariant:
            parts.append("batch-invariant")
        if self.options.compile_blocks:
            parts.append("compiled-blocks")  # fused kernels round bf16 differently
            if self.options.compile_blocks_eager_rounding:
                parts.append("eager-rounding")  # closer to the plain path, not bit-identical
        parts += [f"window={window}", f"stride={stride}"]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]

    @functools.cached_property
    def _weight_digests(self) -> tuple[str, str]:
        long_digest, short_digest = self._given_digests
        long = long_digest or module_digest(self.long_model)
        short = "" if self.short_model is None else (short_digest or module_digest(self.short_model))
        return long, short

    def resolve(self, window: int | None, stride: int | None) -> tuple[int, int]:
        """Fill defaults (None or 0) and check the pair; ScoringInputError if invalid.

        A window given without a stride gets the default stride of that window.
        """
        k = window or self.window
        s = stride or (default_stride(k) if window else self.stride)
        try:
            check_window(k, s)
        except ValueError as exc:
            raise ScoringInputError(str(exc)) from None
        return k, s

    def check(self, sequences: list[np.ndarray], window: int, stride: int) -> None:
        """Refuse what the engine cannot score, naming the sequence and the problem."""
        if not sequences:
            raise ScoringInputError("the request has no sequences; send at least one")
        for i, seq in enumerate(sequences):
            if seq.ndim != 1 or not np.issubdtype(seq.dtype, np.integer):
                raise ScoringInputError(f"sequence {i} must be a flat list of integer token ids")
            if seq.size > self.max_length:
                raise ScoringInputError(
                    f"sequence {i} has {seq.size} tokens; scorer {self.name!r} accepts at most "
                    f"{self.max_length}. Split the document or use a longer-context scorer"
                )
            if seq.size == 0:
                continue
            low, high = int(seq.min()), int(seq.max())
            if low < 0:
                pos = int(np.argmax(seq < 0))
                raise ScoringInputError(
                    f"negative token id {low} at position {pos} of sequence {i}; token ids "
                    f"must be in [0, {self.vocab_size})"
                )
            if high >= self.vocab_size:
                pos = int(np.argmax(seq >= self.vocab_size))
                raise ScoringInputError(
                    f"token id {high} at position {pos} of sequence {i} is outside the "
                    f"vocabulary of scorer {self.name!r} (size {self.vocab_size}); was it "
                    "tokenized with this scorer's tokenizer?"
                )
            if self.short_max_positions is not None:
                chunk_tokens = min(window, seq.size) - 1
                if chunk_tokens > self.short_max_positions:
                    raise ScoringInputError(
                        f"window {window} needs the short model to read {chunk_tokens} tokens "
                        f"but it has {self.short_max_positions} positions; use a smaller window"
                    )

    def forward_tokens(self, lengths: list[int], window: int, stride: int, outputs: Outputs) -> int:
        """Tokens the model reads to score sequences of these lengths: the work they cost."""
        short_is_long = self.short_model is None
        need_long, need_short = outputs.need_long, outputs.need_short
        return sum(
            forward_tokens(n, window, stride, need_long, need_short, short_is_long) for n in lengths
        )

    def check_work(
        self, sequences: list[np.ndarray], window: int, stride: int, outputs: Outputs, limit: int
    ) -> int:
        """The request's forward tokens; ScoringInputError if over `limit`, naming the
        smallest stride that fits (a small stride multiplies the short-context passes)."""
        lengths = [seq.size for seq in sequences]
        work = self.forward_tokens(lengths, window, stride, outputs)
        if work <= limit:
            return work
        strides = range(stride, window)
        fits = bisect.bisect_left(
            strides, True, key=lambda s: self.forward_tokens(lengths, window, s, outputs) <= limit
        )
        advice = (
            f"use stride >= {strides[fits]} (window {window}) or split the request"
            if fits < len(strides)
            else "split the request"
        )
        raise ScoringInputError(
            f"the request needs {work} forward tokens at window {window}, stride {stride}; this "
            f"server runs at most {limit} per request: {advice}"
        )

    def run(self, jobs: list[ScoreJob]) -> list[Scores]:
        """Score jobs that already passed `check` (the batcher's entry point)."""
        logprobs = compute_logprobs(
            self.long_model, self.short_model, jobs, self.bos_token_id, self.options
        )
        return [_to_scores(job.outputs, lp) for job, lp in zip(jobs, logprobs)]

    def score(
        self,
        sequences: list,
        window: int | None = None,
        stride: int | None = None,
        outputs: Outputs = ALL_OUTPUTS,
    ) -> list[Scores]:
        arrays = [np.asarray(seq) for seq in sequences]
        arrays = [a.astype(np.int64) if a.size == 0 else a for a in arrays]
        k, s = self.resolve(window, stride)
        self.check(arrays, k, s)
        return self.run([ScoreJob(torch.as_tensor(a, dtype=torch.long), k, s, outputs) for a in arrays])

    def info(self) -> ScorerInfo:
        return ScorerInfo(
            name=self.name,
            long_model=self.long_path,
            short_model=self.short_path,
            default_window=self.window,
            default_stride=self.stride,
            max_sequence_length=self.max_length,
            vocab_size=self.vocab_size,
            dtype=str(self.dtype).removeprefix("torch."),
            device=str(self.device),
            fingerprint=self.fingerprint(),
        )


def _check_pair(long_model: nn.Module, short_model: nn.Module) -> None:
    """A long/short pair must share the vocabulary, or the contrast compares nothing."""
    a, b = long_model.config, short_model.config
    if a.vocab_size != b.vocab_size or a.bos_token_id != b.bos_token_id:
        raise ValueError(
            f"long and short models must share a tokenizer: vocab sizes {a.vocab_size} vs "
            f"{b.vocab_size}, BOS ids {a.bos_token_id} vs {b.bos_token_id}"
        )


def _to_scores(outputs: Outputs, logprobs: LogProbs) -> Scores:
    long = logprobs.long.numpy() if logprobs.long is not None else None
    short = logprobs.short.numpy() if logprobs.short is not None else None
    score = np.abs(short - long) if outputs.score else None
    return Scores(
        score=score,
        logp_long=long if outputs.logp_long else None,
        logp_short=short if outputs.logp_short else None,
    )
