"""`tokenweight corpus`: what is collected and skipped, dedup, a deterministic split by file,
and a manifest whose hash names exactly the files that went in."""

import json

import pytest

from tokenweight.cli import main
from tokenweight.trainer.corpus import CorpusConfig, CorpusError, build_corpus, list_hash


def _code(i: int) -> str:
    return (
        f'"""Module {i}."""\n\n\ndef function_{i}(value):\n    return value * {i}\n'
        + "# pad\n" * 50
    )


@pytest.fixture
def roots(tmp_path):
    a = tmp_path / "root-a" / "pkg"
    b = tmp_path / "root-b" / "lib"
    for d in (a / "tests", a / "_vendor", a / "sub", b):
        d.mkdir(parents=True)
    for i in range(40):
        (a / "sub" / f"m{i:02d}.py").write_text(_code(i))
    (a / "first.py").write_text(_code(100))
    (b / "copy.py").write_text(_code(100).replace("\n", "\r\n"))  # same content, other line ends
    (a / "tests" / "t.py").write_text(_code(200))  # test suite: pruned
    (a / "_vendor" / "v.py").write_text(_code(201))  # vendored copy: pruned
    (a / "test_name.py").write_text(_code(202))  # test file by name
    (a / "small.py").write_text("x = 1\n")  # below --min-bytes
    (a / "latin1.py").write_bytes(_code(203).encode() + b"# caf\xe9\n")  # not UTF-8
    (a / "notes.txt").write_text(_code(204))  # not .py
    return (tmp_path / "root-a", tmp_path / "root-b")


def _build(tmp_path, roots, name="out", **settings):
    return build_corpus(
        CorpusConfig(tmp_path / name, roots, **{"heldout_fraction": 0.3, **settings})
    )


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_collects_dedups_and_skips(tmp_path, roots):
    manifest = _build(tmp_path, roots)
    paths = {f["path"] for f in manifest["files"]}
    assert "root-a/pkg/first.py" in paths and "root-b/lib/copy.py" not in paths  # first path wins
    assert manifest["counts"]["duplicates"] == 1
    assert manifest["counts"]["skipped"] == 3  # test_name.py, small.py, latin1.py
    assert not any("tests/" in p or "_vendor/" in p or p.endswith(".txt") for p in paths)
    assert len(paths) == 41
    train, held = (
        _lines(tmp_path / "out" / "train.jsonl"),
        _lines(tmp_path / "out" / "heldout.jsonl"),
    )
    assert train and held and len(train) + len(held) == 41
    assert {r["path"] for r in train}.isdisjoint({r["path"] for r in held})
    record = next(r for r in train + held if r["path"] == "root-a/pkg/sub/m07.py")
    assert record["text"] == _code(7)
    assert manifest["outputs"]["train"]["documents"] == len(train)


def test_manifest_hash_and_determinism(tmp_path, roots):
    one, two = _build(tmp_path, roots, "one"), _build(tmp_path, roots, "two")
    assert one["list_hash"] == two["list_hash"] == list_hash(one["files"])
    assert one["files"] == two["files"]
    assert (tmp_path / "one" / "train.jsonl").read_bytes() == (
        tmp_path / "two" / "train.jsonl"
    ).read_bytes()
    written = json.loads((tmp_path / "one" / "manifest.json").read_text())
    assert written["list_hash"] == one["list_hash"] and written["python"]
    changed = [dict(f) for f in one["files"]]
    changed[0]["sha256"] = "0" * 64
    assert list_hash(changed) != one["list_hash"]


def test_split_depends_on_each_file_alone(tmp_path, roots):
    full = {f["sha256"]: f["split"] for f in _build(tmp_path, roots, "full")["files"]}
    part = {f["sha256"]: f["split"] for f in _build(tmp_path, roots[:1], "part")["files"]}
    assert all(full[h] == s for h, s in part.items())
    reseeded = {f["sha256"]: f["split"] for f in _build(tmp_path, roots, "seed", seed=1)["files"]}
    assert reseeded != full


def test_max_bytes_caps_the_corpus(tmp_path, roots):
    manifest = _build(tmp_path, roots, max_bytes=5000)
    total = sum(f["bytes"] for f in manifest["files"])
    assert 0 < total <= 5000 and len(manifest["files"]) < 41


