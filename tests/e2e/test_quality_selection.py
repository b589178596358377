"""The block pipeline's data-selection stage, with the real `tokenweight rank` and `select`:
the bundled model stands in for the carried judge, synthetic documents for the long pool."""

import json
from dataclasses import replace

from bench.quality import block_stages
from bench.quality.block_profiles import BLOCK_PROFILES
from bench.quality.block_stages import BlockContext
from bench.quality.jobs import Runner
from rank_docs import synthetic_documents
from tokenweight.bundled import default_model
from tokenweight.trainer.data import TokenShards


def test_select_stage_writes_top_and_control_shards_of_equal_size(tmp_path):
    model, _ = default_model()
    carried = tmp_path / "carried"
    carried.mkdir()
    for name in ("judge", "tokenizer"):
        (carried / name).symlink_to(model)
    profile = replace(
        BLOCK_PROFILES["block-smoke"],
        selection_arms=True,
        selection_fraction=0.5,
        short_len=512,
        long_len=1024,
        carried=carried,
    )
    (tmp_path / "corpus").mkdir()
    with (tmp_path / "corpus" / "long.jsonl").open("w") as f:
        for kind, text in synthetic_documents():
            f.write(json.dumps({"text": text, "source": kind}) + "\n")
    ctx = BlockContext(profile, tmp_path, 1, Runner(tmp_path, ["cpu"], 1), "cpu", carried,
                       tmp_path / "calibration.json", tmp_path / "results")
    block_stages.select(ctx)
    out = ctx.block_path("select")
    rows = [json.loads(line) for line in (out / "rank.jsonl").open()]
    assert len(rows) == len(synthetic_documents())
    top, control = TokenShards(out / "top"), TokenShards(out / "control")
    assert top.seq_len == control.seq_len == profile.long_len
    assert abs(len(top) - len(control)) <= 1  # same documents per stratum, similar tokens
    block_stages.select(ctx)  # done: skipped, nothing rewritten
    assert [json.loads(line) for line in (out / "rank.jsonl").open()] == rows
