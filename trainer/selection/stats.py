"""Per-document long-dependency statistics from one document's target-aligned log-probs.

Formulas (docs/SELECTION.md explains them): over the targets beyond the window — target
`x_t` with `t >= k`, entry `t-1` of the target-aligned arrays, `n` of them —

    gain_t      = max(0, logp_long[t-1] - logp_short[t-1])
    key_t       = gain_t > key_gain  and  logp_long[t-1] > key_logp      (LongPPL's rule)
    copied_t    = the n-gram x_{t-m+1} .. x_t (m = copy_ngram, ending in the target) occurred
                  earlier in the document, ending at some j < t (and j >= t - copy_lookback);
                  or, with the tokens' strings known, the last copy_chars characters of the
                  word stream up to the end of x_t (the text with every run of characters
                  other than letters, digits and _ made one space) occurred earlier in it,
                  ending within some token j < t (the same lookback)
    context_gain   = sum(gain_t) / n
    key_density    = sum(key_t) / n
    copied_share   = sum(copied_t) / n
    repetition_share = sum(gain_t * copied_t) / sum(gain_t)        (0 when sum(gain_t) = 0)
    score          = sum(gain_t * (1 - copied_t)) / n  =  context_gain * (1 - repetition_share)

Targets before the window (`t < k`) see their whole prefix in both passes, so they say nothing
about distance and are left out of `n`. A document with no target beyond the window
(fewer than k + 1 tokens) has no statistics: its row says so instead of carrying a NaN.
"""

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from tokenweight.flags import flag

OK, NO_TARGETS, NO_LONG_TARGETS = "ok", "no_targets", "no_long_targets"


@dataclass(frozen=True)
class StatsConfig:
    key_gain: float = flag(2.0, "key token: gain above this many nats (LongPPL: 2)")
    key_logp: float = flag(-2.0, "key token: logp_long above this (LongPPL: -2)")
    copy_ngram: int = flag(
        8,
        "a target repeating an earlier n-gram of this many tokens (ending with it) is a copy: "
        "its gain is counted apart from the score",
    )
    copy_chars: int = flag(
        48,
        "a target ending a stretch of this many characters of the word stream (the text with "
        "punctuation and spaces made one space) seen earlier is a copy too (0: off; needs the "
        "tokenizer)",
    )
    copy_lookback: int | None = flag(
        None, "tokens back a copy may come from (default: the whole document)"
    )
    top_tokens: int = 10  # highest-gain targets kept per document, for inspection

    def __post_init__(self):
        if self.copy_ngram < 2:
            raise ValueError(f"copy_ngram must be at least 2 tokens, got {self.copy_ngram}")
        if self.copy_chars < 0:
            raise ValueError(f"copy_chars must be >= 0 (0: off), got {self.copy_chars}")
        if self.copy_lookback is not None and self.copy_lookback < 1:
            raise ValueError(f"copy_lookback must be at least 1 token, got {self.copy_lookback}")
        if self.top_tokens < 0:
            raise ValueError(f"top_tokens must be >= 0, got {self.top_tokens}")


def copied_targets(token_ids: np.ndarray, ngram: int, lookback: int | None = None) -> np.ndarray:
    """Target-aligned bool mask (len - 1): target t repeats the n-gram of `ngram` tokens that
    ends at t, seen ending at an earlier j (t - lookback <= j < t when lookback is set)."""
    ids = np.ascontiguousarray(token_ids, dtype=np.int64)
    mask = np.zeros(max(ids.size - 1, 0), dtype=bool)
    if ids.size < ngram:
        return mask
    last_end: dict[bytes, int] = {}
    # row r of the view is the n-gram ending at token r + ngram - 1
    for r, gram in enumerate(sliding_window_view(ids, ngram)):
        end = r + ngram - 1
        key = gram.tobytes()
        seen = last_end.get(key)
        if seen is not None and (lookback is None or end - seen <= lookback):
            mask[end - 1] = True
        last_end[key] = end
    return mask


