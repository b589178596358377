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
