"""FMA metadata: ``tracks.csv`` / ``genres.csv`` -> DuckDB tables ``tracks`` and ``genres``.

``tracks.csv`` is pandas' ``to_csv`` of a frame with two column levels: three
header lines (groups, fields, ``track_id``), then one RFC 4180 record per track
whose quoted fields may hold newlines. DuckDB's native CSV reader parses it as
text; typed SQL then turns

* the Python-repr list columns (``['rock', "it's"]``, ``[21, 76]``) into
  ``VARCHAR[]`` / ``INTEGER[]``: a regex fast path covers literals without
  backslash escapes (nearly all cells); the rest go to ``ast.literal_eval`` in a
  Python UDF, so every cell agrees with the reference loader. A cell that does
  not parse becomes NULL and is reported with its track_id;
* dates into TIMESTAMP, and the dataset's ``-1`` "unknown" integers into NULL.

Unlike pandas, strings such as ``NA`` or ``None`` stay strings (pandas' default
``na_values`` would turn a track titled "NA" into NaN); only empty cells are NULL.

The new tables are built aside (``tracks_new``, ``genres_new``) and swapped in
one transaction, so a failed or killed load leaves the previous tables intact.
"""

from __future__ import annotations

import ast
import codecs
import csv
import hashlib
import re
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import duckdb

from clap_pipeline.dataset import (
    COLUMN_KINDS,
    DATE,
    FLOAT,
    FMA_COLUMNS,
    INT,
    INT_LIST,
    MAX_TRACK_ID,
    SOURCE_TABLE,
    STR,
    STR_LIST,
    TRACKS_TABLE,
)
from clap_pipeline.reporting import Log
from clap_pipeline.storage import table_exists, transaction

GENRES_COLUMNS = ("genre_id", "#tracks", "parent", "title", "top_level")

GENRES_TABLE = "genres"
STAGING = {TRACKS_TABLE: "tracks_new", GENRES_TABLE: "genres_new"}
# One row: the sha256 of the tracks.csv the tables were loaded from (the data version
# that retraining compares against), replaced in the same transaction as the tables.
# Regex fast path for Python list reprs (RE2 syntax). A string literal without
# backslash escapes cannot contain its own quote character, so after a full
# match, extracting the literals left to right splits the list exactly.
_STR_LITERAL = r"""'[^'\\]*'|"[^"\\]*\""""
_STR_LIST_RE = rf"\[(?:(?:{_STR_LITERAL})(?:, (?:{_STR_LITERAL}))*)?\]"
# At most 9 digits, so the INTEGER cast cannot overflow; longer numbers go to Python.
_INT_LIST_RE = r"\[(?:-?\d{1,9}(?:, -?\d{1,9})*)?\]"
_INT32 = (-(2**31), 2**31 - 1)
# Whitespace that Python's str.strip() removes in ASCII (DuckDB's trim() only strips spaces).
_WS_SQL = "' ' || chr(9) || chr(10) || chr(11) || chr(12) || chr(13)"
_WS_PY = " \t\n\v\f\r"
_MAX_LISTED = 20


class FmaFormatError(ValueError):
    """The input is not an FMA metadata file; the message names the file and line or ids."""


@dataclass(frozen=True)
class BadCell:
    """A non-empty cell that could not be parsed to its column's type (stored as NULL)."""

    track_id: int
    column: str


@dataclass(frozen=True)
class LoadSummary:
    tracks: int
    genres: int
    tracks_sha256: str
    genres_sha256: str
    bad_cells: tuple[BadCell, ...]
    ignored_columns: tuple[str, ...]
    seconds: float

    def bad_cell_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for cell in self.bad_cells:
            counts[cell.column] = counts.get(cell.column, 0) + 1
        return dict(sorted(counts.items()))


@dataclass(frozen=True)
class TracksProfile:
    """What the `tracks` asset reports about the loaded table."""

    rows: int
    columns: tuple[tuple[str, str], ...]  # (name, DuckDB type)
    null_counts: dict[str, int]
    genre_top_counts: tuple[tuple[str | None, int], ...]  # most frequent first


