"""The long-context evaluation suite behind `tokenweight eval` (see cli.py).

- tasks.py, filler.py: synthetic retrieval written as code (dict lookup, passkey with
  look-alike decoys, variable chain, same-form key/value recall) at controlled token distances;
- idrecall.py: identifier recall and the loss on long-range identifier repeats, from real
  held-out files;
- retrieval.py: answering items by likelihood, accuracy by distance bucket;
- heldout.py, perplexity.py: held-out perplexity by position, on long-range (judge-marked)
  tokens, and in the first window of each file;
- identifiers.py: identifiers repeating from beyond a window;
  repeat_contrast.py: a model's own contrast on those tokens against the rest;
- records.py: the per-item records and the ids that pair them across arms;
- lm.py: the model and the judge through the scoring engine; stats.py: buckets, intervals,
  paired and hierarchical bootstraps, Holm, verdicts; diagnose.py: `tokenweight diagnose`.
"""
