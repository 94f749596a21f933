"""One table model for every report, rendered as Markdown (Dagster metadata, files) or as
aligned plain text (terminal): evaluation, model comparison and search results.

A report is a list of blocks (``Paragraph``, ``Heading``, ``Code``, ``Table``);
``render_markdown`` and ``render_text`` turn the same blocks into either form, so the
two never drift apart. Cells are sanitised for where they land: Markdown escapes ``|``
and folds newlines; both forms write terminal control characters as escapes
(``\\x1b``, ``\\u202e``), since metadata read from files may carry them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

# C0 controls, DEL, C1 controls and the bidi overrides a terminal would act on.
_NOT_C0 = "\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069"
_UNPRINTABLE = re.compile(f"[\x00-\x1f{_NOT_C0}]")
UNPRINTABLE_IN_JSON = re.compile(f"[{_NOT_C0}]")  # json.dumps escapes C0 itself


def printable(text: str) -> str:
    """``text`` with terminal control characters written as escapes (``\\x1b``, ``\\u202e``)."""
    return _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def markdown_cell(value: Any) -> str:
    """One Markdown table cell: newlines folded to spaces, controls escaped, ``|`` escaped."""
    text = " ".join(str(value).splitlines())
    return printable(text).replace("|", "\\|")


@dataclass(frozen=True)
class Table:
    """Headers and rows of cells (any value; ``str()`` is shown).

    ``right`` holds the indices of right-aligned columns in the text form (numbers);
    ``indent`` prefixes every text line.
    """

    headers: Sequence[Any]
    rows: Sequence[Sequence[Any]]
    right: frozenset[int] = field(default_factory=frozenset)
    indent: str = ""

    def markdown(self) -> str:
        """A GitHub-flavoured table."""
        out = ["| " + " | ".join(markdown_cell(h) for h in self.headers) + " |"]
        out.append("|" + "|".join("---" for _ in self.headers) + "|")
        out += ["| " + " | ".join(markdown_cell(v) for v in row) + " |" for row in self.rows]
        return "\n".join(out)

    def text(self) -> str:
        """Columns padded to their widest cell, a dashed rule under the headers."""
        cells = [[printable(str(c)) for c in row] for row in [self.headers, *self.rows]]
        for i, row in enumerate(cells):
            if len(row) != len(self.headers):
                raise ValueError(f"table row {i} has {len(row)} cells, {len(self.headers)} headers")
        widths = [max(len(row[i]) for row in cells) for i in range(len(self.headers))]

        def line(row: Sequence[str]) -> str:
            padded = (
                c.rjust(w) if i in self.right else c.ljust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
            return (self.indent + "  ".join(padded)).rstrip()

        return "\n".join(line(r) for r in [cells[0], ["-" * w for w in widths], *cells[1:]])


def markdown_table(headers: Sequence[Any], rows: Sequence[Sequence[Any]]) -> str:
    """Shorthand for ``Table(headers, rows).markdown()``."""
    return Table(headers, rows).markdown()


# --------------------------------------------------------------------------- documents


@dataclass(frozen=True)
class Paragraph:
    """Prose. Inline ``code`` and **bold** markers are dropped in the text form."""

    text: str


@dataclass(frozen=True)
class Heading:
    """A short title line: bold in Markdown, plain in text."""

    text: str


@dataclass(frozen=True)
class Code:
    """A fenced block in Markdown, the bare lines in text."""

    text: str
    language: str = ""


Block = Paragraph | Heading | Code | Table


def plain(text: str) -> str:
    """Markdown's inline markers removed for a terminal."""
    return text.replace("**", "").replace("`", "")


def render_markdown(blocks: Sequence[Block]) -> str:
    """Blocks separated by blank lines, ending with one newline."""
    parts = []
    for block in blocks:
        if isinstance(block, Table):
            parts.append(block.markdown())
        elif isinstance(block, Heading):
            parts.append(f"**{block.text}**")
        elif isinstance(block, Code):
            parts.append(f"```{block.language}\n{block.text.rstrip()}\n```")
        else:
            parts.append(block.text)
    return "\n\n".join(parts).rstrip() + "\n"


def render_text(blocks: Sequence[Block]) -> str:
    """Blocks for a terminal: a heading sits right above its table, ending with one newline."""
    parts: list[str] = []
    for i, block in enumerate(blocks):
        if isinstance(block, Table):
            if i and isinstance(blocks[i - 1], Heading):
                parts[-1] += "\n" + block.text()
            else:
                parts.append(block.text())
        elif isinstance(block, Code):
            parts.append(block.text.rstrip())
        else:
            parts.append(plain(block.text))
    return "\n\n".join(parts).rstrip() + "\n"