# --------------------------------------------------------------------------- helpers


def lookup_key(title: str | None, artist: str | None) -> str | None:
    """``title||artist`` lower-cased and trimmed, as in the `tracks` column of that name.

    Used to match audio files named outside FMA's scheme through their ID3 tags.
    """
    if not title and not artist:
        return None
    return f"{(title or '').strip(_WS_PY).lower()}||{(artist or '').strip(_WS_PY).lower()}"


def parse_list_literal(text: str, element: type) -> list | None:
    """A Python list repr of ``str`` or ``int`` as ``ast.literal_eval`` reads it, else None."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    if not isinstance(value, list):
        return None
    if element is str:
        for item in value:
            if not isinstance(item, str):
                return None
            try:
                item.encode("utf-8")  # lone surrogates such as '\ud800' cannot be stored
            except UnicodeEncodeError:
                return None
        return value
    for item in value:
        if type(item) is not int or not _INT32[0] <= item <= _INT32[1]:
            return None
    return value


def file_sha256(path: Path, chunk_bytes: int = 8 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)  # releases the GIL: runs beside DuckDB's parse
    return digest.hexdigest()


def check_utf8(path: Path, chunk_bytes: int = 8 << 20) -> None:
    """Raise FmaFormatError naming the (physical) line of the first byte that is not UTF-8."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    newlines = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                # exc positions count the bytes carried over from the previous chunk first.
                carried = len(exc.object) - len(chunk)
                start = max(exc.start - carried, 0)
                line = newlines + chunk.count(b"\n", 0, start) + 1
                raise FmaFormatError(
                    f"{path} line {line}: not UTF-8 ({exc.reason}: "
                    f"{exc.object[exc.start : exc.start + 4]!r})"
                ) from exc
            newlines += chunk.count(b"\n")
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError as exc:
        raise FmaFormatError(
            f"{path} line {newlines + 1}: not UTF-8 (truncated character at the end)"
        ) from exc


def _read_header_rows(path: Path, n: int) -> list[list[str]]:
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: set FMA_METADATA_DIR, or run `clap-pipeline demo-data` "
            "(offline demo) or `clap-pipeline fetch-fma` (real FMA)"
        )
    if path.stat().st_size == 0:
        raise FmaFormatError(f"{path} line 1: the file is empty")
    rows: list[list[str]] = []
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            for row in csv.reader(handle):
                rows.append(row)
                if len(rows) == n:
                    break
    except UnicodeDecodeError:
        check_utf8(path)  # raises, naming the line
        raise
    return rows


def read_tracks_header(path: Path) -> list[str]:
    """Validate the three header lines; return a DuckDB column name for every CSV column.

    FMA columns are named ``<group>_<field>``; unknown extra columns (ignored)
    ``_extra_<i>=<group>.<field>``.
    """
    rows = _read_header_rows(path, 3)
    expected = "three header lines: groups, fields, then 'track_id' (pandas' to_csv of FMA)"
    for line, (row, first) in enumerate(zip(rows, ("", "", "track_id"), strict=False), start=1):
        if not row or row[0] != first:
            got = row[0] if row else ""
            raise FmaFormatError(
                f"{path} line {line}: first cell is {got!r}, expected {first!r}; "
                f"expected {expected}"
            )
    if len(rows) < 3:
        raise FmaFormatError(f"{path} line {len(rows) + 1}: header ends early; expected {expected}")
    groups, fields, index = rows
    if len({len(groups), len(fields), len(index)}) != 1:
        raise FmaFormatError(
            f"{path} lines 1-3: header lines have {len(groups)}, {len(fields)} and "
            f"{len(index)} cells; expected {expected}"
        )
    if any(cell for cell in index[1:]):
        raise FmaFormatError(
            f"{path} line 3: expected 'track_id' followed by empty cells; expected {expected}"
        )
    names = ["track_id"]
    seen: set[str] = set()
    for i, (group, field) in enumerate(zip(groups[1:], fields[1:], strict=True), start=1):
        name = f"{group}_{field}"
        if name in seen:
            raise FmaFormatError(f"{path} lines 1-2: column {group}.{field} appears twice")
        seen.add(name)
        names.append(name if name in COLUMN_KINDS else f"_extra_{i}={group}.{field}")
    missing = [f"{g}.{f}" for g, f, _ in FMA_COLUMNS if f"{g}_{f}" not in seen]
    if missing:
        raise FmaFormatError(
            f"{path} lines 1-2: not FMA's tracks.csv, missing {len(missing)} column(s): "
            + ", ".join(missing)
        )
    return names


