"""Command-line flags made from config fields (as TRL's ``TrlParser`` makes them from its
dataclasses): one default, one help text and one bound per option, all in config.py.

A field ``max_prompt_length`` becomes ``--max-prompt-length``; its type gives the argparse type,
a ``Literal`` the choices, a bool ``--flag/--no-flag``; its description is the help, followed by
the default. Every flag defaults to None ("not given"), so a config file's value or the field's
default applies, and the result is validated by pydantic like the config file itself
(``config.override``), so ``--lr -1`` fails as ``lr: Input should be greater than 0``.
"""

from __future__ import annotations

import argparse
import types
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel


def _base_type(annotation: Any) -> Any:
    """``int`` for ``int | None``, the Literal itself for a Literal, the first type of Annotated."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _base_type(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _base_type(args[0]) if len(args) == 1 else str
    return annotation


def flag_name(field: str, prefix: str = "") -> str:
    return "--" + (prefix + field).replace("_", "-")


def _flag_fields(model: type[BaseModel], skip: tuple[str, ...], only: tuple[str, ...] = ()):
    """(name, field, type) of the scalar fields that get a flag: not nested configs, not lists."""
    for name, field in model.model_fields.items():
        kind = _base_type(field.annotation)
        if (
            name in skip
            or (only and name not in only)
            or (isinstance(kind, type) and issubclass(kind, BaseModel))
            or typing.get_origin(kind) is list
        ):
            continue
        yield name, field, kind


def add_flags(
    parser: argparse.ArgumentParser,
    model: type[BaseModel],
    prefix: str = "",
    skip: tuple[str, ...] = (),
    aliases: dict[str, str] | None = None,
    only: tuple[str, ...] = (),
) -> None:
    """One flag per scalar field of ``model`` (those in ``only`` when given) not in ``skip``;
    ``aliases`` maps field -> an extra flag name (kept for flags users know, e.g. ``--dpo-steps``)."""
    aliases = aliases or {}
    for name, field, kind in _flag_fields(model, skip, only):
        default = field.get_default(call_default_factory=True)
        help_text = (field.description or name.replace("_", " ")).replace("%", "%%")
        if default is not None and not isinstance(default, bool):
            shown = f"{default:.4g}" if isinstance(default, float) else default  # 2/3 reads 0.6667
            help_text += f" (default {shown})"
        names = [flag_name(name, prefix)] + ([aliases[name]] if name in aliases else [])
        if kind is bool:
            parser.add_argument(
                *names,
                dest=prefix + name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=help_text + (f" (default {'on' if default else 'off'})" if default is not None else ""),
            )
        elif typing.get_origin(kind) is Literal:
            parser.add_argument(*names, dest=prefix + name, choices=typing.get_args(kind), default=None, help=help_text)
        else:
            kind = kind if kind in (int, float, Path) else str
            parser.add_argument(
                *names, dest=prefix + name, type=kind, default=None, help=help_text, metavar=name.upper()
            )


def given(
    args: argparse.Namespace,
    model: type[BaseModel],
    prefix: str = "",
    skip: tuple[str, ...] = (),
    only: tuple[str, ...] = (),
) -> dict[str, Any]:
    """The values of ``model``'s flags (as ``add_flags`` made them) that the user gave."""
    out = {}
    for name, _, _ in _flag_fields(model, skip, only):
        value = getattr(args, prefix + name, None)
        if value is not None:
            out[name] = value
    return out
