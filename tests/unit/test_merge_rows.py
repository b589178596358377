"""A re-measured row replaces its old one in place; other rows stay; new keys append in order."""

import json

from bench.merge_rows import main, merge


def test_merge_replaces_in_place_and_appends_new_keys(tmp_path):
    old = [{"model": "a", "v": 1}, {"model": "b", "v": 1}]
    new = [{"model": "c", "v": 2}, {"model": "a", "v": 2}]
    assert merge(old, new, ["model"]) == [
        {"model": "a", "v": 2},
        {"model": "b", "v": 1},
        {"model": "c", "v": 2},
    ]
    target, extra = tmp_path / "t.json", tmp_path / "n.json"
    target.write_text(json.dumps(old))
    extra.write_text(json.dumps(new))
    assert main([str(target), str(extra), "--key", "model"]) == 0
    assert [r["v"] for r in json.loads(target.read_text())] == [2, 1, 2]
