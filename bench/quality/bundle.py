"""The `bundle` stage: the default model to ship, from one extension run.

bf16 weights and the tokenizer, a held-out snippet, `tokenweight_model.json` (window, context,
provenance, the measured property) and a model card from MODEL_CARD.md. Refuses to write a
bundle over 25 MB. Shipping it is a copy: `cp -r WORK/bundle tokenweight/models/default`.
"""

import json
import shutil
from pathlib import Path

import numpy as np

from tokenweight.bundled import INFO_FILE, MAX_BYTES, SNIPPET_FILE, bundle_bytes
from tokenweight.trainer.evals.repeat_contrast import repeat_contrast
from tokenweight.trainer.evals.identifiers import long_range_repeats
from tokenweight.trainer.prepare import load_tokenizer

from .jobs import PipelineError
from .profiles import ARMS

CARD_TEMPLATE = Path(__file__).with_name("MODEL_CARD.md")


def write_bundle(ctx) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    p = ctx.profile
    name = f"{p.bundle_arm}-s{ctx.seeds[0]}"
    src = ctx.path("extend", name, "model")
    if not (src / "config.json").is_file():
        raise PipelineError(f"{src} not found; run the `extend` stage first")
    out = ctx.bundle
    shutil.rmtree(out, ignore_errors=True)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16, local_files_only=True)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(src, local_files_only=True).save_pretrained(out)
    snippet, source = pick_snippet(
        ctx.path("corpus", "heldout.jsonl"), out, p.short_len, p.long_len
    )
    (out / SNIPPET_FILE).write_text(snippet)
    prop = repeat_contrast(out, snippet, p.short_len)
    manifest = json.loads(ctx.path("corpus", "manifest.json").read_text())
    info = {
        "window": p.short_len,
        "stride": (3 * p.short_len) // 4,
        "seq_len": p.long_len,
        "profile": p.name,
        "run": name,
        "snippet_source": source,
        "corpus_list_hash": manifest["list_hash"],
        "property": prop,
    }
    (out / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    (out / "README.md").write_text(_card(ctx, name, model, prop, manifest, out))
    size = bundle_bytes(out)
    if size > MAX_BYTES:
        raise PipelineError(
            f"the bundle in {out} is {size / 1e6:.1f} MB, over {MAX_BYTES / 1e6:.0f} MB; shrink the profile's shape"
        )
    if prop["median_repeat"] is None or prop["median_repeat"] <= prop["median_other"]:
        print(f"bundle: WARNING the property does not hold on the snippet: {prop}", flush=True)
    print(f"bundle: {out} ({size / 1e6:.1f} MB), property {prop}", flush=True)


def pick_snippet(heldout: Path, tokenizer_dir: Path, window: int, seq_len: int) -> tuple[str, str]:
    """(text, corpus path) of the held-out file, cut to `seq_len` tokens at a line end, with
    the most identifier repeats first seen >= `window` tokens earlier; chosen without looking
    at any scores."""
    backend = load_tokenizer(tokenizer_dir).backend
    best, best_count, best_path = None, -1, None
    for line in heldout.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        text = record["text"]
        enc = backend.encode(text, add_special_tokens=True)
        if len(enc.ids) < 2 * window:
            continue
        if len(enc.ids) > seq_len:
            cut = enc.offsets[seq_len - 1][0]
            text = text[: text.rfind("\n", 0, cut) + 1]
            enc = backend.encode(text, add_special_tokens=True)
        count = int(np.sum(long_range_repeats(text, enc.offsets, window)))
        if count > best_count:
            best, best_count, best_path = text, count, record["path"]
    if best is None:
        raise PipelineError(
            f"no held-out file in {heldout} has {2 * window} tokens for the snippet"
        )
    return best, best_path


def _card(ctx, name: str, model, prop: dict, manifest: dict, out: Path) -> str:
    from . import report

    p = ctx.profile
    arm = next(a for a in ARMS if a.name == p.bundle_arm)
    evals = report.load_evals(ctx.path("eval"), ctx.seeds)
    mine = {k: v for k, v in evals.items() if k in ("uniform", arm.name)}
    metrics = report.metrics_for(next(iter(mine.values()))[0])
    rows = report.table({k: report.summarize_arm(v, metrics) for k, v in mine.items()}, metrics)
    s = p.shape
    return CARD_TEMPLATE.read_text().format(
        name=name,
        profile=p.name,
        layers=s.num_hidden_layers,
        hidden=s.hidden_size,
        heads=s.num_attention_heads,
        kv_heads=s.num_key_value_heads,
        intermediate=s.intermediate_size,
        params_m=sum(t.numel() for t in model.parameters()) / 1e6,
        size_mb=bundle_bytes(out) / 1e6,
        vocab=model.config.vocab_size,
        short_len=p.short_len,
        long_len=p.long_len,
        rope_theta=p.rope_theta,
        long_rope_theta=p.long_rope_theta,
        stride=(3 * p.short_len) // 4,
        arm=arm.name,
        seed=ctx.seeds[0],
        weighting=" ".join(arm.trainer_flags()),
        list_hash=manifest["list_hash"],
        train_files=manifest["counts"]["train_files"],
        pretrain_tokens=p.pretrain.steps * p.pretrain.batch * p.short_len,
        extend_tokens=p.extend.steps * p.extend.batch * p.long_len,
        eval_table="\n".join(rows),
        median_repeat=prop["median_repeat"] or float("nan"),
        repeat_tokens=prop["repeat_tokens"],
        median_other=prop["median_other"],
        commands=training_commands(ctx, name),
    )


def training_commands(ctx, name: str) -> str:
    """The pretraining and extension commands of run `name`, from the pipeline's command log,
    with the working directory written as WORK and the interpreter as `python`."""
    from . import report

    wanted = ("pretrain", f"extend-{name}")
    logged = {c["name"]: c["argv"] for c in report.read_jsonl(ctx.path("commands.jsonl"))}
    missing = [w for w in wanted if w not in logged]
    if missing:
        raise PipelineError(f"{', '.join(missing)} not in {ctx.path('commands.jsonl')}")
    lines = []
    for job in wanted:
        argv = ["python", *logged[job][1:]]
        lines.append(" ".join(argv).replace(str(ctx.work), "WORK"))
    return "\n".join(lines)
