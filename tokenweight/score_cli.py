"""`tokenweight score`: ad-hoc scoring of JSON lines, locally or against a running server.

Input lines are `{"token_ids": [int]}` or `{"text": str}`; each gives one output line
`{"token_ids", "score", "logp_long", "logp_short"}` (plus `"tokens"` for text), in input order.
With neither --url nor --model it scores locally with the bundled code model; `--top N`
prints each line's N highest-scoring tokens as a table instead of JSON.
"""

import argparse
import json
import sys

from tokenweight.bundled import model_or_default


def add_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--url", help="a running server: grpc://HOST:PORT or http://HOST:PORT")
    where.add_argument(
        "--model",
        help="score locally with this checkpoint directory (default: the bundled code model)",
    )
    parser.add_argument("--short-model", help="separate short-context model (local mode)")
    parser.add_argument("--scorer", help="scorer name on the server (default: its default)")
    parser.add_argument("--window", type=int, help="short-context window k")
    parser.add_argument("--stride", type=int, help="chunk stride s (default 3k/4)")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (local mode; default: cuda if any)")
    parser.add_argument("--dtype", help="float32, bfloat16 or float16 (local mode)")
    parser.add_argument("--batch-size", type=int, default=16, help="lines scored per call")
    parser.add_argument("--input", help="JSON lines file (default: stdin)")
    parser.add_argument(
        "--top",
        type=int,
        metavar="N",
        help="print each line's N highest-scoring tokens, in context, instead of JSON",
    )


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
    """A function (items) -> output dicts that runs the engine in this process."""
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
        return [
            _output(seq.tolist(), r.score, r.logp_long, r.logp_short, tok)
            for seq, r, tok in zip(sequences, results, tokens)
        ]

    return score


class ServerError(RuntimeError):
    """The server refused or failed a call (its ScorerError, without the grpc import here)."""


def remote_scorer(args):
    """A function (items) -> output dicts that asks the server at `--url`.

    gRPC carries token ids only; over HTTP the server also tokenizes text (token-id lines
    and text lines of a batch go as two requests, and the outputs keep the input order).
    """
    from tokenweight.client import HttpScorerClient, ScorerClient, ScorerError, parse_urls

    settings = {"window": args.window, "stride": args.stride, "scorer": args.scorer}
    if parse_urls(args.url)[0].is_grpc:
        client = ScorerClient(args.url)

        def ask(items: list[dict]) -> list[dict]:
            if any("text" in item for item in items):
                raise InputError(
                    'gRPC takes "token_ids" only; for "text" lines use --url http://HOST:PORT '
                    "(the server tokenizes) or --model PATH"
                )
            sequences = [item["token_ids"] for item in items]
            result = client.score(sequences, **settings)
            return [
                _output(ids, r.score, r.logp_long, r.logp_short)
                for ids, r in zip(sequences, result.results)
            ]

    else:
        client = HttpScorerClient(args.url)

        def ask(items: list[dict]) -> list[dict]:
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
            return out

    def score(items: list[dict]) -> list[dict]:
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
    shown = out.get("tokens") or [str(t) for t in out["token_ids"]]
    rows = [
        f"line {line}: {len(out['token_ids'])} tokens, median score {np.median(score):.3f}; "
        f"top {min(n, score.size)}:",
        f"{'pos':>6}  {'score':>7}  {'logp_long':>9}  {'logp_short':>10}  token in context",
    ]
    for i in np.argsort(-score, kind="stable")[:n]:
        target = int(i) + 1  # score[i] is for token i + 1, predicted from tokens 0..i
        before = "".join(shown[max(0, target - 4) : target])
        after = "".join(shown[target + 1 : target + 3])
        context = f"{before}[{shown[target]}]{after}".replace("\n", "\\n")
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
    try:
        with open(args.input) if args.input else sys.stdin as stream:
            items = read_lines(stream)
        if not args.url:
            args.model, args.window, args.stride = model_or_default(
                args.model, args.window, args.stride
            )
        score = remote_scorer(args) if args.url else local_scorer(args)
        for lo in range(0, len(items), args.batch_size):
            for line, out in enumerate(score(items[lo : lo + args.batch_size]), lo + 1):
                sys.stdout.write(top_tokens(out, args.top, line) if args.top else json.dumps(out) + "\n")
    except (ValueError, OSError, ServerError) as exc:
        print(f"tokenweight score: {exc}", file=sys.stderr)
        return 1
    return 0
