"""Flags generated from dataclass fields: the field's default, type and help are the flag's."""

import argparse
import dataclasses
import re
from dataclasses import dataclass, fields

import pytest

from tokenweight.cli import build_parser
from tokenweight.flags import add_flags, flag, flag_fields, values_of
from tokenweight.service.config import ScorerConfig, ServerConfig
from tokenweight.trainer.args import TrainConfig, parse_args
from tokenweight.trainer.corpus import CorpusConfig
from tokenweight.trainer.evals.cli import EvalConfig
from tokenweight.trainer.evals.diagnose import DiagnoseConfig
from tokenweight.trainer.plot import PlotConfig
from tokenweight.trainer.prepare import PrepareConfig
from tokenweight.trainer.selection.page import PageConfig
from tokenweight.trainer.selection.rank import RankConfig, RankSources
from tokenweight.trainer.selection.select import RankedInput, SelectConfig, SelectOutput
from tokenweight.trainer.selection.stats import StatsConfig
from tokenweight.trainer.tokenizer import TokenizerConfig


@dataclass(frozen=True)
class Example:
    path: str = flag(help="where")
    count: int = flag(3, "how many", group="sizes")
    ratio: float | None = flag(None, "a ratio", group="sizes")
    fast: bool = flag(False, "go fast")
    colour: bool = flag(True, "in colour")
    mode: str = flag("a", "the mode", choices=("a", "b"))
    internal: int = 7


def parser_for(cls, **options) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_flags(parser, cls, **options)
    return parser


def test_defaults_types_and_booleans_come_from_the_fields():
    ns = parser_for(Example).parse_args(["--path", "p"])
    assert Example(**values_of(ns, Example)) == Example(path="p")
    ns = parser_for(Example).parse_args(
        ["--path", "p", "--count", "5", "--ratio", "0.5", "--fast", "--no-colour", "--mode", "b"]
    )
    assert values_of(ns, Example) == {
        "path": "p", "count": 5, "ratio": 0.5, "fast": True, "colour": False, "mode": "b",
    }
    assert not hasattr(ns, "internal")  # a plain field is no flag


def test_required_choices_and_help():
    parser = parser_for(Example)
    with pytest.raises(SystemExit):
        parser.parse_args([])  # --path is required: it has no default
    with pytest.raises(argparse.ArgumentError):
        parser.parse_args(["--path", "p", "--mode", "c"])
    text = parser.format_help()
    assert "how many (default: 3)" in text and "sizes:" in text
    assert "a ratio (default" not in text  # None is no default worth showing


def test_unset_is_none_tells_given_from_not_given():
    parser = parser_for(Example, unset_is_none=True)
    assert set(values_of(parser.parse_args([]), Example).values()) == {None}
    assert values_of(parser.parse_args(["--count", "3"]), Example)["count"] == 3


@pytest.mark.parametrize("cls", [TrainConfig, EvalConfig, ScorerConfig, ServerConfig])
def test_every_command_field_has_help(cls):
    flagged = {f.name for f in fields(cls) if f.metadata.get("flag_help")}
    assert flagged == {f.name for f in fields(cls)} - {"token_budget"}


def test_trainer_flags_default_to_the_dataclass():
    required = {"model": "m", "data": "d", "out": "o", "max_steps": 2}
    argv = [x for k, v in required.items() for x in (f"--{k.replace('_', '-')}", str(v))]
    assert parse_args(argv + ["--weighting", "uniform"]) == TrainConfig(
        **required, weighting="uniform"
    )


@dataclass(frozen=True)
class Where:
    run_dir: str = flag(help="a positional", flag="run_dir", metavar="RUN_DIR")
    url: str | None = flag(None, "remote", exclusive="where")
    model: str | None = flag(None, "local", exclusive="where")


