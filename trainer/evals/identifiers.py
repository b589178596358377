"""Tokens that repeat an identifier first seen at least a window earlier.

These are the tokens a short window cannot explain and long context can: the name was
introduced out of the window's sight. The bundled model's property test and the eval's
`identifier_repeats` diagnostic compare the contrast scores of these tokens with the rest.

Identifiers are Python NAME tokens of the code (keywords excluded; names inside strings and
comments are not identifiers). Every subword token of a qualifying occurrence counts.
"""

import io
import keyword
import tokenize

import numpy as np


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
