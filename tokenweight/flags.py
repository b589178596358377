"""Command-line flags generated from a dataclass, so each command's schema is written once.

A field declared with `flag(default, "help")` carries its default and help; `add_flags` turns
every such field into `--field-name` on an argparse parser, with the type, choices and
boolean spelling derived from the field. The dataclass stays the one place a default is
written: the flags, the TOML config of `serve` and the Python API all read it from there.
"""

import argparse
import dataclasses
import types
import typing

# Field metadata keys.
_HELP, _GROUP, _EXCLUSIVE, _OPTIONS = "flag_help", "flag_group", "flag_exclusive", "flag_options"


def flag(
    default=dataclasses.MISSING,
    help: str = "",
    *,
    group: str | None = None,
    exclusive: str | None = None,
    repr: bool = True,
    **options,
):
    """A dataclass field that is also a flag. No default makes the flag required; `repr=False`
    keeps a secret out of the dataclass's repr. Flags that name the same `exclusive` set may
    not be given together.

    `options` go to `add_argument` as they are (choices, metavar, dest, action, type, nargs,
    and `flag="--other-name"` for a spelling other than `--field-name`, or `flag="field_name"`
    for a positional argument).
    """
    metadata = {_HELP: help, _GROUP: group, _EXCLUSIVE: exclusive, _OPTIONS: options}
    return dataclasses.field(default=default, repr=repr, metadata=metadata)


def flag_fields(cls) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if _HELP in f.metadata]


def add_flags(
    parser: argparse.ArgumentParser, cls, *, unset_is_none: bool = False, groups: dict | None = None
) -> None:
    """Add a `--flag` for every `flag()` field of `cls`.

    `unset_is_none`: a flag not given parses as None (its default only shows in the help), for
    commands that layer the flags over a config file and must tell given from not given.
    `groups` collects argument groups by title, so several dataclasses can share them.
    """
    groups = {} if groups is None else groups
    hints = typing.get_type_hints(cls)
    for f in flag_fields(cls):
        title = f.metadata[_GROUP]
        if title is None:
            target = parser
        elif title in groups:
            target = groups[title]
        else:
            target = groups[title] = parser.add_argument_group(title)
        if exclusive := f.metadata[_EXCLUSIVE]:
            # keyed apart from the titles: an exclusive set is no titled group of its own
            key = ("exclusive", exclusive)
            if key not in groups:
                groups[key] = target.add_mutually_exclusive_group()
            target = groups[key]
        options = dict(f.metadata[_OPTIONS])
        name = options.pop("flag", "--" + f.name.replace("_", "-"))
        positional = not name.startswith("-")
        if not positional:  # argparse takes a positional's dest from its name
            options.setdefault("dest", f.name)
        options["help"] = _help(f)
        kind = _base_type(hints[f.name])
        if kind is bool and "action" not in options:
            options["action"] = (
                argparse.BooleanOptionalAction if f.default is True else "store_true"
            )
        elif kind in (int, float) and "action" not in options:
            options.setdefault("type", kind)
        if unset_is_none:
            options["default"] = None
        elif f.default is dataclasses.MISSING:
            if not positional:  # a positional is required by being positional
                options["required"] = True
        else:
            options["default"] = f.default
        target.add_argument(name, **options)


def _help(f: dataclasses.Field) -> str:
    text = f.metadata[_HELP]
    if "default" in text or any(f.default is unset for unset in (dataclasses.MISSING, None, False)):
        return text
    return f"{text} (default: {'on' if f.default is True else repr(f.default)})"


def _base_type(hint):
    """int for `int` and `int | None`; the hint itself otherwise."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else hint
    return hint


def values_of(ns: argparse.Namespace, cls) -> dict:
    """The parsed values of `cls`'s flag fields, by field name."""
    return {f.name: getattr(ns, f.name) for f in flag_fields(cls)}
