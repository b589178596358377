"""Turn per-token long/short-context losses into loss weights (docs/DESIGN.md §1.2).

The pipeline mirrors ``ShortLongLoss.calculate_weights`` of the paper's released code
(UKPLab/naacl2025-token-weighting) and applies, in this order:

1. comparison      ``difference``: ``loss_long - loss_short`` = ``log(p_short / p_long)``;
                   ``quotient``:   ``(loss_long + 1e-5) / (loss_short + 1e-5)``
2. transforms      in listed order: ``absolute``, ``minus`` (negate), ``exp``,
                   ``max`` (clip below 0), ``"shift c"`` (subtract ``log c``)
3. truncation      ``gamma``: clip above
4. sparsification  ``kappa``: the top ``floor(kappa * n)`` entries of a row become 1, the rest 0
5. normalization   ``L1`` (row mean 1) or ``softmax`` (softmax times row length)
6. interpolation   ``lambda``: ``w = lambda + (1 - lambda) * w``

Every row statistic (top-kappa count, L1 sum, softmax) runs over the row's real targets only,
so padded rows of a variable-length batch are weighted as if they were unpadded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import torch

COMPARISONS = ("difference", "quotient")
TRANSFORMS = ("absolute", "minus", "exp", "max")  # plus "shift c", parsed by _shift_value
NORMALIZATIONS = ("L1", "softmax")

# The released code adds this to both losses before dividing, so a zero loss cannot divide by 0.
_QUOTIENT_EPS = 1e-5

# Preset name -> its parameters and their defaults (docs/DESIGN.md §1.2, the presets table).
PRESET_PARAMS: Mapping[str, Mapping[str, float]] = {
    "uniform": {},
    "dense": {"lam": 0.75},
    "sparse": {"kappa": 0.2},
    "longce": {"gamma": 5.0},
    "ppmi": {"c": 2.0, "kappa": 0.2},
    "npmi": {"c": 2.0, "kappa": 0.2},
}
PRESETS = tuple(PRESET_PARAMS)


def _number(name: str, value: object) -> float:
    # bool is an int subclass; True as a kappa is always a mistake.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return value


def _check_kappa(name: str, value: object) -> float:
    value = _number(name, value)
    if not 0.0 < value <= 1.0:
        raise ValueError(f"{name} must be in (0, 1] (the kept fraction of each row), got {value}")
    return value


def _check_lambda(name: str, value: object) -> float:
    value = _number(name, value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1] (1 = plain cross-entropy), got {value}")
    return value


def _check_positive(name: str, value: object) -> float:
    value = _number(name, value)
    if value <= 0.0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return value


def shift(c: float) -> str:
    """The transform string for ``shift c`` (subtract ``log c``), e.g. ``shift(2.0) == "shift 2.0"``.

    Transforms are plain strings in the released code's spelling, so a config is hashable and
    round-trips through JSON and the command line unchanged.
    """
    return f"shift {_check_positive('shift c', c)!r}"


def _shift_value(transform: str) -> float | None:
    """``c`` of a ``"shift c"`` transform, None for any other transform name."""
    name, _, arg = transform.partition(" ")
    if name != "shift":
        return None
    try:
        c = float(arg)
    except ValueError:
        raise ValueError(f"transform {transform!r} must be 'shift <c>' with a number c > 0") from None
    # c > 0 because the shift subtracts log(c).
    return _check_positive(f"c of transform {transform!r}", c)


@dataclass(frozen=True)
class WeightingConfig:
    """How raw long/short losses become weights; field names follow the released code.

    Defaults are the released ``ShortLongLoss`` defaults (raw differences as weights); use
    :meth:`from_preset` for the paper's loss variants.
    """

    comparison: str = "difference"
    transforms: tuple[str, ...] = ()
    truncation: float | None = None
    sparsification: float | None = None
    normalization: str | None = None
    interpolation: float | None = None
    seed: int = 42

    def __post_init__(self) -> None:
        if self.comparison not in COMPARISONS:
            raise ValueError(f"comparison must be one of {COMPARISONS}, got {self.comparison!r}")
        if isinstance(self.transforms, str):
            raise ValueError(f"transforms must be a sequence of names, got the string {self.transforms!r}")
        object.__setattr__(self, "transforms", tuple(self.transforms))
        for t in self.transforms:
            if not isinstance(t, str) or (t not in TRANSFORMS and _shift_value(t) is None):
                raise ValueError(f"unknown transform {t!r}; valid: {TRANSFORMS} and 'shift <c>'")
        if self.truncation is not None:
            object.__setattr__(self, "truncation", _check_positive("truncation (gamma)", self.truncation))
        if self.sparsification is not None:
            object.__setattr__(self, "sparsification", _check_kappa("sparsification (kappa)", self.sparsification))
        if self.normalization is not None and self.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be None or one of {NORMALIZATIONS}, got {self.normalization!r}")
        if self.interpolation is not None:
            object.__setattr__(self, "interpolation", _check_lambda("interpolation (lambda)", self.interpolation))
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an int, got {self.seed!r}")

    @property
    def is_uniform(self) -> bool:
        """True when every real target gets weight 1 whatever the scores (lambda = 1)."""
        return self.interpolation == 1.0

    @classmethod
    def from_preset(cls, name: str, *, seed: int = 42, **params: float) -> WeightingConfig:
        """A named loss variant of the paper (docs/DESIGN.md §1.2, the presets table).

        ``uniform``; ``dense(lam=0.75)``; ``sparse(kappa=0.2)``; ``longce(gamma=5.0)``;
        ``ppmi(c=2.0, kappa=0.2)``; ``npmi(c=2.0, kappa=0.2)``. Unknown names, unknown
        parameters and out-of-range values raise ValueError naming the valid choices.
        """
        if name not in PRESET_PARAMS:
            raise ValueError(f"unknown weighting preset {name!r}; choose one of {PRESETS}")
        defaults = PRESET_PARAMS[name]
        unknown = sorted(set(params) - set(defaults))
        if unknown:
            valid = ", ".join(defaults) or "none besides seed"
            raise ValueError(f"preset {name!r} takes no parameter {', '.join(unknown)}; valid parameters: {valid}")
        p = {**defaults, **params}

        if name == "uniform":
            # lambda = 1 turns the weights into plain cross-entropy (released README).
            return cls(interpolation=1.0, seed=seed)
        if name == "dense":
            return cls(transforms=("absolute",), normalization="L1",
                       interpolation=_check_lambda("lam", p["lam"]), seed=seed)
        if name == "sparse":
            return cls(transforms=("absolute",), sparsification=_check_kappa("kappa", p["kappa"]),
                       normalization="L1", seed=seed)
        if name == "longce":
            # difference = loss_long - loss_short; minus, exp -> p_long / p_short, clipped at gamma:
            # min(exp(loss_short - loss_long), gamma), the LongCE weight.
            return cls(transforms=("minus", "exp"), truncation=_check_positive("gamma", p["gamma"]), seed=seed)
        kappa = _check_kappa("kappa", p["kappa"])
        c = _check_positive("c", p["c"])
        if name == "ppmi":
            # max(0, log(p_long / (c * p_short))): tokens the long context makes c times likelier.
            return cls(transforms=("minus", shift(c), "max"), sparsification=kappa, normalization="L1", seed=seed)
        # npmi: max(0, log(p_short / (c * p_long))): tokens the long context makes c times less likely.
        return cls(transforms=(shift(c), "max"), sparsification=kappa, normalization="L1", seed=seed)


def compute_weights(
    loss_long: torch.Tensor,
    loss_short: torch.Tensor,
    config: WeightingConfig,
    mask: torch.Tensor | None = None,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Per-token loss weights from long- and short-context losses (``-logp``), shape ``[batch, targets]``.

    ``mask`` (bool, same shape, True = real target) excludes padded targets from every row
    statistic and gives them weight 0. Returns float32 weights without grad, on the inputs' device.

    ``generator`` draws the random tie-breaks of sparsification. Left out, a fresh CPU generator
    seeded with ``config.seed`` is used, so a call is a pure function of its inputs; a trainer
    should keep one generator (seeded once) and pass it every step so ties are broken
    differently from step to step, as the released code's global RNG does.
    """
    if loss_long.dim() != 2 or loss_long.shape != loss_short.shape:
        raise ValueError(
            f"loss_long and loss_short must both be [batch, targets]; got {tuple(loss_long.shape)} "
            f"and {tuple(loss_short.shape)}"
        )
    if mask is None:
        mask = torch.ones(loss_long.shape, dtype=torch.bool, device=loss_long.device)
    elif mask.shape != loss_long.shape or mask.dtype != torch.bool:
        raise ValueError(f"mask must be bool of shape {tuple(loss_long.shape)}, got {mask.dtype} {tuple(mask.shape)}")

    with torch.no_grad():
        if config.is_uniform:
            return mask.float()
        # Padded targets may hold anything (even NaN); zero them so they cannot leak into rows.
        long = torch.where(mask, loss_long.detach().float(), 0.0)
        short = torch.where(mask, loss_short.detach().float(), 0.0)

        if config.comparison == "difference":
            w = long - short
        else:
            w = (long + _QUOTIENT_EPS) / (short + _QUOTIENT_EPS)

        for t in config.transforms:
            w = _transform(w, t)
        if config.truncation is not None:
            w = w.clamp(max=config.truncation)
        if config.sparsification is not None:
            if generator is None:
                generator = torch.Generator().manual_seed(config.seed)
            w = _top_kappa(w, config.sparsification, mask, generator)
        if config.normalization is not None:
            w = _normalize(w, config.normalization, mask)
        if config.interpolation is not None:
            w = config.interpolation + (1.0 - config.interpolation) * w
        return torch.where(mask, w, 0.0)


