"""tracks.csv / genres.csv -> DuckDB: agreement with FMA's reference loader, bad input, atomicity."""

from __future__ import annotations

import ast
import csv
import datetime as dt
import io
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from clap_pipeline.config import REPO_ROOT
from clap_pipeline.dataset import (
    COLUMN_KINDS,
    DATE,
    FMA_COLUMNS,
    INT_LIST,
    STR_LIST,
    TRACK_COLUMN_TYPES,
    tracks_ddl,
)
from clap_pipeline.demo.fma_synthetic import (
    DATE_COLUMNS,
    LIST_COLUMNS,
    QUOTED_TAGS,
    compare_with_reference,
    many_tags,
    quirky_tracks,
    reference_load,
    synthetic_tracks,
    write_genres_csv,
    write_metadata,
    write_tracks_csv,
)
from clap_pipeline.metadata.fma import (
    BadCell,
    FmaFormatError,
    check_utf8,
    load_metadata,
    lookup_key,
    parse_list_literal,
    profile_tracks,
    read_track_ids,
    track_id_problems,
)
from clap_pipeline.selection import loaded_tracks_sha256


def _load(root: Path, frame: pd.DataFrame | None = None, db: Path | None = None):
    meta = write_metadata(root / "meta", frame)
    db = db or root / "clap.duckdb"
    with duckdb.connect(str(db)) as con:
        summary = load_metadata(con, meta / "tracks.csv", meta / "genres.csv")
    return summary, meta, db


def _rows(db: Path, sql: str) -> list[tuple]:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(sql).fetchall()


# --------------------------------------------------------------------------- layout


def test_columns_follow_fma_layout() -> None:
    groups = [g for g, _, _ in FMA_COLUMNS]
    assert len(FMA_COLUMNS) == 52
    assert {g: groups.count(g) for g in set(groups)} == {
        "album": 13,
        "artist": 17,
        "set": 2,
        "track": 20,
    }
    assert [(g, f) for g, f, _ in FMA_COLUMNS] == sorted((g, f) for g, f, _ in FMA_COLUMNS)
    # The reference loader's list and date columns are ours too.
    assert {(g, f) for g, f, k in FMA_COLUMNS if k in (STR_LIST, INT_LIST)} == set(LIST_COLUMNS)
    assert {(g, f) for g, f, k in FMA_COLUMNS if k == DATE} == set(DATE_COLUMNS)


# --------------------------------------------------------------------------- agreement


def test_quirky_file_matches_reference_loader_on_every_cell(tmp_path: Path) -> None:
    summary, meta, db = _load(tmp_path)
    reference = reference_load(meta / "tracks.csv")
    with duckdb.connect(str(db), read_only=True) as con:
        compared, mismatches = compare_with_reference(con, reference)
    assert mismatches == []
    assert compared == len(reference) * 52 == summary.tracks * 52
    assert summary.bad_cells == ()


def test_synthetic_file_matches_reference_loader(tmp_path: Path) -> None:
    frame = synthetic_tracks(1500, seed=3)
    _, meta, db = _load(tmp_path, frame)
    with duckdb.connect(str(db), read_only=True) as con:
        compared, mismatches = compare_with_reference(con, reference_load(meta / "tracks.csv"))
    assert mismatches == []
    assert compared == 1500 * 52


