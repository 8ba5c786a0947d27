"""Command-line flags made from a config dataclass: each option's default, help text and choices live in one place,
the dataclass field, so that a flag cannot drift from the setting it fills (``train`` and ``serve`` use this)."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import field
from typing import Any


def option(default: Any = None, *, help: str = "", choices: tuple[str, ...] | None = None):  # noqa: A002
    """A config field that is also a command-line flag: its default, help text and choices."""
    return field(default=default, metadata={"help": help, "choices": choices})


def add_flags(parser: argparse.ArgumentParser, config_class: type, skip: tuple[str, ...] = ()) -> None:
    """One flag per field made with :func:`option`, typed from its annotation; a boolean is ``--name`` /
    ``--no-name``, and a list is a flag given once per item."""
    for f in dataclasses.fields(config_class):
        if f.name in skip or "help" not in f.metadata:
            continue
        flag, kind = "--" + f.name.replace("_", "-"), str(f.type)
        help_text, choices = f.metadata["help"], f.metadata.get("choices")
        if kind == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_text)
        elif kind.startswith("list"):  # repeated: --model A --model B
            parser.add_argument(flag, action="append", default=f.default, help=help_text)
        else:
            convert = int if kind.startswith("int") else float if kind.startswith("float") else str
            parser.add_argument(flag, type=convert, default=f.default, choices=choices, help=help_text)


def config_from(config_class: type, args: argparse.Namespace, **overrides: Any) -> Any:
    """The config that the parsed flags describe (fields without a flag keep their defaults)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(config_class)
              if "help" in f.metadata and hasattr(args, f.name)}
    return config_class(**{**values, **overrides})


__all__ = ["add_flags", "config_from", "option"]
