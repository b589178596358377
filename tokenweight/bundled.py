"""The bundled default model: where it lives, and the property it is shipped for.

`bench/quality/pipeline.py bundle` writes it (a small code model trained at the long context,
at most 25 MB with its tokenizer) together with a held-out snippet and
`tokenweight_model.json` (its window and training context). The property: on code it never
trained on, the model's own contrast scores are higher on tokens that repeat an identifier
first seen at least a window earlier than on all other tokens (median against median);
`tokenweight.trainer.evals.repeat_contrast` measures it.
"""

import json
from pathlib import Path

MODEL_DIR = Path(__file__).parent / "models" / "default"
SNIPPET_FILE = "heldout_snippet.py"
INFO_FILE = "tokenweight_model.json"
MAX_BYTES = 25 * 1000 * 1000


def default_model() -> tuple[Path, dict]:
    """The bundled checkpoint directory and its info (`window`, `stride`, `seq_len`): what
    `tokenweight serve` and `tokenweight score` use when no model is given."""
    if not (MODEL_DIR / "config.json").is_file():
        raise FileNotFoundError(
            f"the bundled default model is missing from {MODEL_DIR} (an install without package "
            "data?); pass --model PATH"
        )
    return MODEL_DIR, read_info(MODEL_DIR)


def model_or_default(model, window: int | None, stride: int | None) -> tuple:
    """(model, window, stride) as given, or the bundled model with its own window and stride
    when no model is given. A window given without a stride keeps the usual stride 3k/4."""
    if model:
        return model, window, stride
    path, info = default_model()
    if window is None:
        window, stride = info["window"], info["stride"] if stride is None else stride
    return path, window, stride


def read_info(model_dir: Path) -> dict:
    return json.loads((Path(model_dir) / INFO_FILE).read_text())


def bundle_bytes(model_dir: Path) -> int:
    return sum(p.stat().st_size for p in Path(model_dir).rglob("*") if p.is_file())