def test_types_and_values(tmp_path: Path) -> None:
    _, _, db = _load(tmp_path)
    types = dict(_rows(db, "SELECT column_name, column_type FROM (DESCRIBE tracks)"))
    assert list(types)[::53] == ["track_id", "lookup_key"]
    assert len(types) == 54
    assert types["track_id"] == "BIGINT"
    assert types["track_tags"] == types["album_tags"] == types["artist_tags"] == "VARCHAR[]"
    assert types["track_genres"] == types["track_genres_all"] == "INTEGER[]"
    assert types["track_date_created"] == types["artist_active_year_begin"] == "TIMESTAMP"
    assert types["artist_latitude"] == "DOUBLE" and types["track_bit_rate"] == "BIGINT"
    constraints = _rows(
        db, "SELECT constraint_type FROM duckdb_constraints() WHERE table_name = 'tracks'"
    )
    assert ("PRIMARY KEY",) in constraints

    first = _rows(
        db,
        "SELECT track_id, track_title, artist_name, track_genre_top, track_genres, "
        "album_title, set_subset FROM tracks WHERE track_id IN (2, 3, 5, 10, 20) ORDER BY 1",
    )
    assert first == [
        (2, "Food", "AWOL", "Hip-Hop", [21], "AWOL - A Way Of Life", "small"),
        (3, "Electric Ave", "AWOL", "Hip-Hop", [21], "AWOL - A Way Of Life", "medium"),
        (5, "This World", "AWOL", "Hip-Hop", [21], "AWOL - A Way Of Life", "small"),
        (10, "Freeway", "Kurt Vile", "Pop", [10], "Constant Hitmaker", "small"),
        (20, "Spiritual Level", "Nicky Cook", None, [76, 103], "Niris", "large"),
    ]
    (tags,) = _rows(db, "SELECT track_tags FROM tracks WHERE track_id = 30")[0]
    assert tags == QUOTED_TAGS
    assert _rows(db, "SELECT len(track_tags) FROM tracks WHERE track_id = 46") == [(150,)]
    assert _rows(db, "SELECT track_tags FROM tracks WHERE track_id = 46")[0][0] == many_tags(150)
    # -1 gaps are NULL; a missing title and license are NULL.
    assert _rows(
        db,
        "SELECT album_id, album_tracks, track_bit_rate, track_number, track_license, "
        "album_date_released FROM tracks WHERE track_id = 48",
    ) == [(None, None, None, None, None, None)]
    assert _rows(db, "SELECT track_title FROM tracks WHERE track_id = 26") == [(None,)]
    assert _rows(
        db,
        "SELECT track_date_created, album_date_released, artist_active_year_begin "
        "FROM tracks WHERE track_id = 2",
    ) == [(dt.datetime(2008, 11, 26, 1, 48, 12), dt.datetime(2009, 1, 5), dt.datetime(2006, 1, 1))]
    assert _rows(db, "SELECT artist_members, artist_bio FROM tracks WHERE track_id = 20") == [
        ("Luke Fischbeck\nSarah Rara", '<p> "spiritual songs" from Nicky Cook</p>')
    ]
    assert _rows(db, "SELECT count(*) FROM genres") == [(28,)]
    assert _rows(db, "SELECT title, parent, top_level FROM genres WHERE genre_id = 76") == [
        ("Experimental Pop", 10, 10)
    ]


def test_lookup_key(tmp_path: Path) -> None:
    _, _, db = _load(tmp_path)
    keys = dict(_rows(db, "SELECT track_id, lookup_key FROM tracks"))
    assert keys[2] == "food||awol"
    assert keys[26] == "||artist 4"  # no title
    assert keys[1000] == "spaces  around||spaced artist"
    assert keys[134] == "multi\nline title, with comma||björk & the ünïcode band"
    # The Python helper (for ID3 tags of audio files) builds the same keys.
    for tid, title, artist, key in _rows(
        db, "SELECT track_id, track_title, artist_name, lookup_key FROM tracks"
    ):
        assert lookup_key(title, artist) == key, tid
    assert lookup_key(None, None) is None


def test_na_like_strings_stay_strings(tmp_path: Path) -> None:
    # pandas' default na_values turn "NA"/"None" into NaN; our loader keeps the text.
    frame = quirky_tracks()
    frame.loc[2, ("track", "title")] = "NA"
    frame.loc[3, ("artist", "name")] = "None"
    _, meta, db = _load(tmp_path, frame)
    assert _rows(db, "SELECT track_title FROM tracks WHERE track_id = 2") == [("NA",)]
    assert _rows(db, "SELECT artist_name FROM tracks WHERE track_id = 3") == [("None",)]
    assert pd.isna(reference_load(meta / "tracks.csv").loc[2, ("track", "title")])


