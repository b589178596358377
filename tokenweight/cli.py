"""The `tokenweight` command. Each subcommand lives in its own module, which exposes
`add_arguments(parser)` and `run(args) -> int` and imports heavy dependencies (torch, the
web stack) only inside `run`, so `tokenweight --help` and the client-only install stay light.
"""

import argparse
import importlib
import sys

# name -> (module, one-line help)
COMMANDS = {
    "score": ("tokenweight.score_cli", "score JSON lines locally or against a running server"),
    "serve": ("tokenweight.service.serve_cli", "run the scorer service (gRPC + HTTP)"),
    "prepare": ("tokenweight.trainer.prepare", "tokenize text into fixed-length training shards"),
    "precompute": ("tokenweight.trainer.precompute", "score a prepared dataset once into a score store (frozen mode)"),
    "plot": ("tokenweight.trainer.plot", "draw a training run's metrics.jsonl as PNG files"),
    "corpus": ("tokenweight.trainer.corpus", "collect this machine's Python sources into a train/held-out corpus"),
    "tokenizer": ("tokenweight.trainer.tokenizer", "train a byte-level BPE tokenizer on a corpus"),
    "eval": ("tokenweight.trainer.evals.cli", "long-context evals: retrieval by distance, perplexity by position"),
    "diagnose": ("tokenweight.trainer.evals.diagnose", "compare scorers on held-out files: weight rank agreement, AUROC for long-range repeats"),
    "rank": ("tokenweight.trainer.selection.rank", "rank documents by how much they need long context"),
    "select": ("tokenweight.trainer.selection.select", "keep the top of a ranking, stratified, with a matched random control"),
    "rank-page": ("tokenweight.trainer.selection.page", "draw a ranking as an HTML page"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tokenweight", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        mod = importlib.import_module(module)
        mod.add_arguments(cmd)
        cmd.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args._run(args) or 0


if __name__ == "__main__":
    sys.exit(main())
