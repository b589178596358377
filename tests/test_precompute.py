import numpy as np
import pytest

from tokenweight.client.wire import ScoreResult, Scores
from tokenweight.trainer.data import TokenShards
from tokenweight.trainer.precompute import PrecomputeError, precompute
from tokenweight.trainer.prepare import ShardWriter
from tokenweight.trainer.score_store import ScoreStore, ScoreStoreError

SEQ_LEN, ROWS, WINDOW = 24, 10, 8


class EngineClient:
    """What precompute sees of a ScorerClient, answered by an in-process ScoringEngine.

    Temporary: stands in for a real `tokenweight serve` until that command lands.
    """

    def __init__(self, engine, fail_after=None):
        self.engine, self.fail_after, self.calls = engine, fail_after, 0
        self.answered = {}  # token bytes -> the Scores handed back for that sequence

    def score(self, sequences, window=None, stride=None, scorer=None, outputs=None):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise ConnectionError("scorer went away")
        k, s = self.engine.resolve(window, stride)
        results = [Scores(None, r.logp_long, r.logp_short) for r in self.engine.score(sequences, k, s)]
        for seq, result in zip(sequences, results):
            self.answered[seq.tobytes()] = result
        return ScoreResult(
            request_id=str(self.calls), scorer=self.engine.name, fingerprint=self.engine.fingerprint(k, s),
            window=k, stride=s, results=results,
        )


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    from tokenweight.service.engine import ScoringEngine

    return ScoringEngine.from_pretrained(tiny_model_dir, device="cpu", window=WINDOW)


def make_data(path, seed=0):
    tokens = np.random.default_rng(seed).integers(3, 300, size=ROWS * SEQ_LEN, dtype=np.int32)
    tokens[::SEQ_LEN] = 1  # every row starts with BOS, so chunks swap in BOS as well
    writer = ShardWriter(path, SEQ_LEN, shard_sequences=4)
    writer.add(tokens)
    writer.finish({"vocab_size": 300, "eos_token_id": 2, "bos_token_id": 1, "tokenizer": "test", "inputs": []})
    return TokenShards(path)


def test_store_holds_exactly_the_service_scores(engine, tmp_path):
    shards = make_data(tmp_path / "data")
    client = EngineClient(engine)
    meta = precompute(shards, client, tmp_path / "store", batch_size=3, concurrency=2, progress=False)
    assert (meta.window, meta.stride, meta.fingerprint) == (WINDOW, 6, engine.fingerprint())
    store = ScoreStore.open(tmp_path / "store", shards.content_hash, engine.fingerprint())
    indices = np.array([9, 0, 4])
    long, short = store.get(indices)
    answered = [client.answered[row.tobytes()] for row in shards.take(indices)]
    np.testing.assert_array_equal(long, np.stack([r.logp_long for r in answered]))  # bit for bit
    np.testing.assert_array_equal(short, np.stack([r.logp_short for r in answered]))
    assert not np.array_equal(long[:, WINDOW:], short[:, WINDOW:])  # chunks really ran
    # and the scores are the engine's, whatever batch they were computed in
    direct = engine.score(list(shards.take(indices)))
    np.testing.assert_allclose(short, np.stack([r.logp_short for r in direct]), rtol=0, atol=1e-5)


def test_interrupted_precompute_resumes(engine, tmp_path):
    shards = make_data(tmp_path / "data")
    flaky = EngineClient(engine, fail_after=2)
    with pytest.raises(ConnectionError):
        precompute(shards, flaky, tmp_path / "store", batch_size=2, concurrency=1, progress=False)
    with ScoreStore.open(tmp_path / "store", shards.content_hash) as partial:
        done_before = partial.num_done
    assert 0 < done_before < ROWS
    resumed = EngineClient(engine)
    precompute(shards, resumed, tmp_path / "store", batch_size=2, concurrency=1, progress=False)
    assert resumed.calls == -(-(ROWS - done_before) // 2)  # only the missing rows were scored
    fresh = EngineClient(engine)
    precompute(shards, fresh, tmp_path / "fresh", batch_size=5, concurrency=2, progress=False)
    a = ScoreStore.open(tmp_path / "store", shards.content_hash)
    b = ScoreStore.open(tmp_path / "fresh", shards.content_hash)
    all_rows = np.arange(ROWS)
    # same scores whether resumed or not (batch composition differs: float rounding only)
    np.testing.assert_allclose(a.get(all_rows)[1], b.get(all_rows)[1], rtol=0, atol=1e-5)
    again = EngineClient(engine)
    precompute(shards, again, tmp_path / "store", progress=False)
    assert again.calls == 0  # complete: nothing to do


def test_resume_refuses_another_scorer_or_data(engine, tmp_path):
    shards = make_data(tmp_path / "data")
    client = EngineClient(engine, fail_after=1)
    with pytest.raises(ConnectionError):
        precompute(shards, client, tmp_path / "store", batch_size=2, concurrency=1, progress=False)
    with pytest.raises(ScoreStoreError, match="fingerprint"):
        precompute(shards, EngineClient(engine), tmp_path / "store", window=12, progress=False)
    other = make_data(tmp_path / "other", seed=1)
    with pytest.raises(ScoreStoreError, match="other data"):
        precompute(other, EngineClient(engine), tmp_path / "store", progress=False)


def test_mixed_scorers_are_refused(engine, tmp_path):
    shards = make_data(tmp_path / "data")

    class Mixed(EngineClient):
        def score(self, sequences, window=None, stride=None, scorer=None, outputs=None):
            # every other request lands on a server with other settings
            return super().score(sequences, window=None if self.calls % 2 else 12)

    with pytest.raises(PrecomputeError, match="different models or settings"):
        precompute(shards, Mixed(engine), tmp_path / "store", batch_size=2, concurrency=1, progress=False)