def read_genres_header(path: Path) -> list[str]:
    rows = _read_header_rows(path, 1)
    header = rows[0] if rows else []
    missing = [c for c in GENRES_COLUMNS if c not in header]
    if missing:
        raise FmaFormatError(
            f"{path} line 1: not FMA's genres.csv, missing column(s): {', '.join(missing)}"
        )
    if len(set(header)) != len(header):
        raise FmaFormatError(f"{path} line 1: duplicated column names in {header}")
    return header


# --------------------------------------------------------------------------- SQL


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _csv_source(path: Path, names: Sequence[str], skip: int, header: bool) -> str:
    columns = ", ".join(f"{_lit(n)}: 'VARCHAR'" for n in names)
    return (
        f"read_csv({_lit(str(path))}, columns={{{columns}}}, header={str(header).lower()}, "
        f"skip={skip}, delim=',', quote='\"', escape='\"', auto_detect=false, "
        "strict_mode=true, null_padding=false)"
    )


def _parse_expr(column: str, kind: str) -> str:
    """SQL that parses the raw text column ``column`` (NULL when it does not parse)."""
    raw = _q(column)
    if kind == STR:
        return f"NULLIF({raw}, '')"
    if kind == INT:
        return f"TRY_CAST({raw} AS BIGINT)"
    if kind == FLOAT:
        return f"TRY_CAST({raw} AS DOUBLE)"
    if kind == DATE:
        # pandas writes date-only columns as YYYY-MM-DD; a bare year is what to_datetime reads too.
        return f"COALESCE(TRY_CAST({raw} AS TIMESTAMP), TRY_STRPTIME({raw}, '%Y'))"
    if kind == STR_LIST:
        return (
            f"CASE WHEN {raw} IS NULL THEN NULL "
            f"WHEN regexp_full_match({raw}, {_lit(_STR_LIST_RE)}) "
            f"THEN list_transform(regexp_extract_all({raw}, {_lit(_STR_LITERAL)}), "
            "lambda s: substr(s, 2, length(s) - 2)) "
            f"ELSE _fma_str_list({raw}) END"
        )
    if kind == INT_LIST:
        return (
            f"CASE WHEN {raw} IS NULL THEN NULL "
            f"WHEN regexp_full_match({raw}, {_lit(_INT_LIST_RE)}) "
            rf"THEN CAST(regexp_extract_all({raw}, '-?\d+') AS INTEGER[]) "
            f"ELSE _fma_int_list({raw}) END"
        )
    raise ValueError(f"unknown column kind {kind!r}")


def track_id_sql(raw: str = "track_id") -> str:
    """SQL parsing a raw track_id cell: plain decimal digits up to MAX_TRACK_ID, else NULL.

    ``TRY_CAST`` alone would take ``0x10`` as 16, ``1e3`` as 1000 and round ``1.5`` to 2.
    """
    return (
        f"CASE WHEN regexp_full_match({raw}, '[0-9]{{1,{len(str(MAX_TRACK_ID))}}}') "
        f"THEN CAST({raw} AS BIGINT) END"
    )


