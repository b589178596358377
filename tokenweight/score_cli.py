"""`tokenweight score`: ad-hoc scoring of JSON lines, locally or against a running server.

Input lines are `{"token_ids": [int]}` or `{"text": str}`; each gives one output line
`{"token_ids", "score", "logp_long", "logp_short"}` (plus `"tokens"` for text), in input order.
With neither --url nor --model it scores locally with the bundled code model; `--top N`
prints each line's N highest-scoring tokens as a table instead of JSON.
"""

import argparse
import json
import sys
from dataclasses import dataclass

from tokenweight.bundled import model_or_default
from tokenweight.contrast import no_contrast_warning
from tokenweight.flags import add_flags, flag


@dataclass(frozen=True)
class ScoreArgs:
    """The flags of `tokenweight score`, each with its default and help."""

    url: str | None = flag(
        None, "a running server: grpc://HOST:PORT or http://HOST:PORT", exclusive="where"
    )
    model: str | None = flag(
        None,
        "score locally with this checkpoint directory (default: the bundled code model)",
        exclusive="where",
    )
    short_model: str | None = flag(None, "separate short-context model (local mode)")
    scorer: str | None = flag(None, "scorer name on the server (default: its default)")
    window: int | None = flag(None, "short-context window k")
    stride: int | None = flag(None, "chunk stride s (default 3k/4)")
    device: str | None = flag(None, "cpu, cuda or cuda:N (local mode; default: cuda if any)")
    dtype: str | None = flag(None, "float32, bfloat16 or float16 (local mode)")
    batch_size: int = flag(16, "lines scored per call")
    input: str | None = flag(None, "JSON lines file (default: stdin)")
    retry_for: float = flag(
        60.0,
        "with --url, keep trying a server that is starting or unreachable this long",
        metavar="SECONDS",
    )
    top: int | None = flag(
        None,
        "print each line's N highest-scoring tokens, in context, instead of JSON",
        metavar="N",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, ScoreArgs)


class InputError(ValueError):
    pass


def read_lines(stream) -> list[dict]:
    items = []
    for number, line in enumerate(stream, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"input line {number} is not JSON: {exc}") from None
        if not isinstance(item, dict) or ("token_ids" in item) == ("text" in item):
            raise InputError(f'input line {number} needs exactly one of "token_ids" or "text"')
        items.append(item)
    return items


def local_scorer(args):
    """A function (items) -> (output dicts, window used) that runs the engine in this
    process."""
    import numpy as np

    from tokenweight.service.engine import ScoringEngine
    from tokenweight.service.loading import load_hf_tokenizer
    from tokenweight.service.text import tokenize

    settings = {name: value for name in ("window", "stride") if (value := getattr(args, name))}
    engine = ScoringEngine.from_pretrained(
        args.model, args.short_model, device=args.device, dtype=args.dtype, **settings
    )
    tokenizer = None

    def score(items: list[dict]) -> list[dict]:
        nonlocal tokenizer
        sequences, tokens = [], []
        for item in items:
            if "text" in item:
                if tokenizer is None:
                    tokenizer = load_hf_tokenizer(args.model)
                (ids,), (decoded,) = tokenize(tokenizer, [item["text"]])
                tokens.append(decoded)
            else:
                ids = item["token_ids"]
                tokens.append(None)
            sequences.append(np.asarray(ids, dtype=np.int64))
        results = engine.score(sequences)
        outputs = [
            _output(seq.tolist(), r.score, r.logp_long, r.logp_short, tok)
            for seq, r, tok in zip(sequences, results, tokens)
        ]
        return outputs, engine.window

    return score


class ServerError(RuntimeError):
    """The server refused or failed a call (its ScorerError, without the grpc import here)."""


def remote_scorer(args):
    """A function (items) -> (output dicts, window used) that asks the server at `--url`.

    Text lines are tokenized by the server. Over gRPC a batch is one request whatever its
    lines; over HTTP token-id lines and text lines go as two requests, and the outputs keep
    the input order.
    """
    from tokenweight.client import (
        HttpScorerClient,
        RetryPolicy,
        ScorerClient,
        ScorerError,
        parse_urls,
    )

    settings = {"window": args.window, "stride": args.stride, "scorer": args.scorer}
    def waiting(event) -> None:  # one line for the whole wait, not one per attempt
        if event.attempt == 1:
            print(
                f"tokenweight score: {args.url} not answering yet ({event.error.code.name}); "
                f"trying for up to {args.retry_for:g} s (--retry-for)",
                file=sys.stderr,
            )

    retry = RetryPolicy.for_duration(args.retry_for, max_backoff=2.0, on_retry=waiting)
    if parse_urls(args.url)[0].is_grpc:
        client = ScorerClient(args.url, retry=retry)

        def ask(items: list[dict]) -> tuple[list[dict], int]:
            # text goes as it is: the server tokenizes it and says how
            sequences = [item["text"] if "text" in item else item["token_ids"] for item in items]
            result = client.score(sequences, **settings)
            outputs = [
                _output(
                    ids if r.token_ids is None else r.token_ids.tolist(),
                    r.score, r.logp_long, r.logp_short, r.tokens,
                )
                for ids, r in zip(sequences, result.results)
            ]
            return outputs, result.window

    else:
        client = HttpScorerClient(args.url, retry=retry)

        def ask(items: list[dict]) -> tuple[list[dict], int]:
            out: list[dict | None] = [None] * len(items)
            for kind in ("token_ids", "text"):
                where = [i for i, item in enumerate(items) if kind in item]
                if not where:
                    continue
                inputs = [items[i][kind] for i in where]
                if kind == "text":
                    result = client.score(text=inputs, **settings)
                else:
                    result = client.score(inputs, **settings)
                for i, r in zip(where, result.results):
                    out[i] = _output(r.token_ids.tolist(), r.score, r.logp_long, r.logp_short, r.tokens)
            return out, result.window

    def score(items: list[dict]) -> tuple[list[dict], int]:
        try:
            return ask(items)
        except ScorerError as exc:
            raise ServerError(str(exc)) from exc

    return score


