"""The stages of the second replication. Each skips what is already on disk, so a device call
cut off by its time limit, or a later call on a machine still warm, continues where the last
one stopped; a cold machine redoes what is missing (nothing but JSON has to survive a block).

Once, before block 1 (the pilot):
    corpus -> tokenizer -> prepare -> weak (weak scorer + judge, carried in the repository)
    -> pilot-pretrain (like a block's) -> pilot-extend -> calibrate (bench/quality/calibration.json)
Per block N (seed N):
    corpus -> prepare -> init -> pretrain -> scorers -> extend (every arm) -> eval -> diagnose
    -> record

WORK holds the corpus and shards (shared), `pilot/`, and `block-N/` for each block.
"""

import contextlib
import json
import math
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from . import calibrate as calibrate_module
from .block_profiles import BlockArm, BlockProfile
from .endpoints import REFERENCE_ARM
from .jobs import TOKENWEIGHT, Job, PipelineError, Runner, flags, scorer_server
from .profiles import Shape, Training
from .stages import drop_checkpoints, trainer_argv, write_init

CHECKPOINTS_PER_RUN = 10  # a pretraining cut off by a call's time limit loses at most 1/10
UNIFORM = ["--weighting", "uniform"]


@dataclass
class BlockContext:
    profile: BlockProfile
    work: Path
    block: int | None  # None: the pilot's stages only
    runner: Runner
    device: str  # "cuda" or "cpu"
    carried: Path  # tokenizer/, weak/, judge/, provenance.json
    calibration: Path
    results: Path  # directory of quality_block*.json and the summary
    makes_carried: bool = False  # pilot-a: may train the tokenizer, weak scorer and judge

    def path(self, *parts) -> Path:
        return self.work.joinpath(*parts)

    def block_path(self, *parts) -> Path:
        if self.block is None:
            raise PipelineError("this stage belongs to a block: pass --block N")
        return self.work.joinpath(f"block-{self.block}", *parts)

    @property
    def world(self) -> int:
        return len(self.runner.devices) if self.device == "cuda" else 1


def corpus(ctx: BlockContext) -> None:
    """Rebuilt from this machine's files; it must be the corpus the carried models saw."""
    p, out = ctx.profile, ctx.path("corpus")
    if not (out / "manifest.json").is_file():
        argv = TOKENWEIGHT + ["corpus", "--split-by", "package"]
        argv += flags(
            out=out,
            seed=0,
            heldout_fraction=p.heldout_fraction,
            long_fraction=p.long_fraction,
            long_min_bytes=p.long_min_bytes,
            near_dup_threshold=p.near_dup_threshold,
        )
        if p.corpus_max_bytes:
            argv += flags(max_bytes=p.corpus_max_bytes)
        if p.corpus_roots:
            import sysconfig

            stdlib = Path(sysconfig.get_paths()["stdlib"])
            argv += ["--roots", *(str(stdlib / r) for r in p.corpus_roots)]
        ctx.runner.run(Job("corpus", argv, "corpus"))
    built = json.loads((out / "manifest.json").read_text())["list_hash"]
    provenance = ctx.carried / "provenance.json"
    if provenance.is_file():
        carried = json.loads(provenance.read_text())["corpus_list_hash"]
        if carried != built:
            raise PipelineError(
                f"this machine's corpus (list_hash {built}) is not the one the carried tokenizer "
                f"and weak scorer were trained on ({carried}); run the pilot on this machine"
            )
    elif not ctx.makes_carried:
        raise PipelineError(_NOT_CARRIED.format(what=provenance))


_NOT_CARRIED = (
    "no {what}: the carried tokenizer, weak scorer and judge come from pilot-a (commit "
    "bench/quality/carried); this group uses them and never retrains them"
)


def tokenizer(ctx: BlockContext) -> None:
    """The carried tokenizer, trained once by pilot-a: the carried models and every block's
    shards depend on it, so no later call retrains it."""
    out = ctx.carried / "tokenizer"
    if (out / "tokenizer.json").is_file():
        return
    if not ctx.makes_carried or (ctx.carried / "provenance.json").is_file():
        raise PipelineError(_NOT_CARRIED.format(what=out / "tokenizer.json"))
    argv = TOKENWEIGHT + ["tokenizer"]
    argv += flags(corpus=ctx.path("corpus"), vocab_size=ctx.profile.vocab_size, out=out)
    ctx.runner.run(Job("tokenizer", argv, "tokenizer"))