def _records(path: Path) -> Iterator[tuple[int, int, list[str]]]:
    """(record number, physical line it starts on, cells) of each CSV record, headers included.

    DuckDB numbers records ("CSV Error on Line: N"); quoted fields may span lines, so
    record N can start further down the file. For messages only: stops quietly where
    Python's csv module cannot go on.
    """
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as handle:
        reader = csv.reader(handle)
        start = 1
        try:
            for number, row in enumerate(reader, start=1):
                yield number, start, row
                start = reader.line_num + 1
        except csv.Error:
            return


def record_line(path: Path, record: int) -> int | None:
    """The physical line on which CSV record ``record`` (1-based) starts."""
    return next((line for number, line, _ in _records(path) if number == record), None)


def _bad_id_lines(path: Path, values: Sequence[str], header_lines: int = 3) -> dict[str, int]:
    """The physical line of the first record whose track_id cell is each of ``values``."""
    wanted = set(values)
    found: dict[str, int] = {}
    for number, line, row in _records(path):
        cell = row[0] if row else ""
        if number > header_lines and cell in wanted and cell not in found:
            found[cell] = line
            if len(found) == len(wanted):
                break
    return found


def _tracks_select(tracks_csv: Path, names: Sequence[str]) -> str:
    """SELECT producing the `tracks` columns plus ``_problems`` (cells that did not parse)."""
    present = [n for n in names if n in COLUMN_KINDS]
    parsed = ",\n  ".join(
        [f"{track_id_sql()} AS p__track_id"]
        + [f"{_parse_expr(n, COLUMN_KINDS[n])} AS {_q('p__' + n)}" for n in present]
    )
    outputs = ["p__track_id AS track_id"]
    # (condition, label) of a non-empty raw cell whose parsed value is NULL.
    problems = [("p__track_id IS NULL", "'track_id=' || coalesce(track_id, '')")]
    for name, kind in COLUMN_KINDS.items():
        p = _q("p__" + name)
        outputs.append(f"{f'NULLIF({p}, -1)' if kind == INT else p} AS {_q(name)}")
        if kind != STR:
            problems.append((f"{_q(name)} IS NOT NULL AND {p} IS NULL", _lit(name)))
    title, artist = '"p__track_title"', '"p__artist_name"'
    outputs.append(
        f"CASE WHEN {title} IS NULL AND {artist} IS NULL THEN NULL ELSE "
        f"lower(trim(coalesce({title}, ''), {_WS_SQL})) || '||' || "
        f"lower(trim(coalesce({artist}, ''), {_WS_SQL})) END AS lookup_key"
    )
    # The list is only built for the (rare) rows that have a problem.
    any_problem = " OR ".join(f"({cond})" for cond, _ in problems)
    labels = ", ".join(f"CASE WHEN {cond} THEN {label} END" for cond, label in problems)
    outputs.append(
        f"CASE WHEN {any_problem} THEN list_filter([{labels}], lambda x: x IS NOT NULL) "
        "ELSE [] END AS _problems"
    )
    # No ORDER BY: FMA's file is sorted and DuckDB keeps insertion order; sorting the
    # wide table would cost more than the parse. Readers that need an order ask for it.
    return (
        f"SELECT {', '.join(outputs)}\n"
        f"FROM (SELECT *, {parsed}\n FROM {_csv_source(tracks_csv, names, 3, False)})"
    )


_DUCKDB_RECORD = re.compile(r"(?:Invalid Input Error: )?CSV Error on Line: (\d+)")


def _csv_error(path: Path, exc: duckdb.Error) -> FmaFormatError:
    # Keep DuckDB's diagnosis (original line, expected columns), drop its "possible fixes"
    # and option dump. Its "Line: N" counts records: report the file line like every
    # other message (a quoted field can span lines).
    lines = [ln for ln in str(exc).splitlines() if ln.strip()]
    head = []
    for ln in lines:
        if ln.startswith(("Possible", "*", "  ")):
            break
        head.append(ln.strip())
    text = " | ".join(head)[:2000]
    match = _DUCKDB_RECORD.search(text)
    if match:
        record = int(match.group(1))
        line = record_line(path, record)
        where = f"line {line}" if line is not None else f"record {record}"
        text = _DUCKDB_RECORD.sub("CSV error", text, count=1)
        return FmaFormatError(f"{path} {where}: {text}")
    return FmaFormatError(f"{path}: {text}")


