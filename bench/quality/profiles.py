"""Sizes of the quality pipeline: `h200` (the real run) and `smoke` (a few CPU minutes).

Every extension arm trains on the same token budget (`extend` steps x batch x long_len) from
the same pretrained model; only the weighting and the score source differ.
"""

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Shape:
    """A Llama-shaped model; `tie_word_embeddings` keeps the bundled model under 25 MB."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


@dataclass(frozen=True)
class Training:
    steps: int
    batch: int  # sequences per optimizer step, over all ranks
    micro_batch: int  # most sequences per rank per forward
    lr: float
    min_lr: float
    warmup: int
    weight_decay: float = 0.1


@dataclass(frozen=True)
class Arm:
    name: str
    weighting: str
    params: dict = field(default_factory=dict)
    source: str | None = None  # trainer --score-source; None for uniform

    def trainer_flags(self) -> list[str]:
        flags = ["--weighting", self.weighting]
        for key, value in self.params.items():
            flags += [f"--{key}", str(value)]
        return flags + (["--score-source", self.source] if self.source else [])


# The arms: uniform, the frozen (hybrid) scorer for each preset, and dense unfrozen.
ARMS = (
    Arm("uniform", "uniform"),
    Arm("dense", "dense", {"lam": 0.75}, "hybrid"),
    Arm("sparse-0.2", "sparse", {"kappa": 0.2}, "hybrid"),
    Arm("sparse-0.4", "sparse", {"kappa": 0.4}, "hybrid"),
    Arm("longce", "longce", {"gamma": 5.0}, "hybrid"),
    Arm("dense-self", "dense", {"lam": 0.75}, "self"),
)
JUDGE = Arm("judge", "uniform")  # LongPPL's fixed evaluator: uniform, its own seed


@dataclass(frozen=True)
class Profile:
    name: str
    shape: Shape
    vocab_size: int
    short_len: int  # pretraining context, and the scorer's window k
    long_len: int  # extended context (8x)
    rope_theta: float  # pretraining RoPE base
    pretrain: Training
    extend: Training
    corpus_max_bytes: int | None
    corpus_roots: tuple[str, ...] = ()  # empty: the stdlib and site-packages
    seeds: tuple[int, ...] = (0, 1)
    judge_seed: int = 100
    eval_items_per_bucket: int = 40
    eval_max_sequences: int = 256
    jobs_per_device: int = 1
    bundle_arm: str = "dense"

    @property
    def long_rope_theta(self) -> float:
        """NTK-aware base for an 8x longer context: theta * s^(d/(d-2)), s = long/short."""
        scale = self.long_len / self.short_len
        d = self.shape.head_dim
        return round(self.rope_theta * scale ** (d / (d - 2)))


PROFILES = {
    "h200": Profile(
        name="h200",
        # 10.8M parameters: 21.6 MB in bf16, so the bundled model fits in 25 MB with its tokenizer.
        shape=Shape(
            hidden_size=384,
            num_hidden_layers=6,
            num_attention_heads=6,
            num_key_value_heads=2,
            intermediate_size=768,
        ),
        vocab_size=8192,
        short_len=512,
        long_len=4096,
        rope_theta=10000.0,
        # 2000 x 128 x 512 = 131M tokens (~12 per parameter, ~2 epochs of the corpus).
        pretrain=Training(steps=2000, batch=128, micro_batch=64, lr=1e-3, min_lr=1e-4, warmup=100),
        # 150 x 16 x 4096 = 9.8M tokens per arm.
        extend=Training(steps=150, batch=16, micro_batch=16, lr=3e-4, min_lr=3e-5, warmup=15),
        corpus_max_bytes=250_000_000,
        eval_items_per_bucket=30,
        eval_max_sequences=128,
        jobs_per_device=2,
    ),
    "smoke": Profile(
        name="smoke",
        shape=Shape(
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=128,
        ),
        vocab_size=512,
        short_len=32,
        long_len=256,
        rope_theta=10000.0,
        pretrain=Training(steps=30, batch=8, micro_batch=8, lr=3e-3, min_lr=3e-4, warmup=3),
        extend=Training(steps=4, batch=2, micro_batch=2, lr=1e-3, min_lr=1e-4, warmup=1),
        corpus_max_bytes=3_000_000,
        corpus_roots=(
            "json",
            "email",
            "asyncio",
            "logging",
            "http",
            "xml",
            "importlib",
            "concurrent",
        ),
        seeds=(0,),
        eval_items_per_bucket=2,
        eval_max_sequences=8,
        jobs_per_device=2,
    ),
}
