"""Synthetic long-range retrieval, written as Python code, with seeded items.

Each item states a fact early in a file and asks for it at the end, `distance` tokens later:

- `dict`: a long dict literal `TABLE = {"key_0042": 7193, ...}`, filler code, then
  `assert TABLE["key_0042"] ==` -> ` 7193`; the other values of the table are the distractors.
- `passkey`: `# passkey: 48213` near the top, filler, then `PASSKEY =` -> ` 48213`. With
  `passkey_distractors`, lines of the same form under other labels (`# checksum: 48293`)
  are scattered between the two, their numbers `passkey_differ` digits off the passkey's, and
  they are the first distractors: the model must remember which number was the passkey.
- `kv`: `kv_pairs` lines `entry_xyz = 4821` of identical form (`kv_shared` leading letters of
  the key suffix common to all keys: 2 leaves keys one letter apart), filler, then
  `assert entry_xyz ==` -> ` 4821`; the other values are the distractors.
- `chain`: `name_ab = 4821`, filler, `name_cd = name_ab`, filler, `name_ef = name_cd`,
  filler, `print(name_ef)  # ->` -> ` 4821`; decoy variables assigned beside the root are
  the distractors.

`distance` is exact, in tokens of the item's own sequence: from the first token of the fact's
value to the first answer token. An item is answered by likelihood (see retrieval.py) among
`choices` candidates of the same token length, so a model that knows nothing scores exactly
chance; a value with too few alternatives of its token length is redrawn. Items depend only on
the seed, the tokenizer and the filler texts.
"""

import dataclasses
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .filler import NOUNS, Filler
from .records import task_item_id

TASKS = ("dict", "passkey", "chain", "kv")
DECOY_LABELS = ("passcode", "checksum", "pin", "seed", "port", "build", "serial", "token")
GAP = None  # a place in a draft where filler goes
LETTERS = "abcdefghjkmnpqrstuvwxyz"
KEY_LETTERS = 3  # letters of a kv key's suffix
MAX_DECOYS = 40  # fewer than the 44 numbers one digit off a passkey, the fewest there are
REDRAWS = 50  # drafts tried for one item before its settings are declared impossible
FRESH_DRAWS = 1000  # fresh distractors tried for one draft


@dataclass(frozen=True)
class TaskConfig:
    seq_len: int
    edges: tuple[int, ...]  # distance buckets; each gets `items_per_bucket` items
    items_per_bucket: int = 40
    choices: int = 4
    dict_entries: int = 24
    passkey_distractors: int = 0
    passkey_differ: int = 5  # digits (of 5) in which a decoy number differs from the passkey
    kv_pairs: int = 32
    kv_shared: int = 0  # leading letters (of 3) of the key suffix that every key shares
    seed: int = 0

    def check(self) -> None:
        if not 1 <= self.passkey_differ <= 5:
            raise TaskError(f"--passkey-differ must be in [1, 5], got {self.passkey_differ}")
        if not 0 <= self.passkey_distractors <= MAX_DECOYS:
            raise TaskError(
                f"--passkey-distractors must be in [0, {MAX_DECOYS}], got {self.passkey_distractors}"
            )
        if not 0 <= self.kv_shared <= 2:
            raise TaskError(f"--kv-shared must be in [0, 2], got {self.kv_shared}")
        capacity = len(LETTERS) ** (KEY_LETTERS - self.kv_shared)
        if not 2 <= self.kv_pairs <= capacity:
            raise TaskError(
                f"--kv-pairs must be in [2, {capacity}] with --kv-shared {self.kv_shared}, "
                f"got {self.kv_pairs}"
            )


@dataclass(frozen=True)
class Item:
    task: str
    bucket: int  # the distance bucket the item was drawn for
    prompt: np.ndarray  # int64 token ids up to the answer, the tokenizer's BOS first
    candidates: tuple[np.ndarray, ...]  # answer token ids, all of one length
    answer: int  # index of the correct candidate
    fact_position: int  # token index of the fact's value in `prompt`
    distance: int  # len(prompt) - fact_position
    value: str  # the answer text, e.g. " 48213"
    id: str = ""  # stable across arms (records.py)
    file: str | None = None  # held-out file id, for items taken from real files