def prepare(ctx: BlockContext) -> None:
    """Pretraining shards from the training side, extension shards from the long pool only."""
    p = ctx.profile
    for name, source, seq_len in (
        ("shards-short", "train.jsonl", p.short_len),
        ("shards-long", "long.jsonl", p.long_len),
    ):
        out = ctx.path(name)
        if (out / "index.json").is_file():
            continue
        argv = TOKENWEIGHT + ["prepare"]
        argv += flags(
            tokenizer=ctx.carried / "tokenizer",
            input=ctx.path("corpus", source),
            seq_len=seq_len,
            out=out,
        )
        ctx.runner.run(Job(f"prepare-{name}", argv, "prepare"))


def weak(ctx: BlockContext) -> None:
    """The weak scorer (pretrained at the short context) and the judge (its uniform extension),
    trained once and carried in bf16 with the corpus they saw."""
    p, carried = ctx.profile, ctx.carried
    if all((carried / name / "config.json").is_file() for name in ("weak", "judge")):
        return
    if not ctx.makes_carried:
        raise PipelineError(_NOT_CARRIED.format(what=f"weak scorer and judge in {carried}"))
    run = ctx.path("pilot", "weak")
    _init(ctx, p.weak, run / "init", seed=1000)
    _pretrain(ctx, run / "init", run / "pretrain", p.weak_steps, seed=1000)
    _extend(ctx, run / "pretrain" / "model", run / "judge", p.judge_extend, 1000, UNIFORM)
    for name, source in (("weak", run / "pretrain" / "model"), ("judge", run / "judge" / "model")):
        _bf16_copy(source, carried / name)
    manifest = json.loads(ctx.path("corpus", "manifest.json").read_text())
    provenance = {
        "corpus_list_hash": manifest["list_hash"],
        "weak": {"shape": vars(p.weak), "tokens": p.weak_steps * p.pretrain.batch * p.short_len},
        "judge": {"steps": p.judge_extend.steps, "seq_len": p.long_len},
        "parameters": {name: _parameters(carried / name) for name in ("weak", "judge")},
    }
    (carried / "provenance.json").write_text(json.dumps(provenance, indent=1) + "\n")


def pilot_pretrain(ctx: BlockContext) -> None:
    """A trainee-size base pretrained as a block's is (the same tokens; seed 0, which no block
    has), so that the tasks are calibrated on a model as strong as the ones they will compare:
    only the calibration reads it."""
    run = ctx.path("pilot", "base")
    _init(ctx, ctx.profile.trainee, run / "init", seed=0)
    _pretrain(ctx, run / "init", run / "pretrain", ctx.profile.pretrain_steps, seed=0)


def pilot_extend(ctx: BlockContext) -> None:
    p = ctx.profile
    base = ctx.path("pilot", "base", "pretrain", "model")
    _extend(ctx, base, ctx.path("pilot", "uniform"), p.extend, 0, UNIFORM)


def calibrate(ctx: BlockContext) -> None:
    calibrate_module.run(ctx, ctx.path("pilot", "uniform", "model"))


def init(ctx: BlockContext) -> None:
    _init(ctx, ctx.profile.trainee, ctx.block_path("init"), seed=ctx.block)


def pretrain(ctx: BlockContext) -> None:
    steps = ctx.profile.pretrain_steps
    _pretrain(ctx, ctx.block_path("init"), ctx.block_path("pretrain"), steps, seed=ctx.block)


