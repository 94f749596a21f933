"""What a long job hands the code that started it, without Dagster: log lines and metadata.

A core function takes a :data:`Log`, the one type of a job's log (``print``, a list's
``append``, or ``defs/metadata_values.dagster_log(context)`` in an asset), and returns its
materialization metadata as plain values; the kind of
each value says how Dagster shows it (``defs/resources.dagster_metadata``), or how it
travels through Dagster Pipes from a child process (:func:`pipes_metadata`):

int, float, bool, str (text), ``Path`` (path), ``Markdown``, ``Url``, dict / list (JSON),
``Table`` (columns and records).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Where a job writes its progress lines, one at a time. A warning is a line that starts
# with WARNING (``warn``): printed as such, a Dagster warning in an asset.
Log = Callable[[str], None]
WARNING = "warning: "


def warn(log: Log, msg: str) -> None:
    log(WARNING + msg)


class Markdown(str):
    """Metadata shown as Markdown."""


class Url(str):
    """Metadata shown as a link."""


@dataclass(frozen=True)
class Table:
    """A metadata table: (name, type) columns and one record (column -> value) a row."""

    columns: tuple[tuple[str, str], ...]
    records: tuple[dict[str, Any], ...]


def metadata_kind(value: object) -> str:
    """path | int | float | bool | md | url | text | json | table | null."""
    kinds: tuple[tuple[type | tuple[type, ...], str], ...] = (
        (bool, "bool"),  # before int: a bool is an int
        (numbers.Integral, "int"),  # numpy's integers too
        (numbers.Real, "float"),
        (Path, "path"),
        (Markdown, "md"),
        (Url, "url"),
        (str, "text"),
        ((dict, list, tuple), "json"),
        (Table, "table"),
        (type(None), "null"),
    )
    for types, kind in kinds:
        if isinstance(value, types):
            return kind
    raise TypeError(f"no metadata kind for {type(value).__name__}: {value!r}")


def pipes_metadata(values: Mapping[str, object]) -> dict[str, dict[str, Any]]:
    """``values`` as Dagster Pipes metadata (``type``, ``raw_value``: plain JSON)."""
    out = {}
    for name, value in values.items():
        kind = metadata_kind(value)
        raw: Any = value
        if isinstance(value, Table):
            schema = [{"name": n, "type": t} for n, t in value.columns]
            raw = {"records": list(value.records), "schema": schema}
        elif isinstance(value, Path | str):
            raw = str(value)
        elif kind in ("int", "float"):
            raw = int(value) if kind == "int" else float(value)
        elif isinstance(value, tuple):
            raw = list(value)
        out[name] = {"type": kind, "raw_value": raw}
    return out
