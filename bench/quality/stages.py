"""The pipeline's stages, in order. Each skips what an earlier invocation finished (its
output is on disk), so an interrupted or split run continues with the stages left. A
training run is the unit: one cut off is trained again from its start.

    corpus -> tokenizer -> prepare -> init -> pretrain -> judge -> scorer -> extend -> eval
    -> report -> bundle
"""

import contextlib
import json
import shutil
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from .jobs import TOKENWEIGHT, TORCHRUN, Job, PipelineError, Runner, flags, scorer_server
from .profiles import JUDGE, Arm, Profile, Training


@dataclass
class Context:
    profile: Profile
    work: Path
    runner: Runner
    device: str  # "cuda" or "cpu"
    seeds: tuple[int, ...]
    arms: tuple[Arm, ...]  # the arms this invocation extends and evaluates
    results: Path  # quality JSON
    doc: Path  # RESULTS.md whose results section the report rewrites
    plots: Path
    bundle: Path

    def path(self, *parts) -> Path:
        return self.work.joinpath(*parts)

    @property
    def runs(self) -> list[tuple[Arm, int]]:
        return [(arm, seed) for arm in self.arms for seed in self.seeds]


def run_name(arm: Arm, seed: int) -> str:
    return "judge" if arm is JUDGE else f"{arm.name}-s{seed}"


def corpus(ctx: Context) -> None:
    """Built afresh on each machine (the files are its own); a run carried over from another
    call must find the very same file list, or its models were trained on something else."""
    out = ctx.path("corpus")
    manifest = out / "manifest.json"
    if all((out / name).is_file() for name in ("manifest.json", "train.jsonl", "heldout.jsonl")):
        return
    carried = json.loads(manifest.read_text())["list_hash"] if manifest.is_file() else None
    argv = TOKENWEIGHT + ["corpus"] + flags(out=out, seed=0)
    if ctx.profile.corpus_max_bytes:
        argv += ["--max-bytes", str(ctx.profile.corpus_max_bytes)]
    if ctx.profile.corpus_roots:
        stdlib = Path(sysconfig.get_paths()["stdlib"])
        argv += ["--roots", *(str(stdlib / r) for r in ctx.profile.corpus_roots)]
    ctx.runner.run(Job("corpus", argv, "corpus"))
    built = json.loads(manifest.read_text())["list_hash"]
    if carried is not None and built != carried:
        raise PipelineError(
            f"this machine's corpus (list_hash {built}) is not the one the carried run was built "
            f"from ({carried}); run the whole pipeline here instead"
        )


def tokenizer(ctx: Context) -> None:
    out = ctx.path("tokenizer")
    if (out / "tokenizer.json").is_file():
        return
    argv = (
        TOKENWEIGHT
        + ["tokenizer"]
        + flags(corpus=ctx.path("corpus"), vocab_size=ctx.profile.vocab_size, out=out)
    )
    ctx.runner.run(Job("tokenizer", argv, "tokenizer"))


def prepare(ctx: Context) -> None:
    for name, seq_len in (
        ("shards-short", ctx.profile.short_len),
        ("shards-long", ctx.profile.long_len),
    ):
        out = ctx.path(name)
        pretrained = ctx.path("pretrain", "model", "config.json").is_file()
        if (out / "index.json").is_file() or (name == "shards-short" and pretrained):
            continue
        argv = (
            TOKENWEIGHT
            + ["prepare"]
            + flags(
                tokenizer=ctx.path("tokenizer"),
                input=ctx.path("corpus", "train.jsonl"),
                seq_len=seq_len,
                out=out,
            )
        )
        ctx.runner.run(Job(f"prepare-{name}", argv, "prepare"))


def init(ctx: Context) -> None:
    """The random-weight starting checkpoint, shaped by the profile."""
    p = ctx.profile
    write_init(ctx.path("init"), ctx.path("tokenizer"), p.shape, p.short_len, p.rope_theta, 0)


def write_init(
    out: Path, tokenizer: Path, shape, max_positions: int, rope_theta: float, seed: int
) -> None:
    """A random-weight Llama of `shape` (tied embeddings) with its tokenizer, unless written."""
    if (out / "config.json").is_file():
        return
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer, local_files_only=True)
    config = LlamaConfig(
        vocab_size=len(tok),
        **vars(shape),
        max_position_embeddings=max_positions,
        rope_parameters={"rope_type": "default", "rope_theta": rope_theta},
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)


def pretrain(ctx: Context) -> None:
    out = ctx.path("pretrain")
    if (out / "model" / "config.json").is_file():
        return
    world = len(ctx.runner.devices) if ctx.device == "cuda" else 1
    p = ctx.profile
    init, data = ctx.path("init"), ctx.path("shards-short")
    argv = trainer_argv(ctx, world, init, data, out, p.pretrain, p.short_len, seed=0)
    argv += flags(weighting="uniform")
    ctx.runner.run(Job("pretrain", argv, "pretrain"))
    drop_checkpoints(out)


def scorer(ctx: Context) -> None:
    """The frozen scorer: the pretrained model, allowed to read long sequences.

    Hybrid asks it for logp_short only, so it never attends past its window k (= its training
    context); the service refuses sequences longer than the model's max positions, so the
    copy says long_len. Weights and RoPE base are untouched.
    """
    out = ctx.path("scorer")
    if (out / "config.json").is_file():
        return
    shutil.copytree(ctx.path("pretrain", "model"), out)
    config = json.loads((out / "config.json").read_text())
    config["max_position_embeddings"] = ctx.profile.long_len
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def judge(ctx: Context) -> None:
    """LongPPL's fixed evaluator: a uniform extension with its own seed, outside the table."""
    _extend_runs(ctx, [(JUDGE, ctx.profile.judge_seed)])