def _ids_text(ids: Sequence[object]) -> str:
    shown = ", ".join(str(i) for i in ids[:_MAX_LISTED])
    return shown + (f" ... ({len(ids)} in all)" if len(ids) > _MAX_LISTED else "")


# --------------------------------------------------------------------------- load


def load_metadata(
    con: duckdb.DuckDBPyConnection, tracks_csv: Path, genres_csv: Path, *, log: Log | None = None
) -> LoadSummary:
    """(Re)load tables ``tracks`` and ``genres``; both are replaced in one transaction."""
    say = log or (lambda _msg: None)
    tracks_csv, genres_csv = Path(tracks_csv), Path(genres_csv)
    started = time.perf_counter()
    names = read_tracks_header(tracks_csv)
    genre_names = read_genres_header(genres_csv)
    ignored = tuple(n.split("=", 1)[1] for n in names if n.startswith("_extra_"))
    check_utf8(genres_csv)  # tiny; tracks.csv is checked by DuckDB while it parses
    genres_sha = file_sha256(genres_csv)
    say(
        f"parsing {tracks_csv} ({tracks_csv.stat().st_size / 1e6:.1f} MB, "
        f"{len(names) - 1} columns) with DuckDB"
    )
    with ThreadPoolExecutor(1, thread_name_prefix="sha256") as hashing:
        tracks_sha = hashing.submit(file_sha256, tracks_csv)  # beside DuckDB's parse
        _register_list_parsers(con)
        try:
            n_tracks, bad_cells, n_genres = _build_aside_and_swap(
                con, tracks_csv, names, genres_csv, genre_names, say, tracks_sha.result
            )
        finally:
            con.remove_function("_fma_str_list")
            con.remove_function("_fma_int_list")
        summary = LoadSummary(
            tracks=n_tracks,
            genres=n_genres,
            tracks_sha256=tracks_sha.result(),
            genres_sha256=genres_sha,
            bad_cells=bad_cells,
            ignored_columns=ignored,
            seconds=time.perf_counter() - started,
        )
    say(
        f"tables tracks ({n_tracks} rows, {len(bad_cells)} unparsable cells) and genres "
        f"({n_genres} rows) replaced in {summary.seconds:.1f} s"
    )
    return summary


def _register_list_parsers(con: duckdb.DuckDBPyConnection) -> None:
    """Python fallbacks for list cells the regex fast path does not cover (escapes).

    null_handling="special": they may return NULL, for a cell that does not parse.
    """
    con.create_function(
        "_fma_str_list",
        lambda s: None if s is None else parse_list_literal(s, str),
        ["VARCHAR"],
        "VARCHAR[]",
        null_handling="special",
    )
    con.create_function(
        "_fma_int_list",
        lambda s: None if s is None else parse_list_literal(s, int),
        ["VARCHAR"],
        "INTEGER[]",
        null_handling="special",
    )


def _build_aside_and_swap(
    con: duckdb.DuckDBPyConnection,
    tracks_csv: Path,
    names: Sequence[str],
    genres_csv: Path,
    genre_names: Sequence[str],
    say: Log,
    tracks_sha256: Callable[[], str],
) -> tuple[int, tuple[BadCell, ...], int]:
    for staging in STAGING.values():
        con.execute(f"DROP TABLE IF EXISTS {staging}")  # left by a killed earlier load
    try:
        t0 = time.perf_counter()
        try:
            con.execute(
                f"CREATE TABLE {STAGING[TRACKS_TABLE]} AS {_tracks_select(tracks_csv, names)}"
            )
        except duckdb.InvalidInputException as exc:
            if "unicode" in str(exc).lower():
                check_utf8(tracks_csv)  # raises, naming the physical line
            raise _csv_error(tracks_csv, exc) from exc
        n_tracks, bad_cells = _validate_tracks(con, tracks_csv)
        say(f"parsed {n_tracks} tracks in {time.perf_counter() - t0:.1f} s")
        n_genres = _build_genres(con, genres_csv, genre_names)
        say(f"parsed {n_genres} genres from {genres_csv}")
        _swap(con, tracks_csv, tracks_sha256())
    except BaseException:
        for staging in STAGING.values():
            con.execute(f"DROP TABLE IF EXISTS {staging}")
        raise
    return n_tracks, bad_cells, n_genres


