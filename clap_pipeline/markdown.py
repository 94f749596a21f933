"""Markdown tables for reports and Dagster metadata."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def markdown_cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(headers: Sequence[Any], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured table; pipes and newlines in cells are escaped."""
    out = ["| " + " | ".join(markdown_cell(h) for h in headers) + " |"]
    out.append("|" + "|".join("---" for _ in headers) + "|")
    out += ["| " + " | ".join(markdown_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(out)