class TaskError(ValueError):
    """Items that cannot be made with these settings; the message names the fix."""


class Codec:
    """The tokenizer as the tasks use it: a `tokenizers.Tokenizer` with its template."""

    def __init__(self, backend):
        self.backend = backend

    def count(self, text: str) -> int:
        return len(self.backend.encode(text, add_special_tokens=False).ids)

    def ids(self, text: str) -> np.ndarray:
        return np.asarray(self.backend.encode(text, add_special_tokens=False).ids, dtype=np.int64)

    def locate(self, text: str, char: int) -> tuple[np.ndarray, int]:
        """Ids of `text` (with the template) and the index of the token starting at `char`."""
        enc = self.backend.encode(text, add_special_tokens=True)
        for j, (start, end) in enumerate(enc.offsets):
            if start == char and end > start:
                return np.asarray(enc.ids, dtype=np.int64), j
        raise TaskError(
            f"no token starts at character {char} of the item; the tokenizer splits "
            "numbers from their leading space, which these tasks need"
        )


@dataclass
class Draft:
    before: str  # text before the fact's value
    value: str  # the fact's value, which is also the answer (leading space included)
    after: list  # text pieces and GAPs between the value and the end of the prompt
    pool: list[str]  # distractors seen in the context, in preference order
    fresh: Callable[[random.Random], str]  # a new distractor in the answer's format


