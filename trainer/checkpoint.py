"""Checkpoints for exact resume, and the final Hugging Face export.

`OUT/checkpoints/step_N/` holds:
- model and optimizer state, written with torch.distributed.checkpoint (DCP): every rank
  writes its own shards, and `get_state_dict`/`set_state_dict` give the same layout for DDP
  and FSDP;
- `trainer_rank{R}.pt` per rank: step, LR scheduler, data position, RNG states (each rank's
  own: the weighting tie-break generator and torch's RNGs);
- `meta.json`, written last by rank 0: a directory without it is an interrupted save and is
  never resumed from. Saves go to `step_N.tmp` and are renamed into place.
"""

import json
import os
import re
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)

from .parallel import Dist

CHECKPOINTS = "checkpoints"
META = "meta.json"
_STEP_DIR = re.compile(r"step_(\d+)")


def step_dir(out: str | Path, step: int) -> Path:
    return Path(out) / CHECKPOINTS / f"step_{step}"


def latest(out: str | Path) -> Path | None:
    """The completed checkpoint with the highest step under OUT/checkpoints, if any."""
    root = Path(out) / CHECKPOINTS
    found = []
    if root.is_dir():
        for path in root.iterdir():
            match = _STEP_DIR.fullmatch(path.name)
            if match and (path / META).is_file():
                found.append((int(match.group(1)), path))
    return max(found)[1] if found else None


def resolve_resume(resume: str | None, out: str | Path) -> Path | None:
    """`--resume auto` is the latest checkpoint (or a fresh start when there is none)."""
    if resume is None:
        return None
    if resume == "auto":
        return latest(out)
    path = Path(resume)
    if not (path / META).is_file():
        raise FileNotFoundError(
            f"{path} is not a completed checkpoint (no {META}); pass OUT/checkpoints/step_N or `auto`"
        )
    return path


def rng_state(device: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def save(path: Path, model, optimizer, trainer_state: dict, d: Dist, meta: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    if d.is_main and tmp.exists():
        shutil.rmtree(tmp)
    dist.barrier()
    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(tmp))
    torch.save(trainer_state, tmp / f"trainer_rank{d.rank}.pt")
    dist.barrier()
    if d.is_main:
        (tmp / META).write_text(json.dumps({**meta, "world_size": d.world_size}, indent=1))
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    dist.barrier()


def load(path: Path, model, optimizer, d: Dist) -> dict:
    """Restore model and optimizer in place; returns this rank's trainer state."""
    meta = json.loads((path / META).read_text())
    if meta["world_size"] != d.world_size:
        raise ValueError(
            f"{path} was saved by {meta['world_size']} ranks but this run has {d.world_size}; "
            "resume with the same --nproc-per-node"
        )
    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optim": optim_state}
    dcp.load(state, checkpoint_id=str(path))
    set_state_dict(
        model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"]
    )
    return torch.load(path / f"trainer_rank{d.rank}.pt", weights_only=True)


def export_model(model, lm, source_dir: str | Path, out_dir: Path, d: Dist) -> None:
    """Save the trained weights as a Hugging Face checkpoint (with the extended config).

    The tokenizer files of the source checkpoint are copied beside it, so the export can be
    served or trained further as it is. Nothing else is: a model card or metadata of the
    source describe other weights.
    """
    full = get_model_state_dict(
        model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    if d.is_main:
        state = {name.removeprefix("lm."): tensor for name, tensor in full.items()}
        lm.save_pretrained(out_dir, state_dict=state)
        copy_tokenizer_files(Path(source_dir), out_dir)
        _readable_as_umask_allows(out_dir)
    dist.barrier()


# The files a Hugging Face tokenizer is saved as (tokenizers' fast format, sentencepiece,
# BPE vocab/merges, WordPiece vocab, chat templates).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "spiece.model",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "chat_template.jinja",
    "chat_template.json",
)


def copy_tokenizer_files(source_dir: Path, out_dir: Path) -> None:
    for name in TOKENIZER_FILES:
        if (source_dir / name).is_file():
            shutil.copy2(source_dir / name, out_dir / name)


def _readable_as_umask_allows(out_dir: Path) -> None:
    """Weights saved through a temporary file come out 0600; give them the mode any other file
    written by this process gets, so whoever may read the directory can load the model."""
    umask = os.umask(0)
    os.umask(umask)
    for file in out_dir.iterdir():
        if file.is_file():
            file.chmod(0o666 & ~umask)
