"""The long-context evaluation suite behind `tokenweight eval` (see cli.py).

- tasks.py, filler.py: synthetic retrieval written as code (dict lookup, passkey, variable
  chain) at controlled token distances;
- retrieval.py: answering them by likelihood, accuracy by distance bucket;
- heldout.py, perplexity.py: held-out perplexity by position, on long-range (judge-marked)
  tokens, and in the first window of each file;
- identifiers.py: tokens repeating an identifier first seen a window earlier;
  repeat_contrast.py: a model's own contrast on those tokens against the rest;
- lm.py: the model and the judge through the scoring engine; stats.py: buckets and
  bootstrap intervals.
"""
