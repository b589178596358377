import json

import numpy as np
import pytest

from tokenweight.trainer.score_store import ScoreStore, ScoreStoreError, StoreMeta, read_meta

META = StoreMeta(
    num_sequences=6,
    seq_len=5,
    content_hash="c" * 64,
    fingerprint="fp-1",
    scorer="default",
    window=4,
    stride=3,
)


def rows(indices, offset=0.0):
    """Distinct float32 values per row and column, so a mix-up shows."""
    idx = np.asarray(indices, dtype=np.float32)[:, None]
    return (-(idx * 10 + np.arange(META.targets, dtype=np.float32)) - offset).astype(np.float32)


def test_write_then_read(tmp_path):
    with ScoreStore.create_or_resume(tmp_path / "s", META) as store:
        store.put([0, 1, 2, 3, 4, 5], rows(range(6)), rows(range(6), 0.5))
        assert store.complete
    store = ScoreStore.open(tmp_path / "s", META.content_hash, "fp-1")
    long, short = store.get([5, 0, 5])
    assert long.dtype == np.float32 and long.shape == (3, 4)
    np.testing.assert_array_equal(long, rows([5, 0, 5]))
    np.testing.assert_array_equal(short, rows([5, 0, 5], 0.5))
    meta = json.loads((tmp_path / "s" / "meta.json").read_text())
    assert meta["targets"] == 4 and meta["fingerprint"] == "fp-1" and meta["window"] == 4


def test_resume_after_interruption(tmp_path):
    store = ScoreStore.create_or_resume(tmp_path / "s", META)
    store.put([0, 1], rows([0, 1]), rows([0, 1]))
    store.close()  # "interrupted": the process goes away after two rows
    store = ScoreStore.create_or_resume(tmp_path / "s", META)
    assert store.num_done == 2 and store.missing().tolist() == [2, 3, 4, 5]
    np.testing.assert_array_equal(store.get([1])[0], rows([1]))  # earlier rows kept
    store.put(store.missing(), rows(range(2, 6)), rows(range(2, 6)))
    assert store.complete
    store.close()


def test_missing_rows_are_refused(tmp_path):
    with ScoreStore.create_or_resume(tmp_path / "s", META) as store:
        store.put([0], rows([0]), rows([0]))
    store = ScoreStore.open(tmp_path / "s", META.content_hash)
    store.get([0])
    with pytest.raises(ScoreStoreError, match=r"2 of the requested.*precompute"):
        store.get([0, 3, 4])
    with pytest.raises(IndexError):
        store.get([6])


def test_mismatches_are_refused(tmp_path):
    ScoreStore.create_or_resume(tmp_path / "s", META).close()
    with pytest.raises(ScoreStoreError, match="content_hash"):
        ScoreStore.open(tmp_path / "s", "d" * 64)
    with pytest.raises(ScoreStoreError, match="fingerprint fp-1.*expects fp-2"):
        ScoreStore.open(tmp_path / "s", META.content_hash, "fp-2")
    other = StoreMeta(**{**META.__dict__, "fingerprint": "fp-2"})
    with pytest.raises(ScoreStoreError, match="fingerprint: store 'fp-1' vs now 'fp-2'"):
        ScoreStore.create_or_resume(tmp_path / "s", other)
    with pytest.raises(ScoreStoreError, match="not a score store"):
        ScoreStore.open(tmp_path / "nothing", META.content_hash)


def test_one_writer_at_a_time(tmp_path):
    first = ScoreStore.create_or_resume(tmp_path / "s", META)
    with pytest.raises(ScoreStoreError, match="another process"):
        ScoreStore.create_or_resume(tmp_path / "s", META)
    first.close()
    ScoreStore.create_or_resume(tmp_path / "s", META).close()


def test_bad_writes_and_damage(tmp_path):
    with ScoreStore.create_or_resume(tmp_path / "s", META) as store:
        with pytest.raises(ScoreStoreError, match="float32"):
            store.put([0], rows([0]).astype(np.float64), rows([0]))
        assert store.num_done == 0
    reader = ScoreStore.open(tmp_path / "s", META.content_hash)
    with pytest.raises(ScoreStoreError, match="read-only"):
        reader.put([0], rows([0]), rows([0]))
    (tmp_path / "s" / "logp_short.f32").write_bytes(b"\0" * 8)
    with pytest.raises(ScoreStoreError, match="damaged"):
        ScoreStore.open(tmp_path / "s", META.content_hash)
    assert read_meta(tmp_path / "s") == META
