"""Tables for reports: Markdown (Dagster metadata, files) and aligned plain text (terminal)."""

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


def text_table(headers: Sequence[Any], rows: Sequence[Sequence[Any]], indent: str = "  ") -> str:
    """Columns padded to their widest cell, a dashed rule under the headers."""
    cells = [[str(c) for c in row] for row in [headers, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    rule = ["-" * w for w in widths]
    return "\n".join(
        indent + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True))
        for row in [cells[0], rule, *cells[1:]]
    )