def word_copies(strings: list[str], chars: int, lookback: int | None = None) -> np.ndarray:
    """Target-aligned bool mask (len - 1): the word stream's last `chars` characters up to the
    end of target t occurred earlier, ending within a token j < t (t - j <= lookback if set).

    The word stream is the text with each run of characters other than letters, digits and
    `_` made one space: a copy that was reformatted (an `__all__` list repeating the imports,
    a table repeating names in other quotes and commas) is still the same stream.
    """
    stream: list[str] = []
    ends = []  # ends[t]: length of the stream once token t is in it
    for s in strings:
        for c in s:
            if c.isalnum() or c == "_":
                stream.append(c)
            elif stream and stream[-1] != " ":
                stream.append(" ")
        ends.append(len(stream))
    text = "".join(stream)
    mask = np.zeros(max(len(strings) - 1, 0), dtype=bool)
    last_token: dict[str, int] = {}  # a stretch of `chars` characters -> last token it ended in
    done = 0
    for t, end in enumerate(ends):
        if t and end > done and end >= chars:  # a token that adds nothing copies nothing
            j = last_token.get(text[end - chars : end])
            mask[t - 1] = j is not None and (lookback is None or t - j <= lookback)
        for e in range(max(done + 1, chars), end + 1):
            last_token[text[e - chars : e]] = t
        done = end
    return mask


def document_stats(
    token_ids: np.ndarray,
    logp_long: np.ndarray,
    logp_short: np.ndarray,
    window: int,
    config: StatsConfig = StatsConfig(),
    strings: list[str] | None = None,
) -> dict:
    """The statistics above as a JSON-ready dict (floats rounded to 6 decimals).

    `strings`: each token's text, for the word-stream copies (left out when None or when
    `copy_chars` is 0).
    """
    ids = np.asarray(token_ids)
    n_targets = max(ids.size - 1, 0)
    long = np.asarray(logp_long, dtype=np.float64)
    short = np.asarray(logp_short, dtype=np.float64)
    if long.shape != (n_targets,) or short.shape != (n_targets,):
        raise ValueError(
            f"a document of {ids.size} tokens needs {n_targets} log-probs per pass, got "
            f"{long.shape} and {short.shape}"
        )
    beyond = np.arange(n_targets) >= window - 1  # entry t-1 is target t; t >= k
    if n_targets == 0 or not beyond.any():
        return _empty(NO_TARGETS if n_targets == 0 else NO_LONG_TARGETS)
    gain = np.maximum(0.0, long - short)
    copied = copied_targets(ids, config.copy_ngram, config.copy_lookback)
    if strings is not None and config.copy_chars:
        copied |= word_copies(strings, config.copy_chars, config.copy_lookback)
    key = (gain > config.key_gain) & (long > config.key_logp)
    g, c = gain[beyond], copied[beyond]
    n = int(beyond.sum())
    total = float(g.sum())
    repetition = float(g[c].sum()) / total if total > 0 else 0.0
    where = np.flatnonzero(beyond)
    top = where[np.argsort(-gain[where], kind="stable")[: config.top_tokens]]
    return {
        "status": OK,
        "long_targets": n,
        "context_gain": _r(total / n),
        "key_density": _r(key[beyond].sum() / n),
        "copied_share": _r(c.sum() / n),
        "repetition_share": _r(repetition),
        "score": _r(float(g[~c].sum()) / n),
        # [target position t, gain, logp_long, logp_short, copied] of the highest-gain targets
        "top_tokens": [
            [int(i) + 1, _r(gain[i]), _r(long[i]), _r(short[i]), bool(copied[i])] for i in top
        ],
    }


def _empty(status: str) -> dict:
    return {
        "status": status,
        "long_targets": 0,
        "context_gain": None,
        "key_density": None,
        "copied_share": None,
        "repetition_share": None,
        "score": None,
        "top_tokens": [],
    }


def _r(x) -> float:
    return round(float(x), 6)
