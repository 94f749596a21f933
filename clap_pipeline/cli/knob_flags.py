"""A stage's knob group (``knobs.py``) as command-line flags, derived, never re-typed."""

from __future__ import annotations

import argparse
import types
import typing
from typing import Any

from clap_pipeline.knobs import knobs_of


def add_knob_flags(parser: argparse.ArgumentParser, group: type) -> None:
    """``--name`` for each knob of ``group`` that has a flag: type, choices, default, help."""
    for k in knobs_of(group):
        if not k.knob.flag:
            continue
        kind = _value_type(k.type)
        flag = "--" + k.name.replace("_", "-")
        options: dict[str, Any] = {
            "default": k.knob.default,
            "help": f"{k.knob.describe()} (default {k.knob.default})",
        }
        if kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(kind) is list:
            options.update(nargs="*", type=typing.get_args(kind)[0])
        else:
            options["type"] = kind
            if k.knob.choices is not None:
                options["choices"] = k.knob.choices
        parser.add_argument(flag, dest=k.name, **options)


def _value_type(annotation: Any) -> Any:
    """``X`` of ``X | None`` (an unset flag keeps the knob's None default)."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        (kind,) = [a for a in typing.get_args(annotation) if a is not type(None)]
        return kind
    return annotation


def knob_values(args: argparse.Namespace, group: type) -> dict[str, Any]:
    """The values of ``group``'s flagged knobs in parsed ``args``."""
    return {k.name: getattr(args, k.name) for k in knobs_of(group) if k.knob.flag}
