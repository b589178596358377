"""The synthetic retrieval tasks: each item is valid Python, its fact sits exactly `distance`
tokens before the answer, items depend only on the seed, and scoring by likelihood gives an
oracle 100% and a model that knows nothing exactly chance."""

import ast
import random
import re
from pathlib import Path

import numpy as np
import pytest
from eval_helpers import code_tokenizer, source_texts
from tokenizers import Tokenizer
from tokenweight.trainer.evals import tasks
from tokenweight.trainer.evals.filler import Filler, code_blocks
from tokenweight.trainer.evals.retrieval import accuracy_summary, answer_items, credit
from tokenweight.trainer.evals.stats import bucket_index, doubling_edges
from tokenweight.trainer.evals.tasks import (
    DECOY_LABELS,
    TASKS,
    Codec,
    TaskConfig,
    TaskError,
    generate,
)

from bench.quality.block_profiles import KNOBS

SEQ_LEN = 512
EDGES = tuple(doubling_edges(64, SEQ_LEN))
QUERY = {"dict": 'assert TABLE["', "passkey": "PASSKEY =", "chain": "print(", "kv": "assert "}


@pytest.fixture(scope="module")
def setup():
    tok = code_tokenizer()
    codec = Codec(tok.backend_tokenizer)
    filler = Filler(code_blocks(source_texts(), SEQ_LEN // 4, codec.count), codec.count)
    return tok, codec, filler


def _items(setup, task, seed=0, per_bucket=4, **knobs):
    _, codec, filler = setup
    cfg = TaskConfig(SEQ_LEN, EDGES, per_bucket, seed=seed, **knobs)
    return generate(task, cfg, codec, filler)


def _occurrences(ids: np.ndarray, part: np.ndarray) -> list[int]:
    """Every index where `part` occurs in `ids`, by brute force."""
    return [
        i for i in range(len(ids) - len(part) + 1) if np.array_equal(ids[i : i + len(part)], part)
    ]


@pytest.mark.parametrize("task", TASKS)
def test_items_are_code_with_the_fact_at_the_stated_distance(setup, task):
    tok = setup[0]
    items = _items(setup, task)
    assert len(items) == 4 * (len(EDGES) - 1)
    in_bucket = 0
    for item in items:
        answer = item.candidates[item.answer]
        assert tok.decode(answer.tolist()) == item.value
        assert len({len(c) for c in item.candidates}) == 1 and len(item.candidates) == 4
        assert len({tok.decode(c.tolist()) for c in item.candidates}) == 4
        assert len(item.prompt) + len(answer) <= SEQ_LEN and item.prompt[0] == tok.bos_token_id
        # The fact's value really starts `distance` tokens before the answer.
        assert item.distance == len(item.prompt) - item.fact_position
        fact = item.prompt[item.fact_position : item.fact_position + len(answer)]
        assert tok.decode(fact.tolist()) == item.value
        text = tok.decode(np.concatenate([item.prompt, answer]).tolist(), skip_special_tokens=True)
        ast.parse(text)  # the whole item is valid Python
        query = text[text.rindex("\n") + 1 :]
        assert query.startswith(QUERY[task]) and query.endswith(item.value)
        in_bucket += bucket_index([item.distance], list(EDGES))[0] == item.bucket
    # Only the chain's shortest possible item (no filler) may exceed the first bucket.
    assert in_bucket >= len(items) - (4 if task == "chain" else 1)


HARD = {"passkey_distractors": 6, "passkey_differ": 1, "kv_pairs": 20, "kv_shared": 2}


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("knobs", [{}, HARD], ids=["default", "hard"])
def test_the_answer_is_sighted_once_at_the_stated_distance(setup, task, knobs):
    """By brute force on the token ids: the answer's tokens occur in the prompt only at the
    fact, `distance` tokens back, so none of the last `distance - 1` tokens gives it away."""
    for k, item in enumerate(_items(setup, task, **knobs)):
        answer = item.candidates[item.answer]
        assert _occurrences(item.prompt, answer) == [len(item.prompt) - item.distance]
        assert len({len(c) for c in item.candidates}) == 1
        assert item.id == f"{task}/s0/b{item.bucket}/{k % 4}"


def test_passkey_decoys_are_look_alikes_in_the_context(setup):
    tok = setup[0]
    for item in _items(setup, "passkey", passkey_distractors=6, passkey_differ=1):
        text = tok.decode(item.prompt.tolist(), skip_special_tokens=True)
        decoys = re.findall(rf"^# (?:{'|'.join(DECOY_LABELS)}):( \d{{5}})$", text, re.MULTILINE)
        assert len(decoys) == 6 and item.value not in decoys
        for d in decoys:
            assert sum(x != y for x, y in zip(d, item.value)) == 1
        others = [tok.decode(c.tolist()) for k, c in enumerate(item.candidates) if k != item.answer]
        assert all(o in decoys for o in others)  # the candidates are the look-alikes seen


def test_kv_lines_share_one_form_and_keys_differ_by_one_letter(setup):
    tok = setup[0]
    for item in _items(setup, "kv", kv_pairs=20, kv_shared=2):
        text = tok.decode(item.prompt.tolist(), skip_special_tokens=True)
        key = text[text.rindex("assert ") + 7 :].split(" ==")[0]
        assert f"{key} ={item.value}\n" in text
        lines = [ln for ln in text.splitlines() if ln.startswith(key[:-1]) and " = " in ln]
        keys = [ln.split(" =")[0] for ln in lines]
        assert len(keys) == len(set(keys)) >= 2
        assert all(len(k) == len(key) and k[:-1] == key[:-1] for k in keys)


@pytest.mark.parametrize(
    "knobs, flag",
    [
        ({"passkey_differ": 0}, "--passkey-differ"),
        ({"passkey_distractors": -1}, "--passkey-distractors"),
        ({"passkey_distractors": 41, "passkey_differ": 1}, "--passkey-distractors"),
        ({"kv_shared": 3}, "--kv-shared"),
        ({"kv_pairs": 24, "kv_shared": 2}, "--kv-pairs"),
    ],
)
def test_bad_knobs_are_refused(setup, knobs, flag):
    with pytest.raises(TaskError, match=flag):
        _items(setup, "kv", **knobs)


def test_dict_query_names_the_key_of_the_fact(setup):
    tok = setup[0]
    for item in _items(setup, "dict"):
        text = tok.decode(item.prompt.tolist(), skip_special_tokens=True)
        key = text[text.rindex('TABLE["') + 7 :].split('"')[0]
        assert f'    "{key}":{item.value},' in text


@pytest.mark.parametrize("task", TASKS)
def test_items_depend_only_on_the_seed(setup, task):
    a, b, c = _items(setup, task), _items(setup, task), _items(setup, task, seed=1)
    same = lambda x, y: all(
        np.array_equal(i.prompt, j.prompt)
        and i.answer == j.answer
        and all(np.array_equal(p, q) for p, q in zip(i.candidates, j.candidates))
        for i, j in zip(x, y)
    )
    assert same(a, b) and not same(a, c)


def test_oracle_scores_everything_and_ignorance_scores_chance(setup):
    items = [it for task in TASKS for it in _items(setup, task)]
    right = {np.concatenate([it.prompt, it.candidates[it.answer]]).tobytes() for it in items}

    def oracle(sequences):
        return [
            np.full(len(s) - 1, 0.0 if s.tobytes() in right else -1.0, np.float32)
            for s in sequences
        ]

    def uniform(sequences):
        return [np.full(len(s) - 1, -np.log(600), np.float32) for s in sequences]

    def prefer_first(sequences):  # always the first candidate: right only where the answer is first
        return [
            np.full(len(s) - 1, 0.0 if k % 4 == 0 else -1.0, np.float32)
            for k, s in enumerate(sequences)
        ]

    assert all(r["credit"] == 1.0 for r in answer_items(items, oracle))
    records = answer_items(items, uniform)
    assert all(r["credit"] == 0.25 for r in records)
    summary = accuracy_summary(records, list(EDGES))
    for task in TASKS:
        assert summary["tasks"][task]["overall"]["value"] == pytest.approx(0.25)
        assert summary["tasks"][task]["chance"] == 0.25
    firsts = answer_items(items, prefer_first, batch_items=3)
    assert [r["credit"] for r in firsts] == [float(it.answer == 0) for it in items]


def test_credit_splits_ties():
    assert credit(np.array([-1.0, -2.0, -3.0]), 0) == 1.0
    assert credit(np.array([-1.0, -1.0, -3.0]), 1) == 0.5
    assert credit(np.array([-1.0, -1.0, -3.0]), 2) == 0.0


def test_too_short_a_context_is_refused(setup):
    _, codec, filler = setup
    with pytest.raises(ValueError, match="too short"):
        generate("dict", TaskConfig(24, (0, 12, 24), 1), codec, filler)


CARRIED_TOKENIZER = Path(__file__).parents[2] / "bench/quality/carried/tokenizer/tokenizer.json"
LONG = TaskConfig(4096, (0, 512, 1024, 2048, 4096))


@pytest.fixture(scope="module")
def carried_codec():
    return Codec(Tokenizer.from_file(str(CARRIED_TOKENIZER)))


class FirstNumber(random.Random):
    """A seeded rng whose first randint is `first`: the value the pilot's item drew."""

    def __init__(self, first: int, seed: int):
        super().__init__(seed)
        self.first = [first]

    def randint(self, a, b):
        return self.first.pop() if self.first else super().randint(a, b)


def _stuck_drafts(codec):
    """The pilot's two failures with the carried tokenizer: ' 33333' (2 tokens) whose 16
    decoys two digits off all take 3-4 tokens, and ' 4096' (1 token) among 4-digit values of 2,
    where only 9 of the 9,000 fresh 4-digit numbers are one token."""
    passkey_cfg = tasks.dataclasses.replace(LONG, passkey_distractors=16, passkey_differ=2)
    passkey = tasks._passkey_draft(FirstNumber(33333, 0), 1500, passkey_cfg, codec)
    kv_cfg = tasks.dataclasses.replace(LONG, kv_pairs=8)
    kv = tasks._kv_draft(random.Random(0), 1500, kv_cfg, codec)
    kv = tasks.dataclasses.replace(kv, before=kv.before.rsplit(" ", 1)[0] + " =", value=" 4096")
    return {"passkey": (passkey_cfg, passkey), "kv": (kv_cfg, kv)}


@pytest.mark.parametrize("task", ["passkey", "kv"])
def test_a_value_without_same_length_alternatives_is_redrawn(carried_codec, task):
    cfg, stuck = _stuck_drafts(carried_codec)[task]
    assert stuck.value in (" 33333", " 4096")
    rng = random.Random(7)
    assert tasks._distractors(stuck, rng, carried_codec, 3) is None  # what the pilot hit
    drafts = iter([stuck])
    draw = lambda: next(drafts, None) or tasks.DRAFTS[task](rng, 1500, cfg, carried_codec)
    draft, distractors = tasks.drafted(draw, rng, carried_codec, cfg)
    assert draft is not stuck and next(drafts, None) is None  # the stuck draft was drawn first
    lengths = {carried_codec.count(t) for t in [draft.value, *distractors]}
    assert len(lengths) == 1 and len({draft.value, *distractors}) == 4


def test_a_setting_no_value_can_satisfy_is_refused(carried_codec):
    """With more choices than there are one-token 4-digit numbers, a one-token value can never
    be answered: after REDRAWS drafts the setting is refused with a coded error."""
    cfg = tasks.dataclasses.replace(LONG, choices=10)
    stuck = tasks.Draft("x =", " 4096", [], [], lambda rng: f" {rng.choice([1000, 1024])}")
    with pytest.raises(TaskError, match="--choices"):
        tasks.drafted(lambda: stuck, random.Random(0), carried_codec, cfg)


@pytest.mark.parametrize("task, setting", [(k.task, s) for k in KNOBS for s in k.settings], ids=str)
def test_every_calibration_setting_makes_well_formed_items(carried_codec, task, setting):
    """Every setting the pilot sweeps, with the carried tokenizer at the block's 4096 tokens:
    items of equal-length candidates with the fact at the stated distance."""
    knobs = {flag[2:].replace("-", "_"): value for flag, value in setting.items()}
    cfg = tasks.dataclasses.replace(LONG, items_per_bucket=2, seed=3, **knobs)
    filler = Filler(code_blocks(source_texts(), 1024, carried_codec.count), carried_codec.count)
    for item in generate(task, cfg, carried_codec, filler):
        assert len({len(c) for c in item.candidates}) == 1 and len(item.candidates) == 4
        answer = item.candidates[item.answer]
        assert _occurrences(item.prompt, answer) == [len(item.prompt) - item.distance]
