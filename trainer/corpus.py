"""`tokenweight corpus`: a Python-source corpus built offline from this machine's files.

Source code is long-range by nature (names defined far above their use), and every machine
that trains has plenty of it: the interpreter's standard library and the installed packages.
The corpus is rebuilt from files, not downloaded, so `manifest.json` records exactly which
files went in (path, sha256, split) and one hash over that list: two runs with the same
`list_hash` trained on the same text.

What is left out, and why:
- directories named like test suites (`test`, `tests`, ...): they repeat the code under test
  and hold deliberately malformed files (bad syntax, odd encodings);
- vendored copies (`_vendor`, `vendor`, ...) and a `site-packages` nested below a root (the
  base interpreter's packages seen through its stdlib): copies of code found elsewhere;
- files that are not UTF-8, nearly empty (`--min-bytes`) or huge (`--max-file-bytes`,
  generated tables);
- exact duplicates (same content after normalising line endings): the first path in sorted
  order is kept.

The split is by file and depends only on the file's content and `--seed`: a file's side never
changes when other files are added or removed, and no file is on both sides.
"""

import hashlib
import json
import os
import platform
import sys
import sysconfig
from dataclasses import asdict, dataclass, field
from pathlib import Path

FORMAT = "tokenweight-corpus-1"
TRAIN_FILE, HELDOUT_FILE, MANIFEST_FILE = "train.jsonl", "heldout.jsonl", "manifest.json"
SKIP_DIRS = frozenset(
    {
        "__pycache__",
        "test",
        "tests",
        "testing",
        "idle_test",
        "_vendor",
        "vendor",
        "vendored",
        "site-packages",
        "dist-packages",
    }
)
SKIP_FILE_PREFIXES, SKIP_FILE_SUFFIXES = ("test_",), ("_test.py",)
SKIP_FILES = frozenset({"conftest.py"})


class CorpusError(ValueError):
    """Bad settings or roots for `tokenweight corpus`; the message names the fix."""


def default_roots() -> tuple[Path, ...]:
    """The standard library and the site-packages of the running interpreter."""
    paths = sysconfig.get_paths()
    roots = []
    for key in ("stdlib", "purelib", "platlib"):
        root = Path(paths[key]).resolve()
        if root.is_dir() and root not in roots:
            roots.append(root)
    return tuple(roots)


@dataclass(frozen=True)
class CorpusConfig:
    out: Path
    roots: tuple[Path, ...] = field(default_factory=default_roots)
    heldout_fraction: float = 0.05
    seed: int = 0
    min_bytes: int = 256
    max_file_bytes: int = 1_000_000
    max_bytes: int | None = None  # cap on the corpus, files taken in a seeded order


def add_arguments(parser) -> None:
    parser.add_argument("--out", required=True, help="output directory (created)")
    parser.add_argument(
        "--roots",
        nargs="+",
        metavar="DIR",
        help="directories to collect .py files from (default: the stdlib and site-packages)",
    )
    parser.add_argument(
        "--heldout-fraction",
        type=float,
        default=0.05,
        help="share of files held out (default 0.05)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="decides the split and the --max-bytes order"
    )
    parser.add_argument(
        "--min-bytes", type=int, default=256, help="skip files smaller than this (default 256)"
    )
    parser.add_argument(
        "--max-file-bytes",
        type=int,
        default=1_000_000,
        help="skip files larger than this, usually generated tables (default 1 MB)",
    )
    parser.add_argument(
        "--max-bytes", type=int, help="stop adding files once the corpus holds this many bytes"
    )


def run(args) -> int:
    roots = tuple(Path(r) for r in args.roots) if args.roots else default_roots()
    settings = ("heldout_fraction", "seed", "min_bytes", "max_file_bytes", "max_bytes")
    config = CorpusConfig(Path(args.out), roots, **{name: getattr(args, name) for name in settings})
    try:
        manifest = build_corpus(config)
    except CorpusError as exc:
        print(f"tokenweight corpus: error: {exc}", file=sys.stderr)
        return 1
    c = manifest["counts"]
    print(
        f"wrote {c['train_files']} train files ({c['train_bytes']} bytes) and {c['heldout_files']} "
        f"held-out files ({c['heldout_bytes']} bytes) to {config.out}; skipped {c['duplicates']} "
        f"duplicates and {c['skipped']} other files; list_hash {manifest['list_hash']}"
    )
    return 0


