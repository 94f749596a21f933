"""Prompt templates: clean fields, no leaked missing values, seeded choice, Parquet contract."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clap_pipeline.dataset import PROMPTS_SCHEMA, read_prompts, tracks_ddl, write_prompts
from clap_pipeline.demo.fma_synthetic import write_metadata
from clap_pipeline.metadata.fma import load_metadata
from clap_pipeline.metadata.prompts import (
    N_TEMPLATES,
    TEMPLATE_NAMES,
    TEMPLATE_PATTERNS,
    TrackText,
    allowed_leak_words,
    build_prompts,
    choose_template,
    clean_tags,
    clean_text,
    content_hash,
    leak_problems,
    missing_track_ids,
    read_track_texts,
    render_all,
    track_text,
)

FOOD = TrackText(2, "Food", "AWOL", "AWOL - A Way Of Life", "Hip-Hop", ("lo-fi", "boom bap"))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        (float("nan"), None),
        ("", None),
        ("   ", None),
        ("nan", None),
        ("None", None),
        ("NULL", None),
        ("  Food  ", "Food"),
        ("Multi\nline\t title", "Multi line title"),
        ("Rock &amp; Roll", "Rock & Roll"),
        ('Say "Hi"', "Say 'Hi'"),
        ("zero\u200bwidth\xa0space", "zerowidth space"),
        ("None of the Above", "None of the Above"),
        (42, "42"),
    ],
)
def test_clean_text(value: object, expected: str | None) -> None:
    assert clean_text(value) == expected


def test_clean_tags() -> None:
    tags = clean_tags(
        [
            ["Ambient", "ambient", "AMBIENT", "", None, "nan", "AWOL", "hip-hop", " drone "],
            ["lo-fi", "Drone", "tape", "noise", "field recording", "sixth"],
        ],
        artist="AWOL",
        genres=["Hip-Hop", None],
    )
    # Case-insensitive de-duplication keeps the first spelling; artist and genre dropped;
    # at most five, in the original order.
    assert tags == ("Ambient", "drone", "lo-fi", "tape", "noise")
    assert clean_tags([None, []], artist=None, genres=[]) == ()
    assert clean_tags([["a", "b"]], None, [], limit=1) == ("a",)


def test_the_issue_templates() -> None:
    rendered = render_all(FOOD)
    assert len(rendered) == N_TEMPLATES
    assert rendered[0] == '"Food" by AWOL. Genre: Hip-Hop. Tags: lo-fi, boom bap.'
    assert rendered[1] == 'A Hip-Hop track called "Food" by AWOL.'
    assert rendered[2] == 'Hip-Hop music by AWOL, from the album "AWOL - A Way Of Life".'
    assert rendered[3] == '"Food", from the album "AWOL - A Way Of Life" by AWOL.'
    assert rendered[4] == "Music by AWOL, tagged lo-fi, boom bap."
    assert len(set(rendered)) == N_TEMPLATES  # five different sentences
    # The documented patterns are what the templates render when every field is set.
    fields = {
        "title": "Food",
        "artist": "AWOL",
        "album": "AWOL - A Way Of Life",
        "genre": "Hip-Hop",
        "tags": "lo-fi, boom bap",
    }
    assert [p.format(**fields) for p in TEMPLATE_PATTERNS] == list(rendered)


def test_missing_fields_drop_phrases_or_templates() -> None:
    no_tags_genre = TrackText(2, "Food", "AWOL", None, None, ())
    assert render_all(no_tags_genre) == ('"Food" by AWOL.', None, None, None, None)
    no_title = TrackText(26, None, "AWOL", "LP", "Electronic", ("dub",))
    assert render_all(no_title) == (
        None,
        None,
        'Electronic music by AWOL, from the album "LP".',
        None,
        "Music by AWOL, tagged dub.",
    )
    # "An" before a vowel; no doubled period after a title or artist ending a sentence.
    t = TrackText(3, "Why?", "Inc.", None, "Instrumental", ())
    assert render_all(t)[:2] == (
        '"Why?" by Inc. Genre: Instrumental.',
        'An Instrumental track called "Why?" by Inc.',
    )
    # An album named like the track says nothing new.
    assert render_all(TrackText(4, "Same", "X", "same", None, ()))[3] is None
    assert render_all(TrackText(5, None, None, None, None, ())) == (None,) * N_TEMPLATES


def test_no_leaks_for_any_combination_of_missing_values() -> None:
    missing = [None, "", "  ", float("nan"), "nan", "None", "null"]
    present = {
        "title": ['Say "Hi"', "Food."],
        "artist": ["AWOL", "Artist &amp; Co"],
        "album": ["LP"],
        "genre": ["Hip-Hop", "Easy Listening"],
    }
    tag_options = [[], ["nan", "", None], ["AWOL", "hip-hop", "tape"], ['a "q"', "x"]]
    seen = 0
    for title, artist, album, genre, tags in itertools.product(
        missing[:4] + present["title"],
        missing[3:] + present["artist"],
        missing[:2] + present["album"],
        missing[4:] + present["genre"],
        tag_options,
    ):
        t = track_text(7, title, artist, album, genre, (), [tags])
        for text in render_all(t):
            if text is not None:
                seen += 1
                assert leak_problems(text, allowed_leak_words(t)) == [], text
    assert seen > 1000


def test_leak_problems() -> None:
    assert leak_problems('"Food" by AWOL.') == []
    assert leak_problems('"Food" by None.') == ["contains 'None'"]
    assert leak_problems('"nan" by AWOL.') == ["contains 'nan'"]
    assert leak_problems('A track called "" by AWOL.') == ['contains empty quotes ""']
    assert leak_problems('"Food" by AWOL. Tags: .') == ["contains an empty field (e.g. 'Tags: .')"]
    assert leak_problems('"Food"  by AWOL.') == ["contains a double space"]
    assert leak_problems(" x") == ["leading or trailing whitespace"]
    assert leak_problems("") == ["empty prompt"]
    # "None" that really is in the track's metadata is fine.
    t = TrackText(1, "None of the Above", "AWOL", None, None, ())
    assert leak_problems(render_all(t)[0], allowed_leak_words(t)) == []
    assert "banana" not in str(leak_problems("banana nano Nancy"))  # whole words only


def test_template_choice_is_seeded_and_stable() -> None:
    texts = [
        TrackText(i, f"T{i}", f"A{i}", f"L{i}" if i % 3 else None, "Rock" if i % 2 else None, ())
        for i in range(1, 301)
    ]
    first = build_prompts(texts, seed=0).table
    again = build_prompts(list(reversed(texts)), seed=0).table
    assert first.equals(again)  # same seed, any order: same prompts
    subset = build_prompts(texts[::7], seed=0).table  # other tracks do not matter
    by_id = dict(zip(first["track_id"].to_pylist(), first["template_id"].to_pylist(), strict=True))
    assert all(
        by_id[tid] == tpl
        for tid, tpl in zip(
            subset["track_id"].to_pylist(), subset["template_id"].to_pylist(), strict=True
        )
    )
    other = build_prompts(texts, seed=1).table
    changed = sum(
        a != b
        for a, b in zip(
            first["template_id"].to_pylist(), other["template_id"].to_pylist(), strict=True
        )
    )
    assert 50 < changed < 300
    # Only applicable templates are chosen, and every template gets used.
    for row in first.to_pylist():
        assert row["renderings"][row["template_id"]] == row["prompt"]
    counts = build_prompts(texts, seed=0).template_counts()
    assert set(counts) == {*TEMPLATE_NAMES, "caption"} and counts["caption"] == 0
    assert all(counts[name] > 10 for name in TEMPLATE_NAMES[:4])
    assert counts["tagged"] == 0  # no tags anywhere
    assert choose_template(1, 0, [None] * N_TEMPLATES) is None


def test_build_prompts_table_contract(tmp_path: Path) -> None:
    texts = [FOOD, TrackText(1, None, None, None, None, ()), TrackText(3, "X", "Y", None, None, ())]
    result = build_prompts(texts, seed=0)
    table = result.table
    assert table.schema == PROMPTS_SCHEMA
    assert table["track_id"].to_pylist() == [2, 3]  # sorted; track 1 has no usable field
    assert result.skipped == (1,)
    assert [len(r) for r in table["renderings"].to_pylist()] == [5, 5]
    assert table["renderings"].to_pylist()[1] == ['"X" by Y.', None, None, None, None]

    path = write_prompts(table, tmp_path / "prompts.parquet")
    read = read_prompts(path)
    assert read.schema.remove_metadata() == PROMPTS_SCHEMA
    assert read.equals(table)
    assert content_hash(read) == content_hash(table)
    changed = table.set_column(1, "prompt", pa.array(["a", "b"], pa.string()))
    assert content_hash(changed) != content_hash(table)
    assert [p.name for p in tmp_path.iterdir()] == ["prompts.parquet"]


def test_write_prompts_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_prompts(build_prompts([FOOD], 0).table, tmp_path / "prompts.parquet")
    before = path.read_bytes()
    bad = pa.table({"track_id": pa.array([1], pa.int64())})
    with pytest.raises(ValueError, match="schema"):
        write_prompts(bad, path)

    class Boom(RuntimeError):
        pass

    def exploding_write(*args: object, **kwargs: object) -> None:
        raise Boom("disk full")

    monkeypatch.setattr(pq, "write_table", exploding_write)  # a crash during the write
    with pytest.raises(Boom):
        write_prompts(build_prompts([FOOD], 1).table, path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["prompts.parquet"]
    with pytest.raises(FileNotFoundError, match="prompts"):
        read_prompts(tmp_path / "missing.parquet")


def test_read_track_texts_from_duckdb(tmp_path: Path) -> None:
    meta = write_metadata(tmp_path / "meta")
    db = tmp_path / "clap.duckdb"
    with duckdb.connect(str(db)) as con:
        load_metadata(con, meta / "tracks.csv", meta / "genres.csv")
    with duckdb.connect(str(db), read_only=True) as con:
        texts = {t.track_id: t for t in read_track_texts(con, [2, 20, 30, 1001, 424242])}
        assert missing_track_ids(con, [2, 424242, 3, 7]) == [7, 424242]
    assert set(texts) == {2, 20, 30, 1001}
    # Artist tag "awol" is the artist's own name.
    assert texts[2] == TrackText(2, "Food", "AWOL", "AWOL - A Way Of Life", "Hip-Hop", ())
    # No genre_top: the first of its genres' titles (genres.csv).
    assert texts[20].genre == "Experimental Pop"
    # Track, then album, then artist tags; artist name and genres dropped; five at most.
    assert texts[30].tags == (
        "rock'n'roll",
        "say 'hi'",
        "both ' and '",
        "comma, inside",
        "ünïcødé ☃ 東京",
    )
    assert texts[1001].tags == ("Ambient", "electronic music")  # "electronic" is the genre


def test_read_track_texts_with_a_minimal_tracks_table(tmp_path: Path) -> None:
    # Other parts' tests build a `tracks` table with a few columns only.
    with duckdb.connect(str(tmp_path / "db.duckdb")) as con:
        con.execute(tracks_ddl(["track_title", "artist_name", "track_genre_top"]))
        con.execute("INSERT INTO tracks VALUES (1, 'T', 'A', 'Rock'), (2, NULL, 'B', NULL)")
        texts = read_track_texts(con, [1, 2])
    assert texts == [
        TrackText(1, "T", "A", None, "Rock", ()),
        TrackText(2, None, "B", None, None, ()),
    ]
    with duckdb.connect() as con, pytest.raises(FileNotFoundError, match="tracks"):
        read_track_texts(con, [1])