def test_list_literals_agree_with_literal_eval(tmp_path: Path) -> None:
    # Random tags over an alphabet of quotes, backslashes, commas, brackets, control
    # characters and unicode, through pandas' to_csv and our loader.
    rng = random.Random(11)
    alphabet = [*"ab ,'\"\\[]()\t\n\r", "é", "東", "🎸", "\xa0", "\u200b", "\x00", "\x7f"]
    frame = quirky_tracks()
    expected = {}
    for tid in frame.index:
        tags = [
            "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
            for _ in range(rng.randint(0, 6))
        ]
        frame.at[tid, ("album", "tags")] = tags
        expected[int(tid)] = tags
    summary, meta, db = _load(tmp_path, frame)
    assert summary.bad_cells == ()
    assert dict(_rows(db, "SELECT track_id, album_tags FROM tracks")) == expected
    raw = reference_load(meta / "tracks.csv")[("album", "tags")]
    assert {int(k): v for k, v in raw.items()} == expected


@pytest.mark.parametrize(
    ("text", "element", "expected"),
    [
        ("[]", str, []),
        ("['a', \"it's\"]", str, ["a", "it's"]),
        ("['tab\\there', 'x\\\\y']", str, ["tab\there", "x\\y"]),
        ("[1, 2]", str, None),  # ints in a string list
        ("['a', 1]", str, None),
        ("['\\ud800']", str, None),  # a lone surrogate cannot be stored in UTF-8
        ("['unterminated", str, None),
        ("('a',)", str, None),  # a tuple, not a list
        ("[21, 76]", int, [21, 76]),
        ("[True]", int, None),
        ("[99999999999]", int, None),  # beyond INTEGER
        ("__import__('os')", int, None),
    ],
)
def test_parse_list_literal(text: str, element: type, expected: list | None) -> None:
    assert parse_list_literal(text, element) == expected
    if expected is not None:
        assert ast.literal_eval(text) == expected


# --------------------------------------------------------------------------- bad input


def test_unparsable_cells_become_null_and_are_reported(tmp_path: Path) -> None:
    frame = quirky_tracks()
    frame[("track", "listens")] = frame[("track", "listens")].astype(object)
    frame.at[5, ("track", "tags")] = "['unterminated"
    frame.at[10, ("track", "genres")] = "[10, 'x']"
    frame.at[10, ("artist", "tags")] = "[1, 2]"
    frame.at[20, ("track", "listens")] = "lots"
    frame.at[26, ("track", "genres_all")] = "[99999999999]"
    summary, _, db = _load(tmp_path, frame)
    assert summary.bad_cells == (
        BadCell(5, "track_tags"),
        BadCell(10, "artist_tags"),
        BadCell(10, "track_genres"),
        BadCell(20, "track_listens"),
        BadCell(26, "track_genres_all"),
    )
    assert summary.bad_cell_counts()["track_tags"] == 1
    assert _rows(
        db,
        "SELECT track_id, track_tags, track_genres, track_listens FROM tracks "
        "WHERE track_id IN (5, 10, 20) ORDER BY 1",
    ) == [(5, None, [21], 1293), (10, [], None, 1293), (20, [], [76, 103], None)]
    assert _rows(db, "SELECT count(*) FROM tracks") == [(13,)]  # rows are kept


def test_missing_columns_are_named(tmp_path: Path) -> None:
    frame = quirky_tracks().drop(columns=[("track", "title"), ("artist", "name")])
    meta = write_metadata(tmp_path, frame)
    with duckdb.connect(str(tmp_path / "db.duckdb")) as con, pytest.raises(FmaFormatError) as err:
        load_metadata(con, meta / "tracks.csv", meta / "genres.csv")
    assert "missing 2 column(s): artist.name, track.title" in str(err.value)
    assert str(meta / "tracks.csv") in str(err.value)


