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

Two ways to split:
- `--split-by file` (default): by the file's content hash and `--seed` alone; a file's side
  never changes when other files are added or removed.
- `--split-by package`: all files of one top-level package (the first path part below a root,
  `json/`, `numpy/`, or a lone module `os.py`) on one side, so a held-out file never has a
  sibling module in training. Packages are taken in a seeded order and go to the held-out
  side, then to the extension side (`--long-fraction`), until each has its share of the bytes;
  the rest train. Of an extension package only the files of at least `--long-min-bytes` are
  kept: the long pool (`long.jsonl`), kept out of pretraining and used only for extension.

`--near-dup-threshold` then removes near-duplicates across the sides (MinHash + LSH, see
near_dups.py): a held-out or long-pool file too similar to a training file (or a held-out file
to a long-pool one) is dropped, so the evals never read what training saw in another copy.
No file is on two sides.
"""

import contextlib
import hashlib
import json
import os
import platform
import sys
import sysconfig
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tokenweight.flags import add_flags, flag, values_of

FORMAT = "tokenweight-corpus-1"
TRAIN_FILE, HELDOUT_FILE, LONG_FILE = "train.jsonl", "heldout.jsonl", "long.jsonl"
MANIFEST_FILE = "manifest.json"
SPLIT_FILES = {"train": TRAIN_FILE, "heldout": HELDOUT_FILE, "long": LONG_FILE}
SPLIT_RANK = {"train": 0, "long": 1, "heldout": 2}  # near-dups: the lower rank keeps its file
PARALLEL_FROM = 2000  # files: below this, MinHash signatures in this process
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
    out: Path = flag(help="output directory (created)", type=Path)
    roots: tuple[Path, ...] | None = flag(
        None,
        "directories to collect .py files from (default: the stdlib and site-packages)",
        nargs="+",
        metavar="DIR",
        type=Path,
    )
    heldout_fraction: float = flag(0.05, "share of files held out")
    seed: int = flag(0, "decides the split and the --max-bytes order")
    min_bytes: int = flag(256, "skip files smaller than this")
    max_file_bytes: int = flag(1_000_000, "skip files larger than this, usually generated tables")
    # files are taken in a seeded order until the cap
    max_bytes: int | None = flag(None, "stop adding files once the corpus holds this many bytes")
    split_by: str = flag(
        "file", "keep each file or each top-level package on one side", choices=("file", "package")
    )
    long_fraction: float = flag(
        0.0, "package split: share of bytes in packages whose long files form long.jsonl"
    )
    long_min_bytes: int = flag(
        16384, "smallest file of the long pool, in bytes (code runs about 4 bytes a token)"
    )
    near_dup_threshold: float | None = flag(
        None, "drop held-out/long files whose MinHash Jaccard with another side reaches this"
    )

    def __post_init__(self):
        # no roots: this interpreter's; any sequence of paths is kept as a tuple of Paths
        roots = default_roots() if self.roots is None else tuple(Path(r) for r in self.roots)
        object.__setattr__(self, "roots", roots)
        object.__setattr__(self, "out", Path(self.out))


def add_arguments(parser) -> None:
    add_flags(parser, CorpusConfig)


def run(args) -> int:
    config = CorpusConfig(**values_of(args, CorpusConfig))
    try:
        manifest = build_corpus(config)
    except CorpusError as exc:
        print(f"tokenweight corpus: error: {exc}", file=sys.stderr)
        return 1
    c = manifest["counts"]
    print(
        f"found {c['found_files']} .py files ({c['found_bytes']} bytes); wrote "
        f"{c['train_files']} train files ({c['train_bytes']} bytes), {c['heldout_files']} "
        f"held-out ({c['heldout_bytes']} bytes) and {c['long_files']} long ({c['long_bytes']} "
        f"bytes) to {config.out}; skipped {c['duplicates']} duplicates, "
        f"{c['near_duplicates']} near-duplicates and {c['skipped']} other files; "
        f"list_hash {manifest['list_hash']}"
    )
    return 0


def build_corpus(config: CorpusConfig) -> dict:
    """Collect, deduplicate, split and write the corpus; returns the manifest written."""
    _check(config)
    candidates, skipped, found = _collect(config)
    kept, duplicates = _dedup(candidates)
    kept.sort(key=lambda f: _unit(config.seed, "select", f.sha256))
    if config.max_bytes is not None:
        kept = _take_bytes(kept, config.max_bytes)
    kept.sort(key=lambda f: f.path)
    if config.split_by == "package":
        _split_by_package(kept, config)
        short_extension = [f for f in kept if f.split == "long" and f.size < config.long_min_bytes]
        kept = [f for f in kept if not (f.split == "long" and f.size < config.long_min_bytes)]
    else:
        short_extension = []
        for f in kept:
            f.split = (
                "heldout"
                if _unit(config.seed, "split", f.sha256) < config.heldout_fraction
                else "train"
            )
    near = _near_duplicates(kept, config) if config.near_dup_threshold else set()
    kept = [f for i, f in enumerate(kept) if i not in near]
    config.out.mkdir(parents=True, exist_ok=True)
    outputs = {
        split: _write_jsonl(config.out / name, [f for f in kept if f.split == split])
        for split, name in SPLIT_FILES.items()
    }
    files = [
        {
            "path": f.path,
            "package": f.package,
            "sha256": f.sha256,
            "bytes": f.size,
            "split": f.split,
        }
        for f in kept
    ]
    manifest = {
        "format": FORMAT,
        "list_hash": list_hash(files),
        "python": sys.version,
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "roots": [str(r) for r in config.roots],
        "settings": {k: v for k, v in asdict(config).items() if k not in ("out", "roots")},
        "counts": {
            # The measured volume: every .py file below the roots, outside pruned directories.
            "found_files": found[0],
            "found_bytes": found[1],
            "skipped": skipped,
            "duplicates": duplicates,
            "near_duplicates": len(near),
            "short_extension_files": len(short_extension),
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
    package: str  # top-level package (or lone module) below the root
    text: str
    sha256: str
    size: int
    split: str = ""


def _check(config: CorpusConfig) -> None:
    if not 0 <= config.heldout_fraction < 1:
        raise CorpusError(f"--heldout-fraction must be in [0, 1), got {config.heldout_fraction}")
    if not 0 <= config.long_fraction < 1 - config.heldout_fraction:
        raise CorpusError(
            f"--long-fraction must be in [0, 1 - heldout fraction), got {config.long_fraction}"
        )
    if config.long_fraction and config.split_by != "package":
        raise CorpusError("--long-fraction needs --split-by package (the long pool is packages)")
    if config.near_dup_threshold is not None and not 0 < config.near_dup_threshold <= 1:
        raise CorpusError(
            f"--near-dup-threshold must be in (0, 1], got {config.near_dup_threshold}"
        )
    if config.max_bytes is not None and config.max_bytes < 1:
        raise CorpusError(f"--max-bytes must be positive, got {config.max_bytes}")
    missing = [str(r) for r in config.roots if not Path(r).is_dir()]
    if missing:
        raise CorpusError(f"root(s) {', '.join(missing)} are not directories")
    if config.out.exists() and any(
        p.name not in (*SPLIT_FILES.values(), MANIFEST_FILE) and not p.name.startswith(".")
        for p in config.out.iterdir()
    ):
        raise CorpusError(
            f"--out {config.out} holds files that are not a corpus; choose a new directory"
        )


def _collect(config: CorpusConfig) -> tuple[list[_File], int, tuple[int, int]]:
    """Every acceptable .py file below the roots, how many were skipped, and the (files, bytes)
    of every .py file found."""
    files, seen, skipped, found = [], set(), 0, [0, 0]
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
                found[0] += 1
                with contextlib.suppress(OSError):
                    found[1] += path.stat().st_size
                text = _read(path, name, config)
                if text is None:
                    skipped += 1
                    continue
                data = text.encode()
                rel = path.relative_to(root)
                files.append(
                    _File(
                        f"{label}/{rel.as_posix()}",
                        rel.parts[0].removesuffix(".py"),
                        text,
                        hashlib.sha256(data).hexdigest(),
                        len(data),
                    )
                )
    return files, skipped, (found[0], found[1])


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


def _split_by_package(files: list[_File], config: CorpusConfig) -> None:
    """Sides by package, in a seeded order of package names, each side up to its byte share;
    an extension package is marked `long` (its short files are dropped by the caller). A
    package larger than a quarter of a side's share stays in training, so that each side is
    spread over several packages instead of one large one."""
    sizes: dict[str, int] = {}
    for f in files:
        sizes[f.package] = sizes.get(f.package, 0) + f.size
    total = sum(sizes.values())
    quota = {"heldout": config.heldout_fraction * total, "long": config.long_fraction * total}
    used = {"heldout": 0, "long": 0}
    side = {}
    for package in sorted(sizes, key=lambda p: (_unit(config.seed, "split", p), p)):
        side[package] = "train"
        for name in ("heldout", "long"):
            fits = sizes[package] <= quota[name] / 4 and used[name] + sizes[package] <= quota[name]
            if fits:
                side[package], used[name] = name, used[name] + sizes[package]
                break
    for f in files:
        f.split = side[f.package]


def _near_duplicates(files: list[_File], config: CorpusConfig) -> set[int]:
    """Indices of files with a near-duplicate on a side of lower SPLIT_RANK."""
    from .near_dups import MinHashConfig, shadowed, signatures_of

    mh = MinHashConfig(threshold=config.near_dup_threshold, seed=config.seed)
    if not files:
        return set()
    texts = [f.text for f in files]
    workers = min(os.cpu_count() or 1, 16)
    if len(texts) < PARALLEL_FROM or workers < 2:
        signatures = signatures_of(texts, mh)
    else:  # the whole machine's Python: one process per core, in chunks, order kept
        from concurrent.futures import ProcessPoolExecutor
        from functools import partial

        chunks = [texts[i : i + 256] for i in range(0, len(texts), 256)]
        with ProcessPoolExecutor(workers) as pool:
            signatures = np.concatenate(list(pool.map(partial(signatures_of, config=mh), chunks)))
    return shadowed(signatures, [SPLIT_RANK[f.split] for f in files], mh)


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
