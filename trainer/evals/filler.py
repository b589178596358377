"""Filler code that puts distance between a fact and its query in the synthetic tasks.

Filler is made of whole top-level blocks that start in column 0 and end with a newline, so
it never opens a string or bracket that would swallow the query after it, and each seam
between pieces falls on a pre-tokenizer boundary. Blocks come from held-out files (real
code, parsed with `ast`) when there are any, topped up with small generated functions whose
size is known to a few tokens, then comment lines, so a gap of N tokens is filled to within
a comment line.
"""

import ast
import bisect
import random
import warnings
from collections.abc import Callable, Iterable

VERBS = (
    "load",
    "parse",
    "build",
    "merge",
    "check",
    "render",
    "update",
    "resolve",
    "encode",
    "split",
)
NOUNS = (
    "config",
    "record",
    "buffer",
    "header",
    "entry",
    "token",
    "request",
    "layout",
    "cache",
    "index",
)
TEMPLATES = (
    'def {verb}_{noun}({arg}, {other}):\n    """{Verb} the {noun}."""\n    {res} = {arg} + {other}\n    return {res}\n',
    "def {verb}_{noun}({arg}):\n    if {arg} is None:\n        return []\n    return [{res} for {res} in {arg} if {res}]\n",
    "class {Noun}{Verb}er:\n    def __init__(self, {arg}):\n        self.{arg} = {arg}\n\n    def {verb}(self):\n        return self.{arg}\n",
)
ARGS = ("value", "items", "name", "path", "data", "node", "key", "text")


def code_blocks(
    texts: Iterable[str], max_tokens: int, count: Callable[[str], int]
) -> list[tuple[int, str]]:
    """(token count, text) of every top-level def/class of the texts that parses and fits."""
    blocks = []
    for text in texts:
        try:
            with (
                warnings.catch_warnings()
            ):  # old escape sequences in library code: not ours to report
                warnings.simplefilter("ignore")
                tree = ast.parse(text)
        except (SyntaxError, ValueError, RecursionError):
            continue
        lines = text.splitlines(keepends=True)
        for node in tree.body:
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            block = "".join(lines[first - 1 : node.end_lineno]).rstrip() + "\n"
            n = count(block)
            if n <= max_tokens:
                blocks.append((n, block))
    return sorted(blocks)


class Filler:
    """Draws filler of about `n` tokens; `count(text)` is the tokenizer's token count."""

    def __init__(self, blocks: list[tuple[int, str]], count: Callable[[str], int]):
        self.blocks = blocks
        self.sizes = [n for n, _ in blocks]
        self.count = count

    def take(self, rng: random.Random, n: int) -> str:
        """Code of at most `n` tokens (counted piece by piece), short of it by less than a
        comment line: held-out blocks while one fits, then generated functions, then comments."""
        parts, left = [], n
        for make in (self._block, self._function, self._comment):
            while (piece := make(rng, left)) is not None:
                size, text = piece
                parts.append(text)
                left -= size
        return "".join(parts)

    def _block(self, rng: random.Random, left: int) -> tuple[int, str] | None:
        fits = bisect.bisect_right(self.sizes, left)
        return self.blocks[rng.randrange(fits)] if fits else None

    def _function(self, rng: random.Random, left: int) -> tuple[int, str] | None:
        verb, noun = rng.choice(VERBS), rng.choice(NOUNS)
        arg, other, res = rng.sample(ARGS, 3)
        text = rng.choice(TEMPLATES).format(
            verb=verb,
            noun=noun,
            Verb=verb.title(),
            Noun=noun.title(),
            arg=arg,
            other=other,
            res=res,
        )
        return self._if_fits(text, left)

    def _comment(self, rng: random.Random, left: int) -> tuple[int, str] | None:
        return self._if_fits(f"# {rng.choice(VERBS)} the {rng.choice(NOUNS)}\n", left)

    def _if_fits(self, text: str, left: int) -> tuple[int, str] | None:
        size = self.count(text)
        return (size, text) if size <= left else None
