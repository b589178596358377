"""Flags generated from dataclass fields: the field's default, type and help are the flag's."""

import argparse
from dataclasses import dataclass, fields

import pytest

from tokenweight.flags import add_flags, flag, values_of
from tokenweight.service.config import ScorerConfig, ServerConfig
from tokenweight.trainer.args import TrainConfig, parse_args
from tokenweight.trainer.evals.cli import EvalConfig


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
