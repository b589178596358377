"""`tokenweight diagnose`: how scorers compare on held-out files, without training anything.

    tokenweight diagnose --scorer runs/scorer_small/model --scorer runs/scorer/model \
        --data corpus/heldout.jsonl --seq-len 4096 --window 512 --out eval/diagnose.json

- rank agreement: Spearman correlation of the scorers' token weights (a weighting preset, the
  dense hybrid by default) on the same sequences, pooled over tokens and per sequence;
- what each scorer finds: the AUROC of its |delta| = |logp_long - logp_short| for telling the
  tokens of long-range identifier repeats (the `id_loss` tokens: seen before, but not in the
  last `window` tokens) from all other tokens.

A scorer trained only at the window's length reads the long context no better than the window,
so its own delta finds little. The `hybrid` source pairs such a frozen scorer's logp_short with
the trainee's own logp_long; `--long-model` measures that pairing: every scorer's logp_short
against one long-context model's logp_long (`auroc_hybrid`, `rank_agreement_hybrid`), beside
the scorers' own contrasts.
"""

import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tokenweight.flags import add_flags, flag, values_of

from ..prepare import PrepareError, write_json_atomic
from .heldout import HeldOutError, load_heldout
from .idrecall import id_loss_mask, source_files

FORMAT = "tokenweight-diagnose-1"


class DiagnoseError(ValueError):
    """Settings the diagnostics cannot run with; the message names the fix."""


@dataclass(frozen=True)
class DiagnoseConfig:
    scorer: tuple[str, ...] = flag(
        help="scorer checkpoint (repeat: the first two are rank-compared; each gets an AUROC)",
        action="append",
    )
    data: str = flag(help='held-out .jsonl ({"text"} lines)')
    seq_len: int = flag(help="context in tokens")
    out: str = flag(help="JSON file to write")
    window: int | None = flag(None, "the scorers' short window (default seq-len/8)")
    long_model: str | None = flag(
        None,
        "a long-context model whose logp_long is paired with every scorer's logp_short, as the "
        "hybrid source pairs the trainee's with the frozen scorer's (adds *_hybrid results)",
    )
    tokenizer: str | None = flag(None, "tokenizer directory (default: the first --scorer)")
    preset: str = flag("dense", "weighting preset of the compared weights")
    max_sequences: int = flag(64, "held-out files read")
    batch_sequences: int = flag(8, "sequences per engine call")
    seed: int = flag(0, "which files are sampled")
    device: str | None = flag(None, "cpu, cuda or cuda:N (default: cuda if available)")
    dtype: str | None = flag(
        None, "default: bf16 on CUDA, fp32 on CPU", choices=["float32", "bfloat16", "float16"]
    )


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation (ties get their average rank)."""
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).statistic)


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Probability that a positive outscores a negative (ties count half): the Mann-Whitney U
    of the positives over (positives x negatives)."""
    from scipy.stats import mannwhitneyu

    scores, positive = np.asarray(scores, dtype=np.float64), np.asarray(positive, dtype=bool)
    pos, neg = scores[positive], scores[~positive]
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    return float(mannwhitneyu(pos, neg).statistic / (pos.size * neg.size))


def rank_agreement(weights_a: list[np.ndarray], weights_b: list[np.ndarray]) -> dict:
    per_sequence = [spearman(a, b) for a, b in zip(weights_a, weights_b) if a.size > 2]
    return {
        "pooled": spearman(np.concatenate(weights_a), np.concatenate(weights_b)),
        "per_sequence_median": float(np.nanmedian(per_sequence)) if per_sequence else None,
        "sequences": len(per_sequence),
        "tokens": int(sum(a.size for a in weights_a)),
    }


def token_weights(contrast: list[tuple[np.ndarray, np.ndarray]], preset: str) -> list[np.ndarray]:
    """The trainer's weights of each sequence under a weighting preset (DESIGN §1)."""
    import torch

    from ..weighting import WeightingConfig, compute_weights

    config = WeightingConfig.from_preset(preset)
    out = []
    for ll, ls in contrast:
        loss_long = torch.as_tensor(-ll, dtype=torch.float32)[None]
        loss_short = torch.as_tensor(-ls, dtype=torch.float32)[None]
        out.append(compute_weights(loss_long, loss_short, config)[0].numpy())
    return out


def add_arguments(parser) -> None:
    add_flags(parser, DiagnoseConfig)


