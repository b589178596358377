"""Moving a run between device calls: `export` packs what must come back, `unpack` puts it
in place here.

A device call returns at most 8 files of 16 MiB (64 MiB together) from $OUT, and a cold
machine keeps nothing from the call before. So `export` writes one tar, split into parts of
at most PART_BYTES, holding
- `work/`: the run's small files (eval JSONs, metrics, logs, the corpus manifest, the
  tokenizer, the command and stage records), the bundle when there is one, and, when asked,
  trained models in bf16 (the pretrained model and the judge, which the next call carries
  back in `--work`);
- `repo/`: the report's files that live in the repository (docs/RESULTS.md,
  docs/results/*.png, bench/results/quality_*.json).
`python -m bench.quality.pipeline unpack --source FILES_AT` extracts `work/` into --work and `repo/`
into the checkout.
"""

import io
import shutil
import tarfile
import tempfile
from pathlib import Path

from .jobs import PipelineError

PART_BYTES = 15 * 2**20
MAX_PARTS = 8
PREFIX = "export.tar."
SMALL_SUFFIXES = (".json", ".jsonl", ".log", ".txt")
SKIP_PARTS = (
    "checkpoints",
    "shards-short",
    "shards-long",
    "init",
    "scorer",
    "carried",
)  # big, or rebuilt
EXPORTABLE_MODELS = {"pretrain": ("pretrain", "model"), "judge": ("extend", "judge", "model")}


def first_run_export(ctx, repo: Path, dest: Path, models: list[str]) -> list[Path]:
    """The first replication's export: its results JSON, RESULTS.md and plots in the checkout."""
    chosen = {
        Path(*EXPORTABLE_MODELS[m]).as_posix(): ctx.path(*EXPORTABLE_MODELS[m]) for m in models
    }
    return export(ctx.work, [ctx.results, ctx.doc, ctx.plots], repo, dest, chosen)


def export(
    work: Path, repo_paths: list[Path], repo: Path, dest: Path, models: dict[str, Path]
) -> list[Path]:
    """`work`'s small files, `models` (name in the tar -> checkpoint, in bf16) and the
    `repo_paths` (files or folders inside the checkout) as export.tar.NN parts in `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in sorted(work.rglob("*")):
            rel = path.relative_to(work)
            if path.is_file() and _small(rel):
                tar.add(path, f"work/{rel.as_posix()}")
        for name, source in models.items():
            if (source / "config.json").is_file():
                with tempfile.TemporaryDirectory() as tmp:
                    _bf16_copy(source, Path(tmp))
                    tar.add(tmp, f"work/{name}")
        for path in repo_paths:
            if path.exists() and path.resolve().is_relative_to(repo):
                tar.add(path, f"repo/{path.resolve().relative_to(repo).as_posix()}")
    data = buffer.getvalue()
    parts = [data[i : i + PART_BYTES] for i in range(0, len(data), PART_BYTES)]
    if len(parts) > MAX_PARTS:
        raise PipelineError(
            f"the export is {len(data) / 2**20:.0f} MiB; a device call returns at most "
            f"{MAX_PARTS * PART_BYTES / 2**20:.0f} MiB. Export fewer models"
        )
    written = [dest / f"{PREFIX}{i:02d}" for i in range(len(parts))]
    for path, part in zip(written, parts):
        path.with_name(path.name + ".tmp").write_bytes(part)
    # Swapped in only once all are written, so a kill mid-export leaves the previous set whole.
    for old in dest.glob(f"{PREFIX}[0-9][0-9]"):
        old.unlink()
    for path in written:
        path.with_name(path.name + ".tmp").replace(path)
    print(f"export: {len(data) / 2**20:.1f} MiB in {len(parts)} part(s) in {dest}", flush=True)
    return written


def unpack(source: Path, work: Path, repo: Path) -> None:
    parts = sorted(source.glob(f"{PREFIX}[0-9][0-9]"))
    if not parts:
        raise PipelineError(f"no {PREFIX}NN files in {source}")
    count = 0
    with tarfile.open(fileobj=io.BytesIO(b"".join(p.read_bytes() for p in parts)), mode="r") as tar:
        for member in tar.getmembers():
            root, _, rel = member.name.partition("/")
            if (
                root not in ("work", "repo")
                or not rel
                or Path(rel).is_absolute()
                or ".." in Path(rel).parts
            ):
                raise PipelineError(f"unexpected entry {member.name!r} in the export")
            target = (work if root == "work" else repo) / rel
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
            elif member.isfile():
                target.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as f, target.open("wb") as out:
                    shutil.copyfileobj(f, out)
            count += member.isfile()
    print(f"unpack: {count} files from {len(parts)} part(s) into {work} (work/) and {repo} (repo/)")


def _small(rel: Path) -> bool:
    top = rel.parts[0]
    if top in ("bundle", "tokenizer"):  # the model to ship (with its card), and the tokenizer
        return True
    if top == "corpus":
        return rel.name == "manifest.json"
    if any(part in SKIP_PARTS for part in rel.parts) or "model" in rel.parts:
        return False
    return rel.suffix in SMALL_SUFFIXES


def _bf16_copy(source: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(
        source, dtype=torch.bfloat16, local_files_only=True
    ).save_pretrained(out)
    AutoTokenizer.from_pretrained(source, local_files_only=True).save_pretrained(out)
