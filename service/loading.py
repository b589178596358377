"""Loading local Hugging Face causal-LM checkpoints and their tokenizers, safely.

Never `trust_remote_code`, never a hub download, safetensors weights only unless the
operator explicitly allows pickle checkpoints (a pickle file can run arbitrary code).
"""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


class ModelLoadError(ValueError):
    pass


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str | None) -> torch.device:
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} requested but CUDA is not available here")
    return dev


def resolve_dtype(dtype: str | None, device: torch.device) -> torch.dtype:
    """fp32 on CPU, bf16 on CUDA unless told otherwise."""
    if dtype in (None, "", "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}")
    return DTYPES[dtype]


@dataclass(frozen=True)
class LoadedModel:
    model: nn.Module
    path: str
    digest: str  # sha256 over config + weight files: identifies the weights


def weights_digest(path: Path) -> str:
    """sha256 over config.json and every weight file's bytes, in name order."""
    digest = hashlib.sha256()
    files = [path / "config.json"] + sorted(
        p for p in path.iterdir() if p.suffix in (".safetensors", ".bin")
    )
    for file in files:
        digest.update(file.name.encode())
        with open(file, "rb") as f:
            while block := f.read(1 << 24):
                digest.update(block)
    return digest.hexdigest()


def check_checkpoint_dir(
    path: Path, allow_pickle: bool = False, pickle_flag: str | None = "--allow-pickle"
) -> bool:
    """Refuse what is not a local HF checkpoint with safe weights; True if it has safetensors.

    `pickle_flag`: the option that allows pickle weights where the caller has one."""
    if not (path / "config.json").is_file():
        raise ModelLoadError(
            f"{path} is not a Hugging Face checkpoint directory (no config.json); pass a local "
            "directory saved with save_pretrained"
        )
    has_safetensors = any(path.glob("*.safetensors"))
    if not has_safetensors and not allow_pickle:
        pickled = [name for name in PICKLE_WEIGHTS if (path / name).exists()]
        what = f"only pickle weights ({', '.join(pickled)})" if pickled else "no weight files"
        hint = f" or, if you trust its source, pass {pickle_flag}" if pickle_flag else ""
        raise ModelLoadError(
            f"{path} has {what}; tokenweight loads safetensors weights. Convert the checkpoint "
            f"(model.save_pretrained(dir, safe_serialization=True)){hint}"
        )
    return has_safetensors


def load_causal_lm(
    path: str | Path,
    device: torch.device,
    dtype: torch.dtype,
    allow_pickle: bool = False,
    attn_implementation: str = "sdpa",
) -> LoadedModel:
    from transformers import AutoModelForCausalLM

    path = Path(path)
    has_safetensors = check_checkpoint_dir(path, allow_pickle)
    model_type = json.loads((path / "config.json").read_text()).get("model_type", "?")
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path,
            dtype=dtype,
            trust_remote_code=False,
            local_files_only=True,
            use_safetensors=has_safetensors,
            attn_implementation=attn_implementation,
        )
    except (ValueError, OSError, KeyError) as exc:
        raise ModelLoadError(f"cannot load {path} (model_type {model_type!r}): {exc}") from exc
    model.to(device).eval().requires_grad_(False)
    return LoadedModel(model, str(path), weights_digest(path))


def has_tokenizer(path) -> bool:
    return any((Path(path) / name).exists() for name in TOKENIZER_FILES)


def load_hf_tokenizer(path):
    """The Hugging Face tokenizer of a checkpoint directory (AutoTokenizer, local files only):
    the one loader behind text input over HTTP, `tokenweight score` and `prepare`."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