def _output(token_ids, score, logp_long, logp_short, tokens=None) -> dict:
    out = {
        "token_ids": token_ids,
        "score": score.tolist(),
        "logp_long": logp_long.tolist(),
        "logp_short": logp_short.tolist(),
    }
    if tokens is not None:
        out["tokens"] = tokens
    return out


def top_tokens(out: dict, n: int, line: int) -> str:
    """The `n` highest-scoring targets of one output line, each shown in its context."""
    import numpy as np

    score = np.asarray(out["score"])
    # Decoded tokens join as the text reads; bare ids are kept apart by spaces.
    shown = out.get("tokens") or [str(t) for t in out["token_ids"]]
    gap = "" if out.get("tokens") else " "
    rows = [
        f"line {line}: {len(out['token_ids'])} tokens, median score {np.median(score):.3f}; "
        f"top {min(n, score.size)}:",
        f"{'pos':>6}  {'score':>7}  {'logp_long':>9}  {'logp_short':>10}  token in context",
    ]
    for i in np.argsort(-score, kind="stable")[:n]:
        target = int(i) + 1  # score[i] is for token i + 1, predicted from tokens 0..i
        before = gap.join(shown[max(0, target - 4) : target])
        after = gap.join(shown[target + 1 : target + 3])
        context = f"{before}{gap}[{shown[target]}]{gap}{after}".replace("\n", "\\n")
        rows.append(
            f"{target:>6}  {score[i]:>7.3f}  {out['logp_long'][i]:>9.3f}  "
            f"{out['logp_short'][i]:>10.3f}  {context}"
        )
    return "\n".join(rows) + "\n"


def run(args: argparse.Namespace) -> int:
    if args.top is not None and args.top < 1:
        print("tokenweight score: --top must be at least 1", file=sys.stderr)
        return 2
    if args.short_model and not (args.model or args.url):
        print("tokenweight score: --short-model needs --model (the long model it pairs with)", file=sys.stderr)
        return 2
    local_only = [f"--{name.replace('_', '-')}" for name in ("short_model", "device", "dtype") if getattr(args, name)]
    if args.url and local_only:
        print(f"tokenweight score: {', '.join(local_only)} only apply with --model (local scoring)", file=sys.stderr)
        return 2
    if not args.input and sys.stdin.isatty():
        print(
            "tokenweight score: reads JSON lines from stdin; pipe them in "
            '(echo \'{"text": "..."}\' | tokenweight score) or give --input FILE',
            file=sys.stderr,
        )
        return 2
    if args.retry_for <= 0:
        print("tokenweight score: --retry-for must be positive", file=sys.stderr)
        return 2
    try:
        with open(args.input) if args.input else sys.stdin as stream:
            items = read_lines(stream)
        if not args.url:
            args.model, args.window, args.stride = model_or_default(
                args.model, args.window, args.stride
            )
        score = remote_scorer(args) if args.url else local_scorer(args)
        uncontrasted = []
        for lo in range(0, len(items), args.batch_size):
            outputs, window = score(items[lo : lo + args.batch_size])
            for line, out in enumerate(outputs, lo + 1):
                if warning := no_contrast_warning(window, len(out["token_ids"]), f"line {line}"):
                    uncontrasted.append(warning)
                sys.stdout.write(top_tokens(out, args.top, line) if args.top else json.dumps(out) + "\n")
        if uncontrasted:
            more = len(uncontrasted) - 1
            print(
                f"tokenweight score: warning: {uncontrasted[0]}"
                + (f" (and {more} more such lines)" if more else ""),
                file=sys.stderr,
            )
    except (ValueError, OSError, ServerError) as exc:
        print(f"tokenweight score: {exc}", file=sys.stderr)
        return 1
    return 0