def extend(ctx: Context) -> None:
    """Every arm from the pretrained model, the same token budget each."""
    _extend_runs(ctx, ctx.runs)


def _extend_runs(ctx: Context, runs: list[tuple[Arm, int]]) -> None:
    p = ctx.profile
    todo = [
        (arm, seed)
        for arm, seed in runs
        if not _extended(ctx, arm, seed).is_file()
        and not ctx.path("eval", f"{run_name(arm, seed)}.json").is_file()
    ]
    if not todo:
        return
    hybrid = any(arm.source == "hybrid" for arm, _ in todo)
    # The scorer shares the first GPU with a trainer: both models are small.
    server = scorer_server(
        ctx.path("scorer"), p.short_len, "cuda:0" if ctx.device == "cuda" else "cpu"
    )
    with server if hybrid else contextlib.nullcontext() as url:
        jobs = []
        pretrained, data = ctx.path("pretrain", "model"), ctx.path("shards-long")
        for arm, seed in todo:
            out = _extended(ctx, arm, seed).parent.parent
            argv = trainer_argv(ctx, 1, pretrained, data, out, p.extend, p.long_len, seed)
            argv += flags(rope_theta=p.long_rope_theta) + arm.trainer_flags()
            if arm.source:
                argv += flags(window=p.short_len)
            if arm.source == "hybrid":
                # A scorer that died should stop the run within minutes, not after the default hour.
                argv += flags(scorer_url=url, scorer_retry_for=120)
            jobs.append(Job(f"extend-{out.name}", argv, "extend"))
        ctx.runner.run_parallel(jobs)
    for arm, seed in todo:
        drop_checkpoints(_extended(ctx, arm, seed).parent.parent)


def evaluate(ctx: Context) -> None:
    """`tokenweight eval` of the pretrained model (no extension) and every run, one judge."""
    p = ctx.profile
    models = {"base": ctx.path("pretrain", "model")}
    models |= {run_name(arm, seed): _extended(ctx, arm, seed).parent for arm, seed in ctx.runs}
    jobs = []
    for name, model in models.items():
        out = ctx.path("eval", f"{name}.json")
        if out.is_file():
            continue
        if not (model / "config.json").is_file():
            raise PipelineError(f"{model} not found: train {name} first (stage pretrain or extend)")
        argv = (
            TOKENWEIGHT
            + ["eval", "--no-progress"]
            + flags(
                model=model,
                data=ctx.path("corpus", "heldout.jsonl"),
                seq_len=p.long_len,
                window=p.short_len,
                scorer_model=ctx.path("extend", "judge", "model"),
                score_window=p.short_len,
                items_per_bucket=p.eval_items_per_bucket,
                max_sequences=p.eval_max_sequences,
                out=out,
            )
        )
        jobs.append(Job(f"eval-{name}", argv, "eval"))
    ctx.runner.run_parallel(jobs)


def report(ctx: Context) -> None:
    from . import report as report_module

    report_module.write_report(ctx)


def bundle(ctx: Context) -> None:
    """Written once, by the call that trained the bundle arm; later calls carry it along."""
    if (ctx.bundle / "config.json").is_file():
        return
    from . import bundle as bundle_module

    bundle_module.write_bundle(ctx)


STAGES = {
    "corpus": corpus,
    "tokenizer": tokenizer,
    "prepare": prepare,
    "init": init,
    "pretrain": pretrain,
    "judge": judge,
    "scorer": scorer,
    "extend": extend,
    "eval": evaluate,
    "report": report,
    "bundle": bundle,
}


# On an H200 these took the 30M model from 107-132 to 201-237 TFLOP/s at 512 and 4096 tokens
# (bench/results/trainer_h200.json); losses equal the plain path's (tests/gpu). --fast is
# compiled blocks and loss with fused AdamW; the small vocabulary's logits are cheap to keep.
CUDA_SPEED_FLAGS = ["--fast", "--no-loss-recompute"]


def trainer_argv(
    ctx: Context,
    world: int,
    model: Path,
    data: Path,
    out: Path,
    t: Training,
    seq_len: int,
    seed: int,
) -> list[str]:
    per_rank = t.batch // world
    micro = min(t.micro_batch, per_rank)
    if per_rank * world != t.batch or per_rank % micro:
        raise PipelineError(
            f"a batch of {t.batch} sequences does not split over {world} ranks in micro-batches of "
            f"{t.micro_batch}; run on a device count that divides it"
        )
    launch = TORCHRUN + ["--nproc-per-node", str(world), "-m", "tokenweight.trainer"]
    return (
        launch
        + ["--no-activation-checkpointing", "--no-progress"]
        + (CUDA_SPEED_FLAGS if ctx.device == "cuda" else [])
        + flags(
            model=model,
            data=data,
            out=out,
            seq_len=seq_len,
            max_steps=t.steps,
            batch_size=micro,
            grad_accum=per_rank // micro,
            lr=t.lr,
            min_lr=t.min_lr,
            warmup_steps=t.warmup,
            weight_decay=t.weight_decay,
            seed=seed,
            device=ctx.device,
        )
    )


def _extended(ctx: Context, arm: Arm, seed: int) -> Path:
    return ctx.path("extend", run_name(arm, seed), "model", "config.json")


def drop_checkpoints(run_dir: Path) -> None:
    """Once `model/` is exported the resumable state (weights + Adam) is only disk use."""
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