def test_positionals_and_exclusive_sets():
    parser = parser_for(Where)
    assert values_of(parser.parse_args(["d", "--model", "m"]), Where) == {
        "run_dir": "d",
        "url": None,
        "model": "m",
    }
    with pytest.raises(argparse.ArgumentError, match="not allowed with"):
        parser.parse_args(["d", "--url", "u", "--model", "m"])
    with pytest.raises(SystemExit):
        parser.parse_args(["--model", "m"])  # the positional is required


# command -> (its schema dataclasses, the fewest arguments it accepts)
COMMANDS = {
    "rank": ((RankSources, RankConfig, StatsConfig), ["--input", "a", "--out", "o"]),
    "select": ((RankedInput, SelectOutput, SelectConfig), ["--ranking", "r", "--out", "o"]),
    "rank-page": ((RankedInput, PageConfig), ["--ranking", "r", "--out", "o"]),
    "diagnose": (
        (DiagnoseConfig,),
        ["--scorer", "s", "--data", "d", "--seq-len", "64", "--out", "o"],
    ),
    "corpus": ((CorpusConfig,), ["--out", "o"]),
    "tokenizer": ((TokenizerConfig,), ["--corpus", "c", "--out", "o"]),
    "prepare": (
        (PrepareConfig,),
        ["--tokenizer", "t", "--input", "i", "--seq-len", "64", "--out", "o"],
    ),
    "plot": ((PlotConfig,), ["run"]),
}


def help_entries(command: str, capsys, monkeypatch) -> dict[str, str]:
    """`tokenweight COMMAND --help` as {first spelling: its invocation and help on one line}."""
    monkeypatch.setenv("COLUMNS", "1000")  # no wrapping, which may break words at hyphens
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    entries: dict[str, str] = {}
    name = None
    for line in capsys.readouterr().out.splitlines():
        if start := re.match(r"^  (-?-?[\w-]+)", line):
            name = start.group(1)
            entries[name] = line
        elif name and line.startswith("   "):  # the help of the entry above, wrapped
            entries[name] += " " + line.strip()
        else:
            name = None
    return {k: " ".join(v.split()) for k, v in entries.items()}


@pytest.mark.parametrize("command", COMMANDS)
def test_command_help_lists_every_flag_with_its_default(command, capsys, monkeypatch):
    schemas, _ = COMMANDS[command]
    entries = help_entries(command, capsys, monkeypatch)
    for cls in schemas:
        for f in flag_fields(cls):
            spelling = f.metadata["flag_options"].get("flag", "--" + f.name.replace("_", "-"))
            entry = entries[spelling.upper() if not spelling.startswith("-") else spelling]
            assert " ".join(f.metadata["flag_help"].split()) in entry
            if f.default in (dataclasses.MISSING, None, False):
                continue
            shown = f.default if isinstance(f.default, tuple) else (f.default,)
            assert f"(default: {f.default!r})" in entry or (
                "(default: " in f.metadata["flag_help"] and all(str(v) in entry for v in shown)
            ), (command, f.name, entry)


@pytest.mark.parametrize("cls", sorted({c for s, _ in COMMANDS.values() for c in s}, key=str))
def test_every_field_of_the_command_schemas_is_a_flag(cls):
    # the nested stats settings and how many top tokens a row keeps are not flags
    not_flags = {"stats", "top_tokens"}
    assert {f.name for f in flag_fields(cls)} == {f.name for f in fields(cls)} - not_flags


@pytest.mark.parametrize("command", COMMANDS)
def test_command_parses_to_its_dataclass_defaults(command):
    schemas, argv = COMMANDS[command]
    ns = build_parser().parse_args([command, *argv])
    for cls in schemas:
        for f in flag_fields(cls):
            if f.default is not dataclasses.MISSING:
                assert getattr(ns, f.name) == f.default, (command, f.name)
    assert ns.command == command


def test_select_reads_strata_comma_separated():
    argv = ["select", "--ranking", "r", "--out", "o", "--by", "length, source,"]
    ns = build_parser().parse_args(argv)
    assert SelectConfig(**values_of(ns, SelectConfig)).by == ("length", "source")
