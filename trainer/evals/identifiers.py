"""Identifiers that repeat from far back: the tokens a short window cannot explain.

- `long_range_repeats`: tokens of an identifier first seen at least a window earlier (the
  bundled model's property test and the eval's `identifier_repeats` diagnostic);
- `repeat_sites`: occurrences of an identifier first seen at least `min_distance` tokens
  earlier and not seen at all in the last `absent` tokens, so that only context beyond them
  can supply the name (the `idrecall` task and the judge-free `id_loss` metric).

Identifiers are Python NAME tokens of the code (keywords excluded; names inside strings and
comments are not identifiers). A name is *seen* wherever it stands as a whole word, comments
and strings included, since a model can copy it from there too.
"""

import io
import keyword
import re
import tokenize
from dataclasses import dataclass

import numpy as np

WORD = re.compile(r"(?<!\w)[^\W\d]\w*")  # a whole word that could be a Python name


def identifier_spans(text: str) -> list[tuple[str, int, int]]:
    """(name, start char, end char) of each identifier in the code, in order.

    Text cut mid-construct (a sequence truncated to the context) gives the spans up to the cut.
    """
    line_starts = [0]
    for line in text.splitlines(keepends=True):
        line_starts.append(line_starts[-1] + len(line))
    spans = []
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type == tokenize.NAME and not (
                keyword.iskeyword(tok.string) or keyword.issoftkeyword(tok.string)
            ):
                start = line_starts[tok.start[0] - 1] + tok.start[1]
                spans.append((tok.string, start, start + len(tok.string)))
    except (tokenize.TokenError, IndentationError, SyntaxError):
        pass
    return spans


def long_range_repeats(text: str, offsets, window: int) -> np.ndarray:
    """Target-aligned mask (len(offsets) - 1): token t repeats an identifier whose first
    occurrence began at least `window` tokens before t's occurrence.

    `offsets[j]` is token j's (start, end) character span in `text` (special tokens: empty).
    """
    offsets = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    starts, ends = offsets[:, 0], offsets[:, 1]
    real = ends > starts
    mask = np.zeros(len(offsets), dtype=bool)
    first_seen: dict[str, int] = {}
    for name, lo, hi in identifier_spans(text):
        tokens = np.flatnonzero(real & (starts < hi) & (ends > lo))
        if tokens.size == 0:  # past the end of the token sequence
            break
        first = first_seen.setdefault(name, int(tokens[0]))
        if tokens[0] - first >= window:
            mask[tokens] = True
    return mask[1:]


@dataclass(frozen=True)
class Site:
    name: str
    start: int  # token index of the occurrence's first token
    end: int  # one past its last token
    first: int  # token index where the name was first seen
    previous: int  # token index of the last token of the name's previous sighting
    prefix: str  # text of the first token before the name (whitespace), e.g. " "

    @property
    def distance(self) -> int:
        return self.start - self.first


def repeat_sites(text: str, offsets, min_distance: int, absent: int) -> list[Site]:
    """Occurrences of code identifiers first seen >= `min_distance` tokens before their first
    token and absent from the `absent` tokens before it, whose tokens cover exactly the name
    (and leading whitespace), so another name of the same token length can stand in its place.

    `offsets[j]` is token j's (start, end) character span in `text` (special tokens: empty).
    """
    offsets = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    token_at = np.full(len(text) + 1, -1, dtype=np.int64)  # character -> token covering it
    for j, (lo, hi) in enumerate(offsets):
        token_at[lo:hi] = j
    code = {lo for _, lo, _ in identifier_spans(text)}
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    sites = []
    for match in WORD.finditer(text):
        name, lo, hi = match.group(), match.start(), match.end()
        start, stop = int(token_at[lo]), int(token_at[hi - 1])
        if start < 0 or stop < 0:  # past the end of the token sequence
            break
        if name in first and lo in code and not keyword.iskeyword(name):
            tok_lo = offsets[start][0]
            prefix = text[tok_lo:lo]
            if (
                offsets[stop][1] == hi
                and not prefix.strip()
                and start - first[name] >= min_distance
                and last[name] < start - absent
            ):
                sites.append(Site(name, start, stop + 1, first[name], last[name], prefix))
        first.setdefault(name, start)
        last[name] = stop
    return sites
