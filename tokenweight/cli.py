"""The `tokenweight` command. Each subcommand lives in its own module, which exposes
`add_arguments(parser)` and `run(args) -> int` and imports heavy dependencies (torch, the
web stack) only inside `run`, so `tokenweight --help` and the client-only install stay light.
"""

import argparse
import importlib
import sys

DESCRIPTION = (
    "Token weighting for long-context language-model training: score tokens by how much "
    "they need far-away context, serve those scores, and train with them."
)

# name -> (module, the extra its run needs beyond the client-only install (None: none),
# one-line help)
COMMANDS = {
    "score": ("tokenweight.score_cli", "service", "score JSON lines locally or against a running server"),
    "serve": ("tokenweight.service.serve_cli", "service", "run the scorer service (gRPC + HTTP)"),
    "prepare": ("tokenweight.trainer.prepare", "trainer", "tokenize text into fixed-length training shards"),
    "precompute": ("tokenweight.trainer.precompute", "trainer", "score a prepared dataset once into a score store (frozen mode)"),
    "plot": ("tokenweight.trainer.plot", "trainer", "draw a training run's metrics.jsonl as PNG files"),
    "corpus": ("tokenweight.trainer.corpus", None, "collect this machine's Python sources into a train/held-out corpus"),
    "tokenizer": ("tokenweight.trainer.tokenizer", "trainer", "train a byte-level BPE tokenizer on a corpus"),
    "eval": ("tokenweight.trainer.evals.cli", "trainer", "long-context evals: retrieval by distance, perplexity by position"),
    "diagnose": ("tokenweight.trainer.evals.diagnose", "trainer", "compare scorers on held-out files: weight rank agreement, AUROC for long-range repeats"),
    "rank": ("tokenweight.trainer.selection.rank", "trainer", "rank documents by how much they need long context"),
    "select": ("tokenweight.trainer.selection.select", "trainer", "keep the top of a ranking, stratified, with a matched random control"),
    "rank-page": ("tokenweight.trainer.selection.page", "trainer", "draw a ranking as an HTML page"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tokenweight", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, _, help_text) in COMMANDS.items():
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        mod = importlib.import_module(module)
        mod.add_arguments(cmd)
        cmd.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args._run(args) or 0
    except ModuleNotFoundError as exc:
        # A third-party module the client-only install leaves out; a missing module of
        # this package is a bug and keeps its traceback.
        extra = COMMANDS[args.command][1]
        if not (extra and exc.name) or exc.name.split(".")[0] == "tokenweight":
            raise
        print(
            f"tokenweight {args.command}: needs {exc.name.split('.')[0]}, which is not installed;"
            f" install it with: pip install 'tokenweight[{extra}]'",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
