"""The trained model's export: its own weights and config, the source's tokenizer, nothing else."""

import shutil
import stat

import pytest
import torch

from tokenweight.bundled import default_model
from tokenweight.trainer import checkpoint
from tokenweight.trainer.model import HiddenStates, load_model
from tokenweight.trainer.parallel import init_distributed, parallelize


@pytest.fixture()
def one_rank():
    d = init_distributed("cpu")
    yield d
    torch.distributed.destroy_process_group()


def test_export_of_a_model_trained_from_the_bundled_one_drops_its_card(tmp_path, one_rank):
    """The bundled model's card, metadata and snippet describe its weights, not new ones."""
    source, _ = default_model()
    lm = load_model(str(source), 512, None)
    model = parallelize(HiddenStates(lm), "ddp", one_rank)
    out = tmp_path / "model"
    checkpoint.export_model(model, lm, source, out, one_rank)
    names = {f.name for f in out.iterdir()}
    assert {"README.md", "tokenweight_model.json", "heldout_snippet.py"}.isdisjoint(names)
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    for file in out.iterdir():  # readable by whoever may read the directory (umask 022 here)
        assert stat.S_IMODE(file.stat().st_mode) & 0o044 == 0o044, file.name


def test_copy_tokenizer_files_takes_only_tokenizer_files(tmp_path):
    source, out = tmp_path / "src", tmp_path / "out"
    source.mkdir(), out.mkdir()
    for name in ("tokenizer.json", "merges.txt", "README.md", "notes.py", "model.safetensors"):
        (source / name).write_text(name)
    checkpoint.copy_tokenizer_files(source, out)
    assert sorted(f.name for f in out.iterdir()) == ["merges.txt", "tokenizer.json"]