def _validate_tracks(con: duckdb.DuckDBPyConnection, path: Path) -> tuple[int, tuple[BadCell, ...]]:
    staging = STAGING[TRACKS_TABLE]
    n = con.execute(f"SELECT count(*) FROM {staging}").fetchone()[0]
    if n == 0:
        raise FmaFormatError(f"{path} line 4: no track records after the three header lines")
    bad_ids = [
        r[0]
        for r in con.execute(
            f"SELECT DISTINCT p FROM (SELECT unnest(_problems) AS p FROM {staging}) "
            "WHERE p LIKE 'track_id=%' ORDER BY p"
        ).fetchall()
    ]
    if bad_ids:
        values = [b.removeprefix("track_id=") for b in bad_ids]
        lines = _bad_id_lines(path, values)
        values.sort(key=lambda v: lines.get(v, 0))
        shown = [f"line {lines[v]}: {v!r}" if v in lines else repr(v) for v in values]
        raise FmaFormatError(
            f"{path}: track_id must be a plain decimal integer from 0 to {MAX_TRACK_ID:,} "
            f"(FMA's NNN/NNNNNN.mp3 layout), got {_ids_text(shown)}"
        )
    dups = _duplicate_keys(con, staging, "track_id")
    if dups:
        raise FmaFormatError(f"{path}: duplicate track_id(s): {_ids_text(dups)}")
    bad_cells = tuple(
        BadCell(int(tid), col)
        for tid, col in con.execute(
            f"SELECT track_id, unnest(_problems) FROM {staging} "
            "WHERE len(_problems) > 0 ORDER BY 1, 2"
        ).fetchall()
    )
    con.execute(f"ALTER TABLE {staging} DROP COLUMN _problems")
    con.execute(f"ALTER TABLE {staging} ADD PRIMARY KEY (track_id)")
    return int(n), bad_cells


def _build_genres(con: duckdb.DuckDBPyConnection, path: Path, header: Sequence[str]) -> int:
    staging = STAGING[GENRES_TABLE]
    source = _csv_source(path, header, 1, False)
    try:
        con.execute(
            f"""CREATE TABLE {staging} AS
            SELECT CAST(genre_id AS BIGINT) AS genre_id,
                   CAST("#tracks" AS BIGINT) AS n_tracks,
                   CAST(parent AS BIGINT) AS parent,
                   title,
                   CAST(top_level AS BIGINT) AS top_level
            FROM {source} ORDER BY genre_id"""
        )
    except (duckdb.InvalidInputException, duckdb.ConversionException) as exc:
        raise _csv_error(path, exc) from exc
    n = con.execute(f"SELECT count(*) FROM {staging}").fetchone()[0]
    if n == 0:
        raise FmaFormatError(f"{path} line 2: no genre records after the header")
    nulls = con.execute(f"SELECT count(*) FROM {staging} WHERE genre_id IS NULL").fetchone()[0]
    if nulls:
        raise FmaFormatError(f"{path}: {nulls} record(s) without genre_id")
    dups = _duplicate_keys(con, staging, "genre_id")
    if dups:
        raise FmaFormatError(f"{path}: duplicate genre_id(s): {_ids_text(dups)}")
    con.execute(f"ALTER TABLE {staging} ADD PRIMARY KEY (genre_id)")
    return int(n)


def _duplicate_keys(con: duckdb.DuckDBPyConnection, table: str, column: str) -> list:
    """Values of ``column`` that occur more than once in ``table``, sorted."""
    rows = con.execute(
        f"SELECT {column} FROM {table} GROUP BY 1 HAVING count(*) > 1 ORDER BY 1"
    ).fetchall()
    return [r[0] for r in rows]