def _transform(w: torch.Tensor, transform: str) -> torch.Tensor:
    if transform == "absolute":
        return w.abs()
    if transform == "minus":
        return -w
    if transform == "exp":
        return w.exp()
    if transform == "max":
        return w.clamp(min=0.0)
    return w - math.log(_shift_value(transform))


def _top_kappa(w: torch.Tensor, kappa: float, mask: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """1 for the ``floor(kappa * n)`` largest real entries of each row, 0 elsewhere.

    As in the released ``get_top_kappa``: the count is ``int(kappa * n)`` (floor; a tiny epsilon
    keeps float error such as 0.29 * 100 = 28.999... from dropping one), and ties (in practice
    the many zeros left by ``max``) are broken uniformly at random. A row too short to keep even
    one entry keeps all of them, i.e. stays uniform, which is what the released code's
    ``indices[:, -0:]`` does and what normalising an all-zero row would give anyway.
    """
    n_real = mask.sum(dim=1)
    keep = torch.floor(kappa * n_real.double() + 1e-9).long()

    # Lexicographic order (real first, then larger w, then random) from stable sorts applied
    # from the least to the most significant key, starting from a random permutation.
    order = torch.rand(w.shape, generator=generator, device=generator.device).argsort(dim=1).to(w.device)
    order = order.gather(1, w.gather(1, order).argsort(dim=1, descending=True, stable=True))
    order = order.gather(1, mask.gather(1, order).to(torch.int8).argsort(dim=1, descending=True, stable=True))

    positions = torch.arange(w.shape[1], device=w.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(1, order, positions)
    kept = (rank < keep[:, None]) | (keep == 0)[:, None]
    return (kept & mask).float()


def _normalize(w: torch.Tensor, normalization: str, mask: torch.Tensor) -> torch.Tensor:
    """Rescale each row over its real targets; an all-zero row becomes uniform (all ones).

    ``L1`` divides by the row's L1 norm and multiplies by its length, as the released code does
    (``F.normalize(p=1) * n``); for the non-negative weights of every preset that is mean 1.
    ``softmax`` gives ``softmax(w) * n``, which sums to the row length.
    """
    n_real = mask.sum(dim=1, keepdim=True).float()
    if normalization == "L1":
        l1 = torch.where(mask, w.abs(), 0.0).sum(dim=1, keepdim=True)
        return torch.where(l1 > 0, w * n_real / l1, 1.0)
    # A constant row (all zeros included) is already uniform under softmax. A row without real
    # targets gives NaN here (softmax over nothing) and is zeroed by the caller's final mask.
    return torch.softmax(w.masked_fill(~mask, -math.inf), dim=1) * n_real