def scorers(ctx: BlockContext) -> None:
    """The frozen scorers of the hybrid arms, allowed to read long sequences: the block's own
    base (trainee size) and the carried weak one. Hybrid asks for logp_short only, so neither
    attends past its window; only max_position_embeddings changes."""
    for name, source in (
        ("base", ctx.block_path("pretrain", "model")),
        ("weak", ctx.carried / "weak"),
    ):
        out = ctx.block_path("scorer", name)
        if (out / "config.json").is_file():
            continue
        shutil.copytree(source, out)
        config = json.loads((out / "config.json").read_text())
        config["max_position_embeddings"] = ctx.profile.long_len
        (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def extend(ctx: BlockContext) -> None:
    """Every arm from the block's base, side by side, the same tokens each (the FLOPs-matched
    uniform arm: the same data, more steps)."""
    p = ctx.profile
    todo = [arm for arm in p.arms if not _done(ctx, arm)]
    if not todo:
        return
    needed = {arm.scorer for arm in todo if arm.scorer}
    device = "cuda:0" if ctx.device == "cuda" else "cpu"
    with contextlib.ExitStack() as stack:
        urls = {
            name: stack.enter_context(
                scorer_server(ctx.block_path("scorer", name), p.short_len, device)
            )
            for name in sorted(needed)
        }
        jobs = []
        for arm in todo:
            training = p.extend
            if arm.flops_matched:
                training = replace(training, steps=math.ceil(training.steps * flops_ratio(p)))
            extra = arm.trainer_flags(p.short_len)
            if arm.scorer:
                # A dead scorer should stop the run within minutes, not after the default hour.
                extra += flags(scorer_url=urls[arm.scorer], scorer_retry_for=120)
            argv = _extend_argv(
                ctx,
                ctx.block_path("pretrain", "model"),
                ctx.block_path("extend", arm.name),
                training,
                ctx.block,
                extra,
                data=_extension_data(ctx, arm),
            )
            jobs.append(Job(f"block{ctx.block}-extend-{arm.name}", argv, "extend"))
        ctx.runner.run_parallel(jobs)
    for arm in todo:
        drop_checkpoints(ctx.block_path("extend", arm.name))


def select(ctx: BlockContext) -> None:
    """With --selection-arms: rank the long pool's files by how much they need long context
    and keep the top fraction per length stratum, with a random control of the same size and
    strata, both as extension shards. The ranking scorer must read the whole long context: the
    carried judge (the weak scorer extended uniformly; the block's base only knows the short
    one). The judge then also marks LongPPL's key tokens, so LongPPL is no independent check
    of these four arms; the judge-free primaries are."""
    p = ctx.profile
    out = ctx.block_path("select")
    if not p.selection_arms or (out / "selection.json").is_file():
        return
    out.mkdir(parents=True, exist_ok=True)
    long_docs = ctx.path("corpus", "long.jsonl")
    ranking = out / "rank.jsonl"
    argv = TOKENWEIGHT + ["rank"] + flags(
        input=long_docs,
        model=ctx.carried / "judge",
        window=p.short_len,
        device="cuda" if ctx.device == "cuda" else "cpu",
        out=ranking,
    )
    ctx.runner.run(Job(f"block{ctx.block}-rank", argv, "select"))
    argv = TOKENWEIGHT + ["select"] + flags(
        ranking=ranking,
        input=long_docs,
        tokenizer=ctx.carried / "tokenizer",
        fraction=p.selection_fraction,
        seq_len=p.long_len,
        seed=ctx.block,
        out=out,
    )
    ctx.runner.run(Job(f"block{ctx.block}-select", argv, "select"))


def _extension_data(ctx: BlockContext, arm: BlockArm) -> Path:
    if arm.data == "long":
        return ctx.path("shards-long")
    data = ctx.block_path("select", arm.data)
    if not (data / "index.json").is_file():
        raise PipelineError(f"{data} not found: run the block's select stage first")
    return data


def evaluate(ctx: BlockContext) -> None:
    """Every arm, with the frozen task settings and the carried judge. The block's seed draws
    the synthetic items, so items vary across blocks as models do."""
    models = {arm.name: ctx.block_path("extend", arm.name, "model") for arm in ctx.profile.arms}
    eval_flags = calibrate_module.eval_flags(ctx)
    jobs = []
    for name, model in models.items():
        out = ctx.block_path("eval", f"{name}.json")
        if out.is_file():
            continue
        if not (model / "config.json").is_file():
            raise PipelineError(f"{model} not found: run the block's pretrain and extend first")
        argv = eval_argv(ctx, model, out, ctx.block) + eval_flags
        jobs.append(Job(f"block{ctx.block}-eval-{name}", argv, "eval"))
    ctx.runner.run_parallel(jobs)


def diagnose(ctx: BlockContext) -> None:
    """Scorer diagnostics, no training: rank agreement of the weak and the trainee-size
    scorers' dense weights, and how well each one's |delta| finds long-range identifier
    repeats (AUROC), on the held-out files (`tokenweight diagnose`). Both scorers were
    trained at the short context only, so besides their own contrasts each one's logp_short
    is paired with the uniformly extended trainee's logp_long, as the hybrid arms pair it
    with the trainee's own."""
    out = ctx.block_path("diagnose.json")
    if out.is_file():
        return
    p = ctx.profile
    scorers = [ctx.block_path("scorer", name) for name in ("weak", "base")]
    argv = TOKENWEIGHT + ["diagnose", "--scorer", str(scorers[0]), "--scorer", str(scorers[1])]
    argv += flags(
        long_model=ctx.block_path("extend", REFERENCE_ARM, "model"),
        data=ctx.path("corpus", "heldout.jsonl"),
        seq_len=p.long_len,
        window=p.short_len,
        max_sequences=p.eval_max_sequences,
        seed=ctx.block,
        out=out,
    )
    ctx.runner.run(Job(f"block{ctx.block}-diagnose", argv, "diagnose"))


def record(ctx: BlockContext) -> None:
    from . import block_record

    block_record.write(ctx)


def eval_argv(
    ctx: BlockContext,
    model: Path,
    out: Path,
    seed: int,
    tasks: tuple[str, ...] | None = None,
    max_sequences: int | None = None,
    items_per_bucket: int | None = None,
) -> list[str]:
    p = ctx.profile
    return (
        TOKENWEIGHT
        + ["eval", "--no-progress", "--tasks", *(tasks or p.tasks)]
        + flags(
            model=model,
            data=ctx.path("corpus", "heldout.jsonl"),
            seq_len=p.long_len,
            window=p.short_len,
            scorer_model=ctx.carried / "judge",
            score_window=p.short_len,
            items_per_bucket=items_per_bucket or p.items_per_bucket,
            max_sequences=max_sequences or p.eval_max_sequences,
            short_files=p.eval_short_files,
            seed=seed,
            out=out,
        )
    )


PILOT = {
    "corpus": corpus,
    "tokenizer": tokenizer,
    "prepare": prepare,
    "weak": weak,
    "pilot-pretrain": pilot_pretrain,
    "pilot-extend": pilot_extend,
    "calibrate": calibrate,
}
BLOCK = {
    "corpus": corpus,
    "tokenizer": tokenizer,
    "prepare": prepare,
    "init": init,
    "pretrain": pretrain,
    "scorers": scorers,
    "select": select,
    "extend": extend,
    "eval": evaluate,
    "diagnose": diagnose,
    "record": record,
}


def flops_ratio(p: BlockProfile) -> float:
    """(training + scoring) / training FLOPs per sequence of the dense arm, the comparison the
    primaries are about: its frozen trainee-size scorer runs a forward over every chunk of the
    plan (window k, stride 3k/4). dense-self and sparse cost the same; the weak scorer less;
    published LongCE (stride k/4) more, and the record lists each arm's own ratio."""
    from .block_estimate import arm_scoring
    from .estimate import forward

    dense = next(arm for arm in p.arms if arm.name == "dense")
    train = 3 * forward(p.trainee, p.vocab_size, p.long_len)
    return (train + arm_scoring(p, dense)) / train


def _done(ctx: BlockContext, arm: BlockArm) -> bool:
    return (ctx.block_path("extend", arm.name, "model", "config.json")).is_file() or (
        ctx.block_path("eval", f"{arm.name}.json").is_file()
    )


def _init(ctx: BlockContext, shape: Shape, out: Path, seed: int) -> None:
    p = ctx.profile
    write_init(out, ctx.carried / "tokenizer", shape, p.short_len, p.rope_theta, seed)


def _pretrain(ctx: BlockContext, init_dir: Path, out: Path, steps: int, seed: int) -> None:
    """Uniform loss at the short context, on every device; checkpoints CHECKPOINTS_PER_RUN times
    and resumes from the last, so a run that a call's time limit cut off goes on in the next
    call on a machine still warm."""
    if (out / "model" / "config.json").is_file():
        return
    p = ctx.profile
    training = replace(p.pretrain, steps=steps)
    data = ctx.path("shards-short")
    argv = trainer_argv(ctx, ctx.world, init_dir, data, out, training, p.short_len, seed)
    argv += flags(
        weighting="uniform", save_every=max(1, steps // CHECKPOINTS_PER_RUN), resume="auto"
    )
    ctx.runner.run(Job(f"pretrain-{out.parent.name}", argv, "pretrain"))
    drop_checkpoints(out)


def _extend_argv(
    ctx: BlockContext,
    model: Path,
    out: Path,
    t: Training,
    seed: int,
    extra: list[str],
    data: Path | None = None,
) -> list[str]:
    p = ctx.profile
    data = data or ctx.path("shards-long")
    argv = trainer_argv(ctx, 1, model, data, out, t, p.long_len, seed)
    return argv + flags(rope_theta=p.long_rope_theta) + extra


def _extend(ctx, model: Path, out: Path, t: Training, seed: int, extra: list[str]) -> None:
    if (out / "model" / "config.json").is_file():
        return
    argv = _extend_argv(ctx, model, out, t, seed, extra)
    ctx.runner.run(Job(f"extend-{out.parent.name}-{out.name}", argv, "extend"))
    drop_checkpoints(out)


def _bf16_copy(source: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    shutil.rmtree(out, ignore_errors=True)
    AutoModelForCausalLM.from_pretrained(
        source, dtype=torch.bfloat16, local_files_only=True
    ).save_pretrained(out)
    AutoTokenizer.from_pretrained(source, local_files_only=True).save_pretrained(out)


def _parameters(model_dir: Path) -> int:
    from safetensors import safe_open

    with safe_open(model_dir / "model.safetensors", "pt") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
