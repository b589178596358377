"""Synthetic Python documents with known long-range structure, for the ranking tests.

- `long`: names defined at the top and used again only after ~700 tokens of unrelated code;
- `local`: the same kind of code, each name used only within a few lines of its definition;
- `repeat`: one block of local code (longer than the window) repeated: long context helps a
  lot, but only by copying.
"""

import random

CONSONANTS, VOWELS = "bdfgklmnprstvz", "aeiou"


def _word(rng: random.Random) -> str:
    """A made-up word: a name nothing earlier in the document predicts."""
    return "".join(rng.choice(CONSONANTS) + rng.choice(VOWELS) for _ in range(3))


def _local_function(rng: random.Random, i: int) -> str:
    a, b, c, d = (_word(rng) for _ in range(4))
    op = rng.choice(["+", "-", "*"])
    return (
        f"def {a}_{b}(values, {c}_scale={i % 7 + 2}):\n"
        f"    {d}_total = 0\n"
        f"    for {c} in values:\n"
        f"        {d}_total = {d}_total {op} {c} * {c}_scale\n"
        f"    return {d}_total\n\n\n"
    )


def _filler(rng: random.Random, n: int) -> str:
    return "".join(_local_function(rng, i) for i in range(n))


def long_range_document(seed: int) -> str:
    rng = random.Random(seed)
    names = [(_word(rng), _word(rng)) for _ in range(6)]
    head = "import os\n\n\n"
    for a, b in names:
        head += (
            f"class {a.title()}{b.title()}:\n"
            f"    def __init__(self, path):\n        self.path = path\n\n\n"
            f"def {a}_{b}(path):\n"
            f"    return os.path.join(path, 'm.txt')\n\n\n"
        )
    body = "def main(root):\n    results = []\n"
    for i, (a, b) in enumerate(names):
        body += (
            f"    item_{i} = {a}_{b}(root)\n    results.append({a.title()}{b.title()}(item_{i}))\n"
        )
    return head + _filler(rng, 9) + body + "    return results\n"


def local_document(seed: int, functions: int = 15) -> str:
    return "import os\n\n\n" + _filler(random.Random(seed), functions)


def repetition_document(seed: int) -> str:
    block = _filler(random.Random(seed), 8)
    return "import os\n\n\n" + block * 2


def synthetic_documents() -> list[tuple[str, str]]:
    """(kind, text) pairs, kinds interleaved so input order says nothing about the ranking."""
    docs = []
    for seed in range(2):
        docs += [
            ("local", local_document(100 + seed)),
            ("repeat", repetition_document(200 + seed)),
            ("long", long_range_document(300 + seed)),
        ]
    return docs