def generate(task: str, cfg: TaskConfig, codec: Codec, filler: Filler) -> list[Item]:
    """`items_per_bucket` items of `task` for each distance bucket, in bucket order."""
    if task not in DRAFTS:
        raise TaskError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    cfg.check()
    items = []
    for b, (lo, hi) in enumerate(zip(cfg.edges[:-1], cfg.edges[1:])):
        for i in range(cfg.items_per_bucket):
            rng = random.Random(f"{cfg.seed}/{task}/{b}/{i}")
            # Kept off the bucket's lower edge by more than filler's rounding (a comment line).
            target = rng.randrange(lo + min(8, (hi - lo) // 4), hi)
            item = _make_item(task, b, rng, target, cfg, codec, filler)
            items.append(dataclasses.replace(item, id=task_item_id(task, cfg.seed, b, i)))
    return items


def _make_item(task, bucket, rng, target, cfg, codec, filler) -> Item:
    draft, distractors = drafted(lambda: DRAFTS[task](rng, target, cfg, codec), rng, codec, cfg)
    answer = codec.ids(draft.value)
    gaps = sum(piece is GAP for piece in draft.after)
    ids, fact = _assemble(codec, draft, "", [""] * gaps)
    fixed_distance, prefix = len(ids) - fact, fact
    # Seams between separately counted pieces can each cost a token more than counted.
    margin = 4 + gaps
    longest = cfg.seq_len - prefix - len(answer) - margin
    if longest < fixed_distance:
        raise TaskError(
            f"--seq-len {cfg.seq_len} is too short for a {task!r} item ({fixed_distance + prefix} "
            "tokens without filler); use a longer sequence"
        )
    target = min(max(target, fixed_distance), longest)
    weights = [rng.random() + 1e-3 for _ in range(gaps)]
    budgets = [int((target - fixed_distance) * w / sum(weights)) for w in weights]
    fills = [filler.take(rng, n) for n in budgets]
    ids, fact = _assemble(codec, draft, "", fills)
    if gaps and len(ids) - fact < target:
        # Pieces were counted one by one; top up the last gap by what the seams took back.
        fills[-1] += filler.take(rng, target - (len(ids) - fact))
    # Filler before the fact moves it around the file, so distance and position differ; it
    # is cut back if the seams made the item longer than the context.
    pre_budget = rng.randint(0, longest - target)
    while True:
        ids, fact = _assemble(codec, draft, filler.take(rng, pre_budget), fills)
        overflow = len(ids) + len(answer) - cfg.seq_len
        if overflow <= 0:
            break
        if pre_budget == 0:
            raise TaskError(f"a {task!r} item came out longer than --seq-len {cfg.seq_len}")
        pre_budget = max(0, pre_budget - overflow - 8)
    candidates = [draft.value, *distractors]
    order = list(range(len(candidates)))
    rng.shuffle(order)
    return Item(
        task=task,
        bucket=bucket,
        prompt=ids,
        candidates=tuple(codec.ids(candidates[k]) for k in order),
        answer=order.index(0),
        fact_position=fact,
        distance=len(ids) - fact,
        value=draft.value,
    )


def _assemble(codec: Codec, draft: Draft, pre: str, gap_texts: list[str]) -> tuple[np.ndarray, int]:
    fills = iter(gap_texts)
    head = pre + draft.before
    tail = "".join(next(fills) if piece is GAP else piece for piece in draft.after)
    return codec.locate(head + draft.value + tail, len(head))


def drafted(draw: Callable[[], Draft], rng, codec: Codec, cfg: TaskConfig):
    """(draft, distractors): a draft whose answer has `choices - 1` distractors of its token
    length. Some values have too few (a one-token ' 33333' whose one-digit look-alikes all take
    two tokens, a one-token ' 4096' among two-token values): they are redrawn with the item's
    rng, so that any setting can make all of its items."""
    for _ in range(REDRAWS):
        draft = draw()
        chosen = _distractors(draft, rng, codec, cfg.choices - 1)
        if chosen is not None:
            return draft, chosen
    raise TaskError(
        f"no value drawn in {REDRAWS} drafts had {cfg.choices - 1} distractors of its token "
        "length; lower --choices"
    )


def _distractors(draft: Draft, rng, codec: Codec, need: int) -> list[str] | None:
    """Distractors as long in tokens as the answer: the context's own first, then fresh ones;
    None if `need` of them were not found."""
    length = codec.count(draft.value)
    chosen = []
    fresh = (draft.fresh(rng) for _ in range(FRESH_DRAWS))
    for text in [*draft.pool, *fresh]:
        if len(chosen) == need:
            return chosen
        if text != draft.value and text not in chosen and codec.count(text) == length:
            chosen.append(text)
    return None


def _number(low: int, high: int) -> Callable[[random.Random], str]:
    return lambda rng: f" {rng.randint(low, high)}"


def _table_size(rng, target, cfg, codec, per_entry: int, head: str, tail: str, most: int):
    """(entries, index of the queried one) of a table of same-form entries, as many as fit.

    Entries after the queried one count towards the distance, entries before it towards the
    prefix: short targets need few after it, long ones few before it (or fewer entries).
    """
    per_entry = max(1, per_entry)
    head = 1 + codec.count(head)  # BOS, opening, the fact's entry
    tail = codec.count(tail) + 8  # closing, query, answer, seams
    fits_after = max(0, (target - tail) // per_entry)
    fits_before = max(0, (cfg.seq_len - target - head - tail) // per_entry)
    n = min(most, fits_after + fits_before + 1)
    return n, n - 1 - rng.randint(max(0, n - 1 - fits_before), min(n - 1, fits_after))


def _dict_draft(rng, target, cfg: TaskConfig, codec: Codec) -> Draft:
    n, q = _table_size(
        rng,
        target,
        cfg,
        codec,
        per_entry=codec.count('    "key_0000": 1000,\n'),
        head='TABLE = {\n    "key_0000": 1000',
        tail=',\n}\nassert TABLE["key_0000"] == 1000',
        most=cfg.dict_entries,
    )
    keys = [f"key_{k:04d}" for k in rng.sample(range(10000), n)]
    values = [f" {v}" for v in rng.sample(range(1000, 10000), n)]
    entries = [f'    "{k}":{v},\n' for k, v in zip(keys, values)]
    pool = values[:q] + values[q + 1 :]
    rng.shuffle(pool)
    return Draft(
        before="TABLE = {\n" + "".join(entries[:q]) + f'    "{keys[q]}":',
        value=values[q],
        after=[",\n" + "".join(entries[q + 1 :]) + "}\n", GAP, f'assert TABLE["{keys[q]}"] =='],
        pool=pool,
        fresh=_number(1000, 9999),
    )


def _passkey_draft(rng, target, cfg: TaskConfig, codec: Codec) -> Draft:
    passkey = _number(10000, 99999)(rng)
    if cfg.passkey_differ == 5:
        lookalike = _number(10000, 99999)
    else:
        lookalike = _near_number(passkey, cfg.passkey_differ)
    decoys = []
    while len(decoys) < cfg.passkey_distractors:
        if (number := lookalike(rng)) != passkey and number not in decoys:
            decoys.append(number)
    after = ["\n", GAP]
    for number in decoys:
        after += [f"# {rng.choice(DECOY_LABELS)}:{number}\n", GAP]
    return Draft("# passkey:", passkey, [*after, "PASSKEY ="], decoys, lookalike)


def _near_number(number: str, differ: int) -> Callable[[random.Random], str]:
    """Numbers of the same length that differ from `number` in exactly `differ` digits."""

    def draw(rng: random.Random) -> str:
        digits = list(number.strip())
        for k in rng.sample(range(len(digits)), differ):
            digits[k] = rng.choice([d for d in "0123456789" if d != digits[k] and (k or d != "0")])
        return " " + "".join(digits)

    return draw


def _kv_draft(rng, target, cfg: TaskConfig, codec: Codec) -> Draft:
    stem = rng.choice(NOUNS)
    shared = "".join(rng.choice(LETTERS) for _ in range(cfg.kv_shared))
    suffixes = itertools.product(LETTERS, repeat=KEY_LETTERS - cfg.kv_shared)
    keys = [f"{stem}_{shared}{''.join(s)}" for s in rng.sample(list(suffixes), cfg.kv_pairs)]
    values = [f" {v}" for v in rng.sample(range(1000, 10000), cfg.kv_pairs)]
    lines = [f"{k} ={v}\n" for k, v in zip(keys, values)]
    longest = max(lines, key=codec.count)  # the sizes are planned for the longest line
    n, q = _table_size(
        rng,
        target,
        cfg,
        codec,
        per_entry=codec.count(longest),
        head=longest.rstrip(),
        tail=f"\nassert {longest.split(' =')[0]} =={values[0]}",
        most=cfg.kv_pairs,
    )
    keys, values, lines = keys[:n], values[:n], lines[:n]
    pool = values[:q] + values[q + 1 :]
    rng.shuffle(pool)
    return Draft(
        before="".join(lines[:q]) + f"{keys[q]} =",
        value=values[q],
        after=["\n" + "".join(lines[q + 1 :]), GAP, f"assert {keys[q]} =="],
        pool=pool,
        fresh=_number(1000, 9999),
    )


def _chain_draft(rng, target, cfg: TaskConfig, codec: Codec) -> Draft:
    names = set()
    while len(names) < 6:
        names.add(f"{rng.choice(NOUNS)}_{rng.choice(LETTERS)}{rng.choice(LETTERS)}")
    names = sorted(names)  # set order varies between processes; the shuffle below does not
    rng.shuffle(names)
    root, second, third, *decoys = names
    fresh = _number(1000, 9999)
    decoy_values = [fresh(rng) for _ in decoys]
    lines = [f"{d} ={v}\n" for d, v in zip(decoys, decoy_values)]
    split = rng.randint(0, len(lines))  # decoys before and after the root assignment
    return Draft(
        before="".join(lines[:split]) + f"{root} =",
        value=fresh(rng),
        after=[
            "\n" + "".join(lines[split:]),
            GAP,
            f"{second} = {root}\n",
            GAP,
            f"{third} = {second}\n",
            GAP,
            f"print({third})  # ->",
        ],
        pool=decoy_values,
        fresh=fresh,
    )


DRAFTS = {
    "dict": _dict_draft,
    "passkey": _passkey_draft,
    "chain": _chain_draft,
    "kv": _kv_draft,
}
