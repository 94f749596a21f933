"""The one table renderer: alignment in text, escaping in Markdown, documents both ways."""

from __future__ import annotations

import pytest

from clap_pipeline.tables import (
    Code,
    Heading,
    Paragraph,
    Table,
    markdown_cell,
    render_markdown,
    render_text,
)


def test_text_columns_line_up_and_numbers_align_right() -> None:
    table = Table(
        ["rank", "title", "score"],
        [[1, "a long title", "0.5000"], [10, "b", "12.2500"]],
        right=frozenset({0, 2}),
    )
    assert table.text().splitlines() == [
        "rank  title           score",
        "----  ------------  -------",
        "   1  a long title   0.5000",
        "  10  b             12.2500",
    ]


def test_text_indent_and_no_trailing_spaces() -> None:
    lines = Table(["a", "b"], [["xx", ""], ["y", "z"]], indent="  ").text().splitlines()
    assert lines == ["  a   b", "  --  -", "  xx", "  y   z"]


def test_text_escapes_terminal_controls_and_rejects_ragged_rows() -> None:
    text = Table(["t"], [["Red\x1b[31m\u202e"]]).text()
    assert "\x1b" not in text and "\u202e" not in text
    assert "Red\\x1b[31m\\u202e" in text
    with pytest.raises(ValueError, match="table row 1 has 1 cells, 2 headers"):
        Table(["a", "b"], [["only one"]]).text()


def test_markdown_escapes_pipes_newlines_and_controls() -> None:
    md = Table(["a|b", "c"], [["x | y", "line 1\nline 2\r\n\x07bell"]]).markdown()
    assert md.splitlines() == [
        "| a\\|b | c |",
        "|---|---|",
        "| x \\| y | line 1 line 2 \\x07bell |",
    ]
    # Every row keeps its column count: escaped pipes are not separators.
    for line in md.splitlines():
        assert line.replace("\\|", "").count("|") == 3
    assert markdown_cell(3.5) == "3.5" and markdown_cell(None) == "None"


def test_one_document_two_renderings() -> None:
    blocks = [
        Paragraph("**2 runs** of `exp`."),
        Heading("Per epoch"),
        Table(["run", "epoch"], [["r1", 1]]),
        Paragraph("Set `max_epochs`:"),
        Code("ops:\n  x: 1\n", "yaml"),
    ]
    assert render_markdown(blocks) == (
        "**2 runs** of `exp`.\n\n**Per epoch**\n\n| run | epoch |\n|---|---|\n| r1 | 1 |"
        "\n\nSet `max_epochs`:\n\n```yaml\nops:\n  x: 1\n```\n"
    )
    assert render_text(blocks) == (
        "2 runs of exp.\n\nPer epoch\nrun  epoch\n---  -----\nr1   1"
        "\n\nSet max_epochs:\n\nops:\n  x: 1\n"
    )
