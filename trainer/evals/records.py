"""What `tokenweight eval` writes per item, and the stable ids that pair items across arms.

The eval JSON (format `tokenweight-eval-2`) keeps every field of `tokenweight-eval-1`
(`perplexity`, `retrieval`, `identifier_repeats`, `items.position_ce/position_n/key_ce/key_n/
short_ce/short_n/retrieval`, `items_hash`) so older readers keep working, and adds:

Per-item records (`items`), each with an `id` that is equal in two evals exactly when they
measured the same thing, whatever the arm, model or order of evaluation:
- `items.retrieval[]`: one per task item (`dict`, `passkey`, `chain`, `kv`, `idrecall`):
  `id`, `task`, `bucket` (distance-bucket label, e.g. "1024-2048"), `distance` (tokens from
  the fact's first token, or the identifier's first sighting, to the answer's first token),
  `credit` (1 right, 0 wrong, 1/k for a k-way tie that includes the answer), `answer`,
  `scores` (summed log-prob of each candidate); `idrecall` items also `file` and `position`.
  Ids: synthetic tasks `"{task}/s{seed}/b{bucket}/{i}"` (the items depend only on the seed,
  the tokenizer, the filler files and the task knobs, all in `settings`); `idrecall`
  `"idrecall/{file}/{position}"`.
- `items.id_loss[]`: judge-free loss on long-range identifier repeats. One per identifier
  occurrence in a long held-out file that was seen before but not in the last `window` tokens
  (so only context beyond the window can explain it): `id` = `"idloss/{file}/{position}"`,
  `file`, `position` (index of the occurrence's first token), `distance` (tokens back to the
  name's previous sighting), `tokens` (how many tokens the occurrence has), `nll` (the
  model's own summed -log p of those tokens, nats).
- `items.long_files[]`: file id of each row of `position_ce`/`position_n`/`key_ce`/`key_n`.
- `items.short_files[]`: file id of each entry of `short_ce`/`short_n` (short-context
  perplexity: the first `window` tokens of each held-out file, per file).
A file id is `sha256(text)[:16]` of the held-out document (rows of prepared shards, which
have no text, get `"row{index}"`). A position is a token index in the file's encoding with the
tokenizer's template (BOS = position 0).

New summaries: `retrieval.tasks[t].by_distance[b]` and `.overall` carry Wilson 95% intervals
(`ci`, `ci_method: "wilson"`, successes = summed credit); `id_loss` = `{value` (mean nats per
token, ratio of sums), `ci`, `items`, `tokens`, `by_distance[]}`; `file_ids: "sha256[:16]"`.

New options (EvalConfig field = flag; defaults keep `tokenweight-eval-1` behaviour):
- `--tasks` also accepts `kv` and `idrecall` (default unchanged: dict passkey chain);
- `--passkey-distractors N` (0): lines `# <label>: <number>` of the passkey's form, scattered
  between the passkey and the query, their numbers the first candidates; `--passkey-differ D`
  (5): decoy numbers differ from the passkey in exactly D of its 5 digits (1 = look-alikes;
  5 = any other 5-digit number);
- `--kv-pairs N` (32): `key = value` lines of identical form; `--kv-shared S` (0): leading
  letters of the 3-letter key suffix all keys share (2 = keys differing in one letter);
- `--id-min-distance D` (default window): idrecall's first sighting at least D tokens back;
  `--id-absent K` (default window): the name absent from the last K tokens; `--id-per-file N`
  (8): at most N idrecall items per file, drawn by the seed; idrecall is capped at
  `--items-per-bucket` per bucket like the other tasks;
- `--short-files N` (default --max-sequences): held-out files in the short-context metric.
Judge-dependent LongPPL stays as before (the judge is `--scorer-model` or `--scorer-url`).

Statistics for the report (trainer/evals/stats.py; `stat` is `mean_stat` for credits,
`ratio_stat(nll, tokens)` for losses, `ppl_stat(ce, n)` for perplexities):
- `cluster_sums(records, ("nll", "tokens"))` or `(..., ("credit",))`: one record per file
  (`id` = file id, the sums and `items`), for resampling files rather than the correlated
  occurrences within a file (`ratio_stat(credit, items)` is then the accuracy);
- `wilson(successes, n)` -> `{value, ci, items}`;
- `paired_bca(stat, [a arrays], [b arrays])` -> `{value, ci, items, p}`: arm A minus arm B on
  the same items (pair them first with `align(records_a, records_b)`, by `id`), BCa bootstrap;
  `degenerate: true` (NaN bounds) instead of a zero-width interval;
- `hierarchical_bootstrap(stat, [(a arrays, b arrays) per block])` -> `{value, ci, p,
  per_block}`: blocks resampled, then items within each drawn block;
- `holm({endpoint: p})` -> `{endpoint: {p, p_holm, rejected}}`;
- `verdict(ci, margin=0.02, better="higher"|"lower")` -> "held" | "contradicted" |
  "equivalent" | "not resolved" (a degenerate interval is "not resolved").
Scorer diagnostics, `tokenweight diagnose --scorer A --scorer B --data heldout.jsonl --seq-len
L --window W --out d.json` (diagnose.py; format `tokenweight-diagnose-1`): `rank_agreement
{pooled, per_sequence_median}` (Spearman of A's and B's token weights under `--preset`, dense by
default) and `scorers[] {model, fingerprint, auroc}` (AUROC of |logp_long - logp_short| for the
`id_loss` tokens against all others); `repeat_tokens`, `tokens`.
"""

import hashlib


def file_id(text: str) -> str:
    """The id of a held-out document: equal across arms, evals and file orders."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def row_id(index: int) -> str:
    """The id of a prepared-shard row (no text to hash): its index in the shards."""
    return f"row{index}"


def task_item_id(task: str, seed: int, bucket: int, index: int) -> str:
    return f"{task}/s{seed}/b{bucket}/{index}"


def site_id(kind: str, file: str, position: int) -> str:
    """`idrecall/...` or `idloss/...`: a place in a held-out file."""
    return f"{kind}/{file}/{position}"