def test_extra_columns_are_ignored_and_reported(tmp_path: Path) -> None:
    frame = quirky_tracks()
    frame[("track", "mood")] = "calm"
    summary, _, db = _load(tmp_path, frame)
    assert summary.ignored_columns == ("track.mood",)
    assert len(_rows(db, "DESCRIBE tracks")) == 54


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "line 1: the file is empty"),
        (b"track_id,album_title,track_title\n2,A,B\n", "line 1: first cell is 'track_id'"),
        (b",album\n,title\n", "line 3: header ends early"),
        (b",album\n,title\ntrack_id,x\n2,A\n", "line 3: expected 'track_id' followed by empty"),
        (b",album,track\n,title\ntrack_id,,\n", "header lines have 3, 2 and 3 cells"),
        (b",album\n,title\nid,\n2,A\n", "line 3: first cell is 'id'"),
    ],
)
def test_bad_headers_name_file_and_line(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "tracks.csv"
    path.write_bytes(content)
    write_genres_csv(tmp_path / "genres.csv")
    with duckdb.connect() as con, pytest.raises(FmaFormatError) as err:
        load_metadata(con, path, tmp_path / "genres.csv")
    assert message in str(err.value)
    assert str(path) in str(err.value)


def test_header_without_records(tmp_path: Path) -> None:
    path = write_tracks_csv(quirky_tracks().iloc[0:0], tmp_path / "tracks.csv")
    write_genres_csv(tmp_path / "genres.csv")
    with duckdb.connect() as con, pytest.raises(FmaFormatError, match="line 4: no track records"):
        load_metadata(con, path, tmp_path / "genres.csv")


def test_non_utf8_byte_is_reported_with_its_physical_line(tmp_path: Path) -> None:
    path = write_tracks_csv(quirky_tracks(), tmp_path / "tracks.csv")
    write_genres_csv(tmp_path / "genres.csv")
    data = path.read_bytes()
    at = data.index(b"Second paragraph")  # inside a quoted multi-line bio
    path.write_bytes(data[:at] + b"\xff" + data[at:])
    line = data.count(b"\n", 0, at) + 1
    with duckdb.connect() as con, pytest.raises(FmaFormatError) as err:
        load_metadata(con, path, tmp_path / "genres.csv")
    assert f"{path} line {line}: not UTF-8" in str(err.value)
    # In a header line too.
    path.write_bytes(data.replace(b",comments,", b",comm\xe9nts,", 1))
    with duckdb.connect() as con, pytest.raises(FmaFormatError, match="line 2: not UTF-8"):
        load_metadata(con, path, tmp_path / "genres.csv")


def test_check_utf8_across_chunk_boundaries(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    good = "é東🎸\n".encode() * 50
    path.write_bytes(good)
    for chunk in (1, 2, 3, 5, 7):
        check_utf8(path, chunk_bytes=chunk)  # multi-byte characters split across chunks
    path.write_bytes(good + b"ok\xc3(\n")
    for chunk in (1, 3, 64):
        with pytest.raises(FmaFormatError, match="line 51: not UTF-8"):
            check_utf8(path, chunk_bytes=chunk)
    path.write_bytes(good + "東".encode()[:2])
    with pytest.raises(FmaFormatError, match=r"line 51: not UTF-8 \(truncated"):
        check_utf8(path, chunk_bytes=4)


def test_duplicate_track_ids_are_named(tmp_path: Path) -> None:
    frame = quirky_tracks()
    frame = pd.concat([frame, frame.loc[[5, 2]]]).sort_index()
    meta = write_metadata(tmp_path, frame)
    with duckdb.connect() as con, pytest.raises(FmaFormatError) as err:
        load_metadata(con, meta / "tracks.csv", meta / "genres.csv")
    assert "duplicate track_id(s): 2, 5" in str(err.value)


def test_non_integer_track_id_is_named(tmp_path: Path) -> None:
    path = write_tracks_csv(quirky_tracks(), tmp_path / "tracks.csv")
    write_genres_csv(tmp_path / "genres.csv")
    path.write_bytes(path.read_bytes().replace(b"\n10,", b"\nten,", 1))
    with (
        duckdb.connect() as con,
        pytest.raises(FmaFormatError, match=r"integer .*, got line \d+: 'ten'"),
    ):
        load_metadata(con, path, tmp_path / "genres.csv")


@pytest.mark.parametrize("value", ["0x10", "1e3", "1.5", "-3", "1234567", " 12", "+5", "１２"])
def test_loose_track_ids_are_refused_with_line_and_value(tmp_path: Path, value: str) -> None:
    """Only plain decimal ids 0..999999: TRY_CAST would read 0x10 as 16 and round 1.5 to 2."""
    path = write_tracks_csv(quirky_tracks(), tmp_path / "tracks.csv")
    write_genres_csv(tmp_path / "genres.csv")
    data = path.read_bytes()
    at = data.index(b"\n10,") + 1
    path.write_bytes(data[:at] + value.encode() + data[at + 2 :])
    line = data.count(b"\n", 0, at) + 1
    with duckdb.connect() as con, pytest.raises(FmaFormatError) as err:
        load_metadata(con, path, tmp_path / "genres.csv")
    assert str(path) in str(err.value)
    assert f"line {line}: {value!r}" in str(err.value)
    assert value.strip() not in [str(i) for i in read_track_ids(path)]


def test_record_with_wrong_field_count_names_the_file_and_its_line(tmp_path: Path) -> None:
    path = write_tracks_csv(quirky_tracks(), tmp_path / "tracks.csv")
    write_genres_csv(tmp_path / "genres.csv")
    data = path.read_bytes()
    path.write_bytes(data + b"155321,1,2,3\n")
    line = data.count(b"\n") + 1
    records = len(list(csv.reader(io.StringIO(data.decode("utf-8")))))
    assert records + 1 < line  # quoted fields span lines: DuckDB's record number differs
    with duckdb.connect() as con, pytest.raises(FmaFormatError) as err:
        load_metadata(con, path, tmp_path / "genres.csv")
    assert str(err.value).startswith(f"{path} line {line}: CSV error")
    assert "155321,1,2,3" in str(err.value)


def test_bad_genres_file(tmp_path: Path) -> None:
    meta = write_metadata(tmp_path)
    (meta / "genres.csv").write_text("genre_id,title\n1,Rock\n")
    with duckdb.connect() as con, pytest.raises(FmaFormatError) as err:
        load_metadata(con, meta / "tracks.csv", meta / "genres.csv")
    assert "missing column(s): #tracks, parent, top_level" in str(err.value)
    (meta / "genres.csv").unlink()
    with duckdb.connect() as con, pytest.raises(FileNotFoundError, match=r"genres\.csv"):
        load_metadata(con, meta / "tracks.csv", meta / "genres.csv")


# --------------------------------------------------------------------------- atomicity


def _snapshot(db: Path) -> tuple[list[tuple], list[tuple], list[str], list[tuple]]:
    return (
        _rows(db, "SELECT track_id, track_title, track_tags FROM tracks ORDER BY 1"),
        _rows(db, "SELECT * FROM genres ORDER BY 1"),
        sorted(r[0] for r in _rows(db, "SELECT table_name FROM information_schema.tables")),
        _rows(db, "SELECT tracks_csv, tracks_sha256 FROM tracks_source"),
    )


def test_failed_load_leaves_previous_tables(tmp_path: Path) -> None:
    _, _, db = _load(tmp_path / "good")
    before = _snapshot(db)
    assert before[2] == ["genres", "tracks", "tracks_source"]

    # Tracks fail (duplicates) ...
    dup = synthetic_tracks(50, seed=1)
    meta = write_metadata(tmp_path / "dup", pd.concat([dup, dup.iloc[:1]]))
    with duckdb.connect(str(db)) as con, pytest.raises(FmaFormatError, match="duplicate"):
        load_metadata(con, meta / "tracks.csv", meta / "genres.csv")
    assert _snapshot(db) == before

    # ... or tracks parse and genres fail afterwards.
    meta = write_metadata(tmp_path / "badgenres", synthetic_tracks(50, seed=1))
    (meta / "genres.csv").write_text(
        "genre_id,#tracks,parent,title,top_level\n1,1,0,A,1\n1,1,0,B,1\n"
    )
    with duckdb.connect(str(db)) as con, pytest.raises(FmaFormatError, match="duplicate genre_id"):
        load_metadata(con, meta / "tracks.csv", meta / "genres.csv")
    assert _snapshot(db) == before

    # A good load replaces both.
    with duckdb.connect(str(db)) as con:
        summary = load_metadata(con, meta / "tracks.csv", tmp_path / "good" / "meta" / "genres.csv")
    assert summary.tracks == 50
    assert _rows(db, "SELECT count(*) FROM tracks") == [(50,)]
    # The source's hash moved with the tables (what retraining compares against).
    with duckdb.connect(str(db), read_only=True) as con:
        assert loaded_tracks_sha256(con) == summary.tracks_sha256 != before[3][0][1]
    assert track_id_problems(duckdb.connect(str(db), read_only=True)) == []


KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    import duckdb
    from clap_pipeline.metadata.fma import load_metadata

    def log(message):
        print(message, flush=True)
        if message.startswith("parsed") and message.endswith("s") and "tracks" in message:
            os.kill(os.getpid(), signal.SIGKILL)  # new tables built aside, not swapped yet

    con = duckdb.connect(sys.argv[1])
    load_metadata(con, Path(sys.argv[2]), Path(sys.argv[3]), log=log)
    """
)


def test_killed_load_leaves_previous_tables(tmp_path: Path) -> None:
    _, _, db = _load(tmp_path / "good")
    before = _snapshot(db)
    meta = write_metadata(tmp_path / "new", synthetic_tracks(300, seed=2))
    proc = subprocess.run(
        [sys.executable, "-c", KILLER, str(db), str(meta / "tracks.csv"), str(meta / "genres.csv")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert "parsed 300 tracks" in proc.stdout
    tracks_before, genres_before, _, source_before = before
    after_tracks, after_genres, tables, source_after = _snapshot(db)
    assert (after_tracks, after_genres, source_after) == (
        tracks_before,
        genres_before,
        source_before,
    )
    assert {"tracks", "genres"} <= set(tables)
    # The next load cleans up whatever the killed one left aside.
    with duckdb.connect(str(db)) as con:
        assert load_metadata(con, meta / "tracks.csv", meta / "genres.csv").tracks == 300
    assert _snapshot(db)[2] == ["genres", "tracks", "tracks_source"]


def test_profile(tmp_path: Path) -> None:
    _, _, db = _load(tmp_path)
    with duckdb.connect(str(db), read_only=True) as con:
        profile = profile_tracks(con)
    assert profile.rows == 13
    assert profile.null_counts == {"track_title": 1, "artist_name": 0, "track_genre_top": 2}
    assert profile.genre_top_counts[:2] == (("Rock", 4), ("Hip-Hop", 3))
    assert sum(c for _, c in profile.genre_top_counts) == 13
    assert [name for name, _ in profile.columns] == ["track_id", *COLUMN_KINDS, "lookup_key"]


def test_tracks_ddl_gives_the_loaded_tables_types(tmp_path: Path) -> None:
    """Fixtures build `tracks` with ``tracks_ddl``: the same types as the real load."""
    _, _, db = _load(tmp_path)
    with duckdb.connect(str(db), read_only=True) as con:
        loaded = dict(profile_tracks(con).columns)
        con_mem = duckdb.connect()
        con_mem.execute(tracks_ddl())
        declared = dict(
            con_mem.execute(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_name = 'tracks' ORDER BY ordinal_position"
            ).fetchall()
        )
    assert declared == loaded == TRACK_COLUMN_TYPES
    with pytest.raises(ValueError, match=r"not columns of `tracks`.*'track_titel'"):
        tracks_ddl(["track_titel"])