def build_corpus(config: CorpusConfig) -> dict:
    """Collect, deduplicate, split and write the corpus; returns the manifest written."""
    _check(config)
    candidates, skipped = _collect(config)
    kept, duplicates = _dedup(candidates)
    kept.sort(key=lambda f: _unit(config.seed, "select", f.sha256))
    if config.max_bytes is not None:
        kept = _take_bytes(kept, config.max_bytes)
    kept.sort(key=lambda f: f.path)
    for f in kept:
        f.split = (
            "heldout"
            if _unit(config.seed, "split", f.sha256) < config.heldout_fraction
            else "train"
        )
    config.out.mkdir(parents=True, exist_ok=True)
    outputs = {
        split: _write_jsonl(config.out / name, [f for f in kept if f.split == split])
        for split, name in (("train", TRAIN_FILE), ("heldout", HELDOUT_FILE))
    }
    files = [{"path": f.path, "sha256": f.sha256, "bytes": f.size, "split": f.split} for f in kept]
    manifest = {
        "format": FORMAT,
        "list_hash": list_hash(files),
        "python": sys.version,
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "roots": [str(r) for r in config.roots],
        "settings": {k: v for k, v in asdict(config).items() if k not in ("out", "roots")},
        "counts": {
            "skipped": skipped,
            "duplicates": duplicates,
            **{f"{s}_files": sum(f.split == s for f in kept) for s in outputs},
            **{f"{s}_bytes": sum(f.size for f in kept if f.split == s) for s in outputs},
        },
        "outputs": outputs,
        "files": files,
    }
    (config.out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def list_hash(files: list[dict]) -> str:
    """sha256 over the sorted (path, sha256, split) lines: what the corpus is made of."""
    lines = sorted(f"{f['path']}\t{f['sha256']}\t{f['split']}\n" for f in files)
    return hashlib.sha256("".join(lines).encode()).hexdigest()


@dataclass
class _File:
    path: str  # "<root label>/<path below the root>", stable across machines with the same layout
    text: str
    sha256: str
    size: int
    split: str = ""


def _check(config: CorpusConfig) -> None:
    if not 0 <= config.heldout_fraction < 1:
        raise CorpusError(f"--heldout-fraction must be in [0, 1), got {config.heldout_fraction}")
    if config.max_bytes is not None and config.max_bytes < 1:
        raise CorpusError(f"--max-bytes must be positive, got {config.max_bytes}")
    missing = [str(r) for r in config.roots if not Path(r).is_dir()]
    if missing:
        raise CorpusError(f"root(s) {', '.join(missing)} are not directories")
    if config.out.exists() and any(
        p.name not in (TRAIN_FILE, HELDOUT_FILE, MANIFEST_FILE) and not p.name.startswith(".")
        for p in config.out.iterdir()
    ):
        raise CorpusError(
            f"--out {config.out} holds files that are not a corpus; choose a new directory"
        )


def _collect(config: CorpusConfig) -> tuple[list[_File], int]:
    """Every acceptable .py file below the roots, and how many were skipped."""
    files, seen, skipped = [], set(), 0
    labels = _root_labels(config.roots)
    for root, label in zip(config.roots, labels):
        root = Path(root).resolve()
        for dirpath, dirnames, filenames in os.walk(root):
            # Sorted, pruned in place: a deterministic walk that never enters skipped dirs.
            dirnames[:] = sorted(
                d for d in dirnames if d not in SKIP_DIRS and not d.startswith(".")
            )
            for name in sorted(filenames):
                if not name.endswith(".py"):
                    continue
                path = Path(dirpath) / name
                real = path.resolve()
                if real in seen:
                    continue
                seen.add(real)
                text = _read(path, name, config)
                if text is None:
                    skipped += 1
                    continue
                data = text.encode()
                files.append(
                    _File(
                        f"{label}/{path.relative_to(root).as_posix()}",
                        text,
                        hashlib.sha256(data).hexdigest(),
                        len(data),
                    )
                )
    return files, skipped


def _read(path: Path, name: str, config: CorpusConfig) -> str | None:
    if (
        name in SKIP_FILES
        or name.startswith(SKIP_FILE_PREFIXES)
        or name.endswith(SKIP_FILE_SUFFIXES)
    ):
        return None
    try:
        size = path.stat().st_size
        if not config.min_bytes <= size <= config.max_file_bytes:
            return None
        return path.read_bytes().decode("utf-8").replace("\r\n", "\n")
    except (OSError, UnicodeDecodeError):
        return None


def _root_labels(roots) -> list[str]:
    """Short names for the roots (`python3.11`, `site-packages`, ...), made unique."""
    labels = []
    for root in roots:
        base = Path(root).resolve().name or "root"
        label, n = base, 2
        while label in labels:
            label, n = f"{base}-{n}", n + 1
        labels.append(label)
    return labels


def _dedup(files: list[_File]) -> tuple[list[_File], int]:
    by_hash = {}
    for f in sorted(files, key=lambda f: f.path):
        by_hash.setdefault(f.sha256, f)
    return list(by_hash.values()), len(files) - len(by_hash)


def _unit(seed: int, purpose: str, sha256: str) -> float:
    """A number in [0, 1) fixed by the seed, the purpose and the file's content."""
    digest = hashlib.sha256(f"{seed}:{purpose}:{sha256}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _take_bytes(files: list[_File], max_bytes: int) -> list[_File]:
    taken, total = [], 0
    for f in files:
        if total + f.size > max_bytes:
            break
        taken.append(f)
        total += f.size
    return taken


def _write_jsonl(path: Path, files: list[_File]) -> dict:
    digest = hashlib.sha256()
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as out:
        for f in files:
            line = json.dumps({"text": f.text, "path": f.path}, ensure_ascii=False) + "\n"
            digest.update(line.encode())
            out.write(line)
    os.replace(tmp, path)
    return {"file": path.name, "documents": len(files), "sha256": digest.hexdigest()}
