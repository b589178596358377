import json

import numpy as np
import pytest

from tokenweight.trainer.data import (
    BatchOrderError,
    DataFormatError,
    RankBatches,
    TokenShards,
    batch_token_hash,
)
from tokenweight.trainer.prepare import ShardWriter

SEQ_LEN = 4


def make_dataset(path, num_sequences, shard_sequences=3, seq_len=SEQ_LEN):
    """Row i holds tokens i*seq_len .. (i+1)*seq_len-1, so a row names its own index."""
    writer = ShardWriter(path, seq_len, shard_sequences)
    writer.add(np.arange(num_sequences * seq_len + 1, dtype=np.int32))  # +1: a dropped tail
    writer.finish(
        {
            "vocab_size": None,
            "eos_token_id": 0,
            "bos_token_id": None,
            "tokenizer": "synthetic",
            "inputs": [],
        }
    )
    return TokenShards(path)


@pytest.fixture
def shards(tmp_path):
    return make_dataset(tmp_path / "data", 10)


def test_rows_and_metadata(shards):
    assert len(shards) == 10 and shards.seq_len == SEQ_LEN
    assert len(shards.index["shards"]) == 4  # 3 + 3 + 3 + 1
    row = shards[7]
    assert row.dtype == np.int32 and row.tolist() == [28, 29, 30, 31]
    assert shards[-1].tolist() == shards[9].tolist()
    picked = shards.take([9, 0, 4, 4])
    assert picked[:, 0].tolist() == [36, 0, 16, 16]
    with pytest.raises(IndexError):
        shards[10]
    shards.verify()


def test_missing_index_is_explained(tmp_path):
    with pytest.raises(DataFormatError, match="tokenweight prepare"):
        TokenShards(tmp_path)


def test_truncated_shard_is_refused(shards):
    shard = shards.path / shards.index["shards"][1]["file"]
    shard.write_bytes(shard.read_bytes()[:-4])
    with pytest.raises(DataFormatError, match="truncated"):
        TokenShards(shards.path)


def test_wrong_format_is_refused(shards):
    index_path = shards.path / "index.json"
    index = json.loads(index_path.read_text())
    index["format"] = "something-else"
    index_path.write_text(json.dumps(index))
    with pytest.raises(DataFormatError, match="format"):
        TokenShards(shards.path)


def test_verify_detects_changed_bytes(shards):
    shard = shards.path / shards.index["shards"][0]["file"]
    data = bytearray(shard.read_bytes())
    data[0] ^= 1
    shard.write_bytes(bytes(data))
    with pytest.raises(DataFormatError, match="sha256"):
        TokenShards(shards.path).verify()


def take_steps(batches, n):
    it = iter(batches)
    return [next(it) for _ in range(n)]


def test_ranks_are_disjoint_and_cover_each_step(shards):
    world = 3
    per_rank = [take_steps(RankBatches(shards, 1, rank, world, seed=5), 6) for rank in range(world)]
    epoch_seen = {0: [], 1: []}
    for step in range(6):
        batches = [per_rank[r][step] for r in range(world)]
        union = np.concatenate([b.indices for b in batches])
        assert len(set(union.tolist())) == world  # disjoint within the step
        assert all(b.step == step for b in batches)
        for b in batches:
            assert b.tokens.dtype == np.int64 and b.tokens.shape == (1, SEQ_LEN)
            assert (b.tokens[:, 0] == b.indices * SEQ_LEN).all()  # tokens are those rows
        epoch_seen[batches[0].epoch] += union.tolist()
    # 10 sequences, global batch 3: 3 steps per epoch, 9 distinct sequences each epoch
    for seen in epoch_seen.values():
        assert len(seen) == 9 and len(set(seen)) == 9


def test_seed_determines_the_order(shards):
    a = [b.indices.tolist() for b in take_steps(RankBatches(shards, 2, seed=1), 8)]
    b = [b.indices.tolist() for b in take_steps(RankBatches(shards, 2, seed=1), 8)]
    c = [b.indices.tolist() for b in take_steps(RankBatches(shards, 2, seed=2), 8)]
    assert a == b and a != c


def test_epochs_roll_over_with_a_new_permutation(shards):
    batches = RankBatches(shards, 5, seed=0)
    assert batches.steps_per_epoch == 2
    got = take_steps(batches, 6)
    assert [b.epoch for b in got] == [0, 0, 1, 1, 2, 2]
    epochs = [np.concatenate([got[2 * e].indices, got[2 * e + 1].indices]) for e in range(3)]
    for order in epochs:
        assert sorted(order.tolist()) == list(range(10))
    assert epochs[0].tolist() != epochs[1].tolist()


def test_resume_continues_exactly(shards):
    original = RankBatches(shards, 2, rank=1, world_size=2, seed=3)
    it = iter(original)
    for _ in range(4):
        next(it)
    state = json.loads(json.dumps(original.state_dict()))  # survives a checkpoint file
    expected = [next(it).indices.tolist() for _ in range(5)]
    resumed = RankBatches(shards, 2, rank=1, world_size=2, seed=3)
    resumed.load_state_dict(state)
    got = [b.indices.tolist() for b in take_steps(resumed, 5)]
    assert got == expected
    assert resumed.batch_at(4).indices.tolist() == expected[0]


def test_resume_refuses_other_settings(shards, tmp_path):
    state = RankBatches(shards, 2, seed=3).state_dict()
    with pytest.raises(BatchOrderError, match="seed"):
        RankBatches(shards, 2, seed=4).load_state_dict(state)
    with pytest.raises(BatchOrderError, match="global_batch"):
        RankBatches(shards, 3, seed=3).load_state_dict(state)
    other = make_dataset(tmp_path / "other", 11)
    with pytest.raises(BatchOrderError, match="content_hash"):
        RankBatches(other, 2, seed=3).load_state_dict(state)


def test_world_size_may_change_with_the_same_global_batch(shards):
    state = {**RankBatches(shards, 4, seed=0).state_dict(), "step": 3}
    single = RankBatches(shards, 4, seed=0)
    single.load_state_dict(state)
    union = set()
    for rank in range(2):
        half = RankBatches(shards, 2, rank, 2, seed=0)
        half.load_state_dict(state)
        union |= set(next(iter(half)).indices.tolist())
    assert union == set(next(iter(single)).indices.tolist())


def test_bad_batch_settings(shards):
    with pytest.raises(BatchOrderError, match="fewer than one global batch"):
        RankBatches(shards, 6, world_size=2)
    with pytest.raises(BatchOrderError, match="rank"):
        RankBatches(shards, 1, rank=2, world_size=2)


def test_batch_token_hash():
    tokens = np.arange(12, dtype=np.int64).reshape(3, 4)
    assert batch_token_hash(tokens) == batch_token_hash(tokens.astype(np.int32))
    assert batch_token_hash(tokens) != batch_token_hash(tokens.reshape(4, 3))
    changed = tokens.copy()
    changed[2, 3] += 1
    assert batch_token_hash(tokens) != batch_token_hash(changed)
    with pytest.raises(ValueError, match="int32"):
        batch_token_hash(np.array([2**40]))
