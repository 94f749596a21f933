"""Captions from a table: a user's own (or generated) descriptions of their tracks.

The five templates say what the metadata says (title, artist, genre, tags). A user who
has captions (their own, pseudo-captions written by a language model as TTMR++ does,
the demo's from its arrangements) names a Parquet or CSV file with a ``track_id`` and a
``caption`` column (``CLAP_CAPTIONS``); a track may have several rows. How they are
used (``CLAP_CAPTIONS_MODE``):

- ``mixed``: a track's captions join its template renderings, the texts training draws
  from each epoch (``resample_templates``); the stored prompt, which the evaluation
  uses, stays the template one;
- ``captions``: a track with captions is described by them alone (its stored prompt is
  one of them, chosen by (seed, track_id) as templates are); tracks without keep the
  templates;
- ``templates``: the file is ignored.

Bad rows are counted by reason and reported, never fatal: a track_id that is not an
integer or not a selected track, an empty caption, one over ``MAX_CAPTION_CHARS``, a
duplicate of the same track's caption. Captions are cleaned like metadata
(``prompts.clean_text``). A file that cannot be read as a table with those two columns
is an error naming it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from clap_pipeline.metadata.prompts import clean_text

CAPTION_COLUMNS = ("track_id", "caption")
MAX_CAPTION_CHARS = 400  # CLAP's text tower reads 77 tokens; a longer text is a paragraph
BAD_REASONS = {
    "malformed": "not a CSV row of two fields (quote captions that hold commas)",
    "bad_track_id": "track_id is not an integer",
    "unknown_track": "track_id is not a selected track",
    "empty": "empty caption",
    "too_long": f"caption over {MAX_CAPTION_CHARS} characters",
    "duplicate": "the same caption twice for one track",
}


class CaptionsError(ValueError):
    """The captions file cannot be read as a table of captions; the message names it."""


@dataclass
class Captions:
    """The usable captions per track and what was left out, by reason."""

    by_track: dict[int, tuple[str, ...]]
    rows: int  # rows in the file
    bad: Counter = field(default_factory=Counter)  # reason -> rows
    # reason -> its first rows: their track_id, or a malformed CSV row's line and text
    examples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def n_captions(self) -> int:
        return sum(len(c) for c in self.by_track.values())

    def problems(self) -> list[str]:
        """One line per reason: how many rows, the first of them."""
        return [
            f"{count} row(s) left out: {BAD_REASONS[reason]} "
            f"(first: {', '.join(self.examples[reason])})"
            for reason, count in sorted(self.bad.items())
        ]


def _read_table(path: Path) -> tuple[pa.Table, list[str]]:
    """The table and the CSV rows skipped as malformed (line number and text)."""
    if not path.is_file():
        raise CaptionsError(f"captions file {path} does not exist (CLAP_CAPTIONS)")
    parquet = path.suffix.lower() == ".parquet"
    malformed: list[str] = []

    def skip(row) -> str:
        malformed.append(f"line {row.number}: {row.text[:40]!r}")
        return "skip"

    try:
        if parquet:
            table = pq.read_table(path)
        else:
            table = pa_csv.read_csv(
                path,
                read_options=pa_csv.ReadOptions(use_threads=False),  # numbers the lines
                parse_options=pa_csv.ParseOptions(invalid_row_handler=skip),
                convert_options=pa_csv.ConvertOptions(
                    column_types={name: pa.string() for name in CAPTION_COLUMNS}
                ),
            )
    except (pa.ArrowInvalid, OSError) as exc:
        kind = "Parquet" if parquet else "CSV"
        raise CaptionsError(f"captions file {path} is not a readable {kind} table ({exc})") from exc
    missing = [c for c in CAPTION_COLUMNS if c not in table.column_names]
    if missing:
        raise CaptionsError(
            f"captions file {path} lacks column(s) {missing} (it has {table.column_names}): "
            "write one row per caption with columns track_id, caption"
        )
    return table, malformed


def _track_id(value: object) -> int | None:
    try:
        number = float(str(value).strip())
    except ValueError:
        return None
    return int(number) if number.is_integer() else None


def read_captions(path: str | Path, known_ids: Collection[int]) -> Captions:
    """The file's captions of ``known_ids``, cleaned, in file order; bad rows counted."""
    table, malformed = _read_table(Path(path))
    known = set(known_ids)
    out = Captions(by_track={}, rows=table.num_rows + len(malformed))
    kept: dict[int, list[str]] = {}

    def reject(reason: str, row: str) -> None:
        out.bad[reason] += 1
        examples = out.examples.setdefault(reason, [])
        if len(examples) < 5:
            examples.append(row)

    for row in malformed:
        reject("malformed", row)

    ids = table.column("track_id").to_pylist()
    texts = table.column("caption").to_pylist()
    for raw_id, raw_text in zip(ids, texts, strict=True):
        track_id = _track_id(raw_id) if raw_id is not None else None
        text = clean_text(raw_text)
        where = f"track_id {raw_id!r}" if track_id is None else f"track_id {track_id}"
        if track_id is None:
            reject("bad_track_id", where)
        elif track_id not in known:
            reject("unknown_track", where)
        elif text is None:
            reject("empty", where)
        elif len(text) > MAX_CAPTION_CHARS:
            reject("too_long", where)
        elif text in kept.get(track_id, ()):
            reject("duplicate", where)
        else:
            kept.setdefault(track_id, []).append(text)
    out.by_track = {t: tuple(c) for t, c in sorted(kept.items())}
    return out