def _swap(con: duckdb.DuckDBPyConnection, tracks_csv: Path, tracks_sha256: str) -> None:
    """Replace both tables in one transaction: readers see the old pair or the new one."""
    with transaction(con):
        for table, staging in STAGING.items():
            con.execute(f"DROP TABLE IF EXISTS {table}")
            con.execute(f"ALTER TABLE {staging} RENAME TO {table}")
        con.execute(
            f"CREATE OR REPLACE TABLE {SOURCE_TABLE} AS SELECT ?::VARCHAR AS tracks_csv, "
            "?::VARCHAR AS tracks_sha256, now() AS loaded_at",
            [str(tracks_csv), tracks_sha256],
        )


def read_track_ids(tracks_csv: Path) -> list[int]:
    """The track ids of a tracks.csv, read as the loader reads them, without loading the rest.

    For noticing new tracks cheaply; ids that do not parse are left out (the loader
    reports them when it runs).
    """
    tracks_csv = Path(tracks_csv)
    names = read_tracks_header(tracks_csv)
    con = duckdb.connect()  # in memory: never touches the project's DuckDB file
    try:
        column = con.execute(
            f"SELECT {track_id_sql()} AS id FROM {_csv_source(tracks_csv, names, 3, False)}"
        ).fetchnumpy()["id"]
    except duckdb.Error as exc:
        raise _csv_error(tracks_csv, exc) from exc
    finally:
        con.close()
    ids = column.compressed() if hasattr(column, "compressed") else column
    return sorted({int(i) for i in ids})


# --------------------------------------------------------------------------- profile


def profile_tracks(con: duckdb.DuckDBPyConnection) -> TracksProfile:
    """Row count, schema, null counts and the genre_top distribution of table ``tracks``."""
    if not table_exists(con, TRACKS_TABLE):
        raise FmaFormatError("no `tracks` table: materialize the `tracks` asset first")
    columns = tuple(
        (name, str(dtype)) for name, dtype, *_ in con.execute(f"DESCRIBE {TRACKS_TABLE}").fetchall()
    )
    rows, *nulls = con.execute(
        f"SELECT count(*), count(*) - count(track_title), count(*) - count(artist_name), "
        f"count(*) - count(track_genre_top) FROM {TRACKS_TABLE}"
    ).fetchone()
    genre_counts = tuple(
        (g, int(c))
        for g, c in con.execute(
            f"SELECT track_genre_top, count(*) AS n FROM {TRACKS_TABLE} "
            "GROUP BY 1 ORDER BY n DESC, 1 NULLS LAST"
        ).fetchall()
    )
    return TracksProfile(
        rows=int(rows),
        columns=columns,
        null_counts=dict(
            zip(("track_title", "artist_name", "track_genre_top"), map(int, nulls), strict=True)
        ),
        genre_top_counts=genre_counts,
    )


def track_id_problems(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Empty when table ``tracks`` has rows and unique, non-null track_ids."""
    if not table_exists(con, TRACKS_TABLE):
        return ["table `tracks` does not exist"]
    rows, nulls, distinct = con.execute(
        f"SELECT count(*), count(*) - count(track_id), count(DISTINCT track_id) FROM {TRACKS_TABLE}"
    ).fetchone()
    problems = []
    if rows == 0:
        problems.append("table `tracks` is empty")
    if nulls:
        problems.append(f"{nulls} row(s) with a NULL track_id")
    if distinct != rows - nulls:
        dups = [
            r[0]
            for r in con.execute(
                f"SELECT track_id FROM {TRACKS_TABLE} WHERE track_id IS NOT NULL "
                "GROUP BY 1 HAVING count(*) > 1 ORDER BY 1"
            ).fetchall()
        ]
        problems.append(f"duplicate track_id(s): {_ids_text(dups)}")
    return problems