def run(args) -> int:
    from tokenweight.service.loading import ModelLoadError

    values = values_of(args, DiagnoseConfig)
    config = DiagnoseConfig(**{**values, "scorer": tuple(values["scorer"])})
    try:
        result = diagnose(config)
    except (DiagnoseError, HeldOutError, ModelLoadError, PrepareError) as exc:
        print(f"tokenweight diagnose: error: {exc}", file=sys.stderr)
        return 1
    for suffix, label in (("", "own contrast"), ("_hybrid", "with --long-model")):
        if f"rank_agreement{suffix}" not in result:
            continue
        agreement = result[f"rank_agreement{suffix}"]
        found = ", ".join(f"{s['model']} {s[f'auroc{suffix}']:.3f}" for s in result["scorers"])
        rho = f"Spearman {agreement['pooled']:.3f}; " if agreement else ""
        print(f"{label}: {rho}AUROC of |delta| for long-range identifier repeats: {found}")
    return 0


def diagnose(cfg: DiagnoseConfig) -> dict:
    """Score the held-out files with every scorer and write `cfg.out`; returns what was written."""
    from ..prepare import load_tokenizer
    from ..weighting import WeightingConfig
    from .lm import LocalJudge, load_engine, logprob_fn

    window = cfg.window or max(2, cfg.seq_len // 8)
    if not 2 <= window < cfg.seq_len:
        raise DiagnoseError(f"--window must be in [2, --seq-len), got {window}")
    if cfg.max_sequences < 1 or cfg.batch_sequences < 1:
        raise DiagnoseError("--max-sequences and --batch-sequences must be >= 1")
    try:
        WeightingConfig.from_preset(cfg.preset)
    except ValueError as exc:
        raise DiagnoseError(f"--preset: {exc}") from None
    started = time.perf_counter()
    tok = load_tokenizer(cfg.tokenizer or cfg.scorer[0])
    heldout = load_heldout(cfg.data, tok.backend, cfg.seq_len, window, cfg.max_sequences, cfg.seed)
    if heldout.unit != "file":
        raise DiagnoseError("--data must be a .jsonl of files: the repeats are found in the text")
    files = source_files(heldout)
    targets = np.concatenate([id_loss_mask(f, window) for f in files])

    def batches():
        for lo in range(0, len(heldout.long), cfg.batch_sequences):
            yield heldout.long[lo : lo + cfg.batch_sequences]

    long_side = None
    if cfg.long_model:
        read_long = logprob_fn(load_engine(cfg.long_model, cfg.seq_len, window, cfg.device, cfg.dtype))
        long_side = [ll for batch in batches() for ll in read_long(batch)]
    scorers, weights, hybrid_weights = [], [], []
    for path in cfg.scorer:
        judge = LocalJudge(load_engine(path, cfg.seq_len, window, cfg.device, cfg.dtype), window)
        contrast = [pair for batch in batches() for pair in judge.contrast(batch)]
        weights.append(token_weights(contrast, cfg.preset))
        found = {
            "model": path,
            "fingerprint": judge.describe["fingerprint"],
            "auroc": _delta_auroc(contrast, targets),
        }
        if long_side is not None:
            hybrid = [(ll, ls) for ll, (_, ls) in zip(long_side, contrast)]
            hybrid_weights.append(token_weights(hybrid, cfg.preset))
            found["auroc_hybrid"] = _delta_auroc(hybrid, targets)
        scorers.append(found)
    result = {
        "format": FORMAT,
        "settings": {**asdict(cfg), "window": window},
        "sequences": len(files),
        "tokens": int(targets.size),
        "repeat_tokens": int(targets.sum()),
        "scorers": scorers,
        "rank_agreement": _agreement(weights),
        **({"rank_agreement_hybrid": _agreement(hybrid_weights)} if long_side is not None else {}),
        "elapsed_s": round(time.perf_counter() - started, 2),
    }
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out, result, tmp_dir=out.parent)
    return result


def _delta_auroc(contrast: list[tuple[np.ndarray, np.ndarray]], targets: np.ndarray) -> float:
    return auroc(np.concatenate([np.abs(ll - ls) for ll, ls in contrast]), targets)


def _agreement(weights: list[list[np.ndarray]]) -> dict | None:
    """The first two scorers' weights compared; None with one scorer."""
    return rank_agreement(weights[0], weights[1]) if len(weights) > 1 else None
