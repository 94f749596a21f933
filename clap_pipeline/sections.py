"""The sections table: which genre plays where in a track (``<metadata dir>/sections.csv``).

Columns ``track_id, start_s, end_s, genre`` (the genre as genres.csv titles it), one row per
section. ``demo-data --sections`` writes it for tracks whose halves are two genres
(``demo/sections.py``); the evaluation reads it to measure whether search finds the moment
a query names (``evaluation/moments.py``).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

SECTIONS_NAME = "sections.csv"
SECTIONS_HEADER = ("track_id", "start_s", "end_s", "genre")


@dataclass(frozen=True)
class Section:
    track_id: int
    start_s: float
    end_s: float
    genre: str  # as genres.csv titles it: the query is "<genre> music"


def sections_csv_text(sections: list[Section]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(SECTIONS_HEADER)
    for s in sorted(sections, key=lambda s: (s.track_id, s.start_s)):
        writer.writerow((s.track_id, f"{s.start_s:g}", f"{s.end_s:g}", s.genre))
    return out.getvalue()


def read_sections(path: Path) -> list[Section]:
    """The sections table (ValueError naming the file and row of a bad one)."""
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    if not rows or tuple(rows[0]) != SECTIONS_HEADER:
        raise ValueError(f"{path}: the header must be {','.join(SECTIONS_HEADER)}")
    sections = []
    for line, row in enumerate(rows[1:], start=2):
        try:
            track_id, start, end, genre = row
            section = Section(int(track_id), float(start), float(end), genre.strip())
        except ValueError as exc:
            raise ValueError(
                f"{path}, row {line}: {row!r} is not track_id,start_s,end_s,genre"
            ) from exc
        if not (0 <= section.start_s < section.end_s) or not section.genre:
            raise ValueError(f"{path}, row {line}: needs 0 <= start_s < end_s and a genre")
        sections.append(section)
    return sections