def test_command_line(tmp_path, roots, capsys):
    assert main(["corpus", "--out", str(tmp_path / "cli"), "--roots", *map(str, roots)]) == 0
    assert "list_hash" in capsys.readouterr().out
    assert main(["corpus", "--out", str(tmp_path / "x"), "--roots", str(tmp_path / "missing")]) == 1
    assert "not directories" in capsys.readouterr().err
    with pytest.raises(CorpusError, match="heldout-fraction"):
        _build(tmp_path, roots, heldout_fraction=1.5)


def _module(rng, lines: int) -> list[str]:
    words = ["alpha", "beta", "gamma", "delta", "value", "index", "total", "items", "parse"]
    return [
        f"    {rng.choice(words)}_{rng.randrange(1000)} = {rng.choice(words)}({rng.randrange(99)})"
        for _ in range(lines)
    ]


@pytest.fixture
def packages(tmp_path):
    """Thirty packages of a few files each (one of them long), and a shared module that
    every package carries in a slightly edited copy: near-duplicates across any split."""
    import random

    rng = random.Random(0)
    root = tmp_path / "site"
    shared = _module(rng, 120)
    for p in range(30):
        pkg = root / f"pkg{p:02d}"
        pkg.mkdir(parents=True)
        for m in range(3):
            (pkg / f"m{m}.py").write_text("def f():\n" + "\n".join(_module(rng, 30)) + "\n")
        (pkg / "big.py").write_text("def g():\n" + "\n".join(_module(rng, 400)) + "\n")
        edited = list(shared)
        edited[p] = f"    edited_{p} = {p}"  # one line of 120 changed: Jaccard ~0.95
        (pkg / "shared.py").write_text("def h():\n" + "\n".join(edited) + "\n")
    (root / "lone.py").write_text("def f():\n" + "\n".join(_module(rng, 30)) + "\n")
    return root


def _shingles(text: str) -> set:
    from tokenweight.trainer.near_dups import TOKEN

    tokens = TOKEN.findall(text)
    return {tuple(tokens[i : i + 5]) for i in range(len(tokens) - 4)}


def test_package_split_near_dups_and_long_pool(tmp_path, packages):
    manifest = _build(
        tmp_path,
        (packages,),
        heldout_fraction=0.25,
        split_by="package",
        long_fraction=0.2,
        long_min_bytes=10000,
        near_dup_threshold=0.8,
    )
    files = manifest["files"]
    sides = {}
    for f in files:
        sides.setdefault(f["package"], set()).add(f["split"])
    assert all(len(s) == 1 for s in sides.values())  # every package wholly on one side
    assert {next(iter(s)) for s in sides.values()} == {"train", "heldout", "long"}
    assert set(sides) <= {f"pkg{p:02d}" for p in range(30)} | {"lone"}  # lone.py: "lone"
    long = [f for f in files if f["split"] == "long"]
    assert long and all(f["bytes"] >= 10000 for f in long)
    assert manifest["counts"]["short_extension_files"] > 0
    # Brute force over every cross-side pair: nothing left at Jaccard >= 0.8.
    texts = {
        json.loads(line)["path"]: json.loads(line)["text"]
        for name in ("train.jsonl", "heldout.jsonl", "long.jsonl")
        for line in (tmp_path / "out" / name).read_text().splitlines()
    }
    assert set(texts) == {f["path"] for f in files}
    split_of = {f["path"]: f["split"] for f in files}
    shingles = {p: _shingles(t) for p, t in texts.items()}
    for a in texts:
        for b in texts:
            if split_of[a] < split_of[b]:
                sa, sb = shingles[a], shingles[b]
                assert len(sa & sb) / len(sa | sb) < 0.8, (a, b)
    # The shared module survives on the training side only, and the count says so.
    kept_shared = {split_of[p] for p in texts if p.endswith("shared.py")}
    assert kept_shared == {"train"}
    # Held-out packages lose their copy as a near-duplicate; long ones lose it as a short file.
    held = sum(sides[p] == {"heldout"} for p in sides if p != "lone")
    assert manifest["counts"]["near_duplicates"] == held > 0
    assert manifest["counts"]["found_files"] == 30 * 5 + 1
    again = _build(
        tmp_path,
        (packages,),
        "again",
        heldout_fraction=0.25,
        split_by="package",
        long_fraction=0.2,
        long_min_bytes=10000,
        near_dup_threshold=0.8,
    )
    assert again["list_hash"] == manifest["list_hash"]


def test_long_pool_needs_package_split(tmp_path, packages):
    with pytest.raises(CorpusError, match="split-by package"):
        _build(tmp_path, (packages,), long_fraction=0.1)
