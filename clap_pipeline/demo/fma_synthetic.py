"""FMA-format metadata files (tests, benchmarks) and the dataset's reference loader (pandas).

Files are written the way FMA wrote them: pandas ``to_csv`` of a frame with two
column levels (three header lines), Python-repr lists, ``-1`` integer gaps,
datetime columns. ``quirky_tracks()`` holds the real file's quirks on purpose;
``synthetic_tracks(n)`` scales to the full 106,574 records with realistic text.
"""

from __future__ import annotations

import ast
import datetime as dt
import math
import random
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from clap_pipeline.dataset import DATE, FMA_COLUMNS, INT

LIST_COLUMNS = [
    ("track", "tags"),
    ("album", "tags"),
    ("artist", "tags"),
    ("track", "genres"),
    ("track", "genres_all"),
]
DATE_COLUMNS = [
    ("track", "date_created"),
    ("track", "date_recorded"),
    ("album", "date_created"),
    ("album", "date_released"),
    ("artist", "date_created"),
    ("artist", "active_year_begin"),
    ("artist", "active_year_end"),
]
CATEGORY_COLUMNS = [
    ("track", "genre_top"),
    ("track", "license"),
    ("album", "type"),
    ("album", "information"),
    ("artist", "bio"),
]
SUBSETS = ("small", "medium", "large")

# genre_id, #tracks, parent, title, top_level (a part of FMA's 163 genres, same shape).
GENRES: list[tuple[int, int, int, str, int]] = [
    (1, 8693, 38, "Avant-Garde", 38),
    (2, 5271, 0, "International", 2),
    (3, 1752, 0, "Blues", 3),
    (4, 4126, 0, "Jazz", 4),
    (5, 4106, 0, "Classical", 5),
    (8, 868, 0, "Old-Time / Historic", 8),
    (9, 1987, 0, "Country", 9),
    (10, 13845, 0, "Pop", 10),
    (12, 32923, 0, "Rock", 12),
    (13, 730, 0, "Easy Listening", 13),
    (14, 1499, 0, "Soul-RnB", 14),
    (15, 34413, 0, "Electronic", 15),
    (17, 12706, 0, "Folk", 17),
    (20, 1876, 0, "Spoken", 20),
    (21, 8389, 0, "Hip-Hop", 21),
    (25, 9261, 12, "Punk", 12),
    (26, 3718, 12, "Post-Rock", 12),
    (27, 6041, 12, "Lo-Fi", 12),
    (31, 2019, 12, "Metal", 12),
    (32, 7268, 38, "Noise", 38),
    (38, 38154, 0, "Experimental", 38),
    (42, 7206, 15, "Ambient Electronic", 15),
    (47, 2602, 38, "Drone", 38),
    (58, 4048, 12, "Psych-Rock", 12),
    (66, 6162, 12, "Indie-Rock", 12),
    (76, 2126, 10, "Experimental Pop", 10),
    (103, 5349, 17, "Singer-Songwriter", 17),
    (1235, 14938, 0, "Instrumental", 1235),
]
GENRE_TITLES = {g[0]: g[3] for g in GENRES}
TOP_LEVEL = {g[0]: g[4] for g in GENRES}


def _ts(text: str | None) -> pd.Timestamp:
    return pd.Timestamp(text) if text else pd.NaT


def default_row(track_id: int) -> dict[tuple[str, str], Any]:
    """A plain, complete record; tests override the fields they are about."""
    album_id = 1 + track_id // 4
    artist_id = 1 + track_id // 7
    return {
        ("album", "comments"): 0,
        ("album", "date_created"): _ts("2008-11-26 01:44:45"),
        ("album", "date_released"): _ts("2009-01-05"),
        ("album", "engineer"): np.nan,
        ("album", "favorites"): 4,
        ("album", "id"): album_id,
        ("album", "information"): "<p></p>",
        ("album", "listens"): 6073,
        ("album", "producer"): np.nan,
        ("album", "tags"): [],
        ("album", "title"): f"Album {album_id}",
        ("album", "tracks"): 7,
        ("album", "type"): "Album",
        ("artist", "active_year_begin"): _ts("2006-01-01"),
        ("artist", "active_year_end"): pd.NaT,
        ("artist", "associated_labels"): np.nan,
        ("artist", "bio"): f"<p>Artist {artist_id} makes music.</p>",
        ("artist", "comments"): 0,
        ("artist", "date_created"): _ts("2008-11-26 01:42:32"),
        ("artist", "favorites"): 9,
        ("artist", "id"): artist_id,
        ("artist", "latitude"): 40.0583238,
        ("artist", "location"): "New Jersey",
        ("artist", "longitude"): -74.4056612,
        ("artist", "members"): np.nan,
        ("artist", "name"): f"Artist {artist_id}",
        ("artist", "related_projects"): np.nan,
        ("artist", "tags"): [],
        ("artist", "website"): "http://www.example.org",
        ("artist", "wikipedia_page"): np.nan,
        ("set", "split"): "training",
        ("set", "subset"): "large",
        ("track", "bit_rate"): 256000,
        ("track", "comments"): 0,
        ("track", "composer"): np.nan,
        ("track", "date_created"): _ts("2008-11-26 01:48:12"),
        ("track", "date_recorded"): pd.NaT,
        ("track", "duration"): 168,
        ("track", "favorites"): 2,
        ("track", "genre_top"): "Rock",
        ("track", "genres"): [12],
        ("track", "genres_all"): [12],
        ("track", "information"): np.nan,
        ("track", "interest"): 4656,
        ("track", "language_code"): "en",
        ("track", "license"): "Attribution-NonCommercial-ShareAlike 3.0 International",
        ("track", "listens"): 1293,
        ("track", "lyricist"): np.nan,
        ("track", "number"): 3,
        ("track", "publisher"): np.nan,
        ("track", "tags"): [],
        ("track", "title"): f"Title {track_id}",
    }


def tracks_frame(rows: Mapping[int, Mapping[tuple[str, str], Any]]) -> pd.DataFrame:
    """A frame shaped like FMA's: two column levels in file order, index named track_id."""
    columns = [(g, f) for g, f, _ in FMA_COLUMNS]
    ids = sorted(rows)
    data = {col: [rows[i][col] for i in ids] for col in columns}
    frame = pd.DataFrame(data, index=pd.Index(ids, name="track_id"))
    frame.columns = pd.MultiIndex.from_tuples(columns)
    for col in DATE_COLUMNS:
        frame[col] = pd.to_datetime(frame[col])
    return frame


def many_tags(n: int) -> list[str]:
    return [f"tag {i}" if i % 3 else f"Tag-{i}'s" for i in range(n)]


AWOL_BIO = (
    '<p>A Way Of Life, "AWOL" for short, is a hip-hop duo from New Jersey.\n'
    "They formed in 1996, &amp; still play.</p>"
)
QUOTED_TAGS = [
    "rock'n'roll",
    'say "hi"',
    "both ' and \"",
    "comma, inside",
    "ünïcødé ☃ 東京",
    "back\\slash",
    "tab\there",
    "non\xa0breaking",
    "zero\u200bwidth",
    "new\nline",
    "🎸 guitar",
    "",
]


AddRow = Callable[..., None]  # add(track_id, group__field=value, ...)


def _real_first_records(add: AddRow) -> None:
    """FMA's first tracks as they are (AWOL, Kurt Vile, Nicky Cook)."""
    awol = {
        "artist__name": "AWOL",
        "artist__id": 1,
        "artist__bio": AWOL_BIO,
        "artist__tags": ["awol"],
        "album__title": "AWOL - A Way Of Life",
        "album__id": 1,
        "album__tags": [],
        "track__genre_top": "Hip-Hop",
        "track__genres": [21],
        "track__genres_all": [21],
        "track__license": "Attribution-NonCommercial-ShareAlike 3.0 International",
    }
    add(2, track__title="Food", set__subset="small", track__bit_rate=256000, **awol)
    add(3, track__title="Electric Ave", set__subset="medium", **awol)
    add(5, track__title="This World", set__subset="small", track__tags=["hip hop"], **awol)
    add(
        10,
        track__title="Freeway",
        artist__name="Kurt Vile",
        artist__tags=["philly", "kurt vile"],
        album__title="Constant Hitmaker",
        track__genre_top="Pop",
        track__genres=[10],
        track__genres_all=[10],
        set__subset="small",
        set__split="validation",
    )
    add(
        20,
        track__title="Spiritual Level",
        artist__name="Nicky Cook",
        artist__bio='<p> "spiritual songs" from Nicky Cook</p>',
        artist__members="Luke Fischbeck\nSarah Rara",
        album__title="Niris",
        album__information='<p>Recorded live, "in one take", at home.</p>\n<p>Enjoy!</p>',
        track__genre_top=np.nan,
        track__genres=[76, 103],
        track__genres_all=[17, 10, 76, 103],
        set__subset="large",
        set__split="test",
        artist__latitude=np.nan,
        artist__longitude=np.nan,
    )


def _quirk_records(add: AddRow) -> None:
    """Quirks of the values: no title, quotes in tags, 150 tags, gaps (-1, NaN, NaT)."""
    add(26, track__title=np.nan, track__genre_top="Rock", track__tags=["no title"])
    add(
        30,
        track__title='Say "Hello", Goodbye',
        track__tags=QUOTED_TAGS,
        album__tags=["it's", 'a "quote"'],
        artist__tags=["Artist 5", "artist 5", "Rock", "drums"],
    )
    add(46, track__title="Hundred and fifty tags", track__tags=many_tags(150))
    add(
        48,
        track__title="Gaps",
        album__id=-1,
        album__title=np.nan,
        album__tracks=-1,
        album__date_created=pd.NaT,
        album__date_released=pd.NaT,
        track__bit_rate=-1,
        track__number=-1,
        track__license=np.nan,
        track__language_code=np.nan,
        artist__active_year_begin=pd.NaT,
        artist__website=np.nan,
    )


def _text_quirk_records(add: AddRow) -> None:
    """Text the CSV must carry: newlines, unicode, spaces, entities, credits, casing."""
    add(
        134,
        track__title="Multi\nline title, with comma",
        artist__name="Björk & The Ünïcode Band",
        artist__bio="<p>Björk's “friends” — 東京 🎸</p>\n\n<p>Second paragraph</p>",
        album__title='Ça va, "l\'été"',
        track__information='<p>line one\nline two, "quoted"</p>',
        track__genre_top="Experimental",
        track__genres=[1, 32],
        track__genres_all=[1, 32, 38],
        artist__location="Paris, France",
        track__date_recorded=_ts("2007-05-04"),
        artist__active_year_end=_ts("2012-01-01"),
    )
    add(
        1000,
        track__title="  Spaces  around  ",
        artist__name="  Spaced Artist ",
        track__genre_top=np.nan,
        track__genres=[],
        track__genres_all=[],
        album__title="Title 1000",
    )
    add(
        1001,
        track__title="HTML &amp; entities",
        track__composer="J. S. Bach",
        track__lyricist="Anon",
        track__publisher="Label, Inc.",
        album__engineer="Steve",
        album__producer="Someone Else",
        artist__associated_labels="Label A\nLabel B",
        artist__related_projects="Project X, Project Y",
        artist__wikipedia_page="http://en.wikipedia.org/wiki/Example",
        track__genre_top="Electronic",
        track__genres=[42],
        track__genres_all=[15, 42],
        track__tags=["electronic", "Ambient", "ambient", "AMBIENT", "electronic music"],
    )
    add(155320, track__title="Last one", track__genre_top="Instrumental", track__genres=[1235])


def quirky_tracks() -> pd.DataFrame:
    """Real first records of FMA plus every quirk the parser must survive."""
    rows: dict[int, dict[tuple[str, str], Any]] = {}

    def add(track_id: int, **fields: Any) -> None:
        row = default_row(track_id)
        for key, value in fields.items():
            group, field = key.split("__")
            row[(group, field)] = value
        rows[track_id] = row

    _real_first_records(add)
    _quirk_records(add)
    _text_quirk_records(add)
    return tracks_frame(rows)


# --------------------------------------------------------------------------- scale


def _words(text: str) -> list[str]:
    return text.split()


_WORDS = _words(
    "the a of and to in sound music band record live studio guitar drums synth bass "
    "voice night city river light dark love song dream noise echo field tape radio "
    "loop beat rhythm melody harmony piano strings folk punk jazz house techno "
    "Björk café naïve résumé 東京 Ærø Zürich São Paulo"
)
_TAGS = [
    *_words(
        "rock indie electronic experimental folk pop hip-hop ambient lo-fi noise punk "
        "psych field-recordings drone instrumental soundtrack jazz live acoustic "
        "singer-songwriter chiptune 8-bit post-rock shoegaze techno house dub reggae "
        "world latin blues soul funk metal hardcore garage surf spoken-word poetry"
    ),
    *["rock'n'roll", "drum & bass", 'the "real" thing', "d'n'b", "über", "español"],
]
_LICENSES = [
    "Attribution-NonCommercial-ShareAlike 3.0 International",
    "Attribution-NonCommercial-NoDerivatives (aka Music Sharing) 3.0 International",
    "Attribution 3.0 International",
    "Attribution-ShareAlike 3.0 International",
    "Creative Commons Attribution-NonCommercial-NoDerivatives 4.0",
]
_ALBUM_TYPES = ["Album", "Single Tracks", "Live Performance", "Radio Program", "Contest"]


def _sentence(rng: random.Random, n_words: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(n_words))


def _html(rng: random.Random, chars: int) -> str:
    """HTML paragraphs with quotes, commas, entities and newlines, about ``chars`` long."""
    parts: list[str] = []
    size = 0
    while size < chars:
        text = _sentence(rng, rng.randint(8, 30))
        if rng.random() < 0.3:
            text += f', "{_sentence(rng, 3)}"'
        if rng.random() < 0.2:
            text += " &amp; friends"
        para = f"<p>{text}.</p>"
        parts.append(para)
        size += len(para) + 1
    return "\n".join(parts)


def _date(rng: random.Random, start_year: int, end_year: int, with_time: bool) -> pd.Timestamp:
    day = dt.datetime(start_year, 1, 1) + dt.timedelta(
        days=rng.randint(0, (end_year - start_year) * 365)
    )
    if with_time:
        day += dt.timedelta(seconds=rng.randint(0, 86399))
    return pd.Timestamp(day)


def _synthetic_artist(rng: random.Random, a: int) -> dict[tuple[str, str], Any]:
    name = f"{_sentence(rng, rng.randint(1, 3)).title()} {a}"
    return {
        ("artist", "active_year_begin"): _date(rng, 1960, 2010, False)
        if rng.random() < 0.2
        else pd.NaT,
        ("artist", "active_year_end"): _date(rng, 2000, 2017, False)
        if rng.random() < 0.05
        else pd.NaT,
        ("artist", "associated_labels"): _sentence(rng, 3) if rng.random() < 0.1 else np.nan,
        ("artist", "bio"): _html(rng, rng.randint(200, 2500)) if rng.random() < 0.5 else np.nan,
        ("artist", "comments"): rng.choice([0, 0, 1, 3]),
        ("artist", "date_created"): _date(rng, 2008, 2017, True),
        ("artist", "favorites"): rng.randint(0, 300),
        ("artist", "id"): a,
        ("artist", "latitude"): round(rng.uniform(-60, 70), 7) if rng.random() < 0.4 else np.nan,
        ("artist", "location"): _sentence(rng, 2).title() if rng.random() < 0.5 else np.nan,
        ("artist", "longitude"): round(rng.uniform(-170, 170), 7) if rng.random() < 0.4 else np.nan,
        ("artist", "members"): "\n".join(_sentence(rng, 2) for _ in range(rng.randint(1, 4)))
        if rng.random() < 0.3
        else np.nan,
        ("artist", "name"): name,
        ("artist", "related_projects"): _sentence(rng, 4) if rng.random() < 0.1 else np.nan,
        ("artist", "tags"): ([name.lower()] if rng.random() < 0.5 else [])
        + rng.sample(_TAGS, rng.randint(0, 4))
        if rng.random() < 0.35
        else [],
        ("artist", "website"): f"http://www.example{a}.com" if rng.random() < 0.6 else np.nan,
        ("artist", "wikipedia_page"): np.nan,
    }


def _synthetic_album(rng: random.Random, b: int) -> dict[tuple[str, str], Any]:
    return {
        ("album", "comments"): rng.choice([0, 0, 0, 1, 2]),
        ("album", "date_created"): _date(rng, 2008, 2017, True),
        ("album", "date_released"): _date(rng, 1990, 2017, False) if rng.random() < 0.6 else pd.NaT,
        ("album", "engineer"): _sentence(rng, 2) if rng.random() < 0.1 else np.nan,
        ("album", "favorites"): rng.randint(0, 50),
        ("album", "id"): b,
        ("album", "information"): _html(rng, rng.randint(80, 1200))
        if rng.random() < 0.45
        else np.nan,
        ("album", "listens"): rng.randint(0, 200_000),
        ("album", "producer"): _sentence(rng, 2) if rng.random() < 0.1 else np.nan,
        ("album", "tags"): rng.sample(_TAGS, rng.randint(1, 5)) if rng.random() < 0.2 else [],
        ("album", "title"): _sentence(rng, rng.randint(1, 5)).title(),
        ("album", "tracks"): rng.randint(1, 20),
        ("album", "type"): rng.choice(_ALBUM_TYPES),
    }


def _synthetic_row(
    rng: random.Random,
    album: dict[tuple[str, str], Any],
    artist: dict[tuple[str, str], Any],
    genre_ids: list[int],
) -> dict[tuple[str, str], Any]:
    genres = rng.sample(genre_ids, rng.choice([1, 1, 1, 2, 3]))
    tops = {TOP_LEVEL[g] for g in genres}
    n_tags = 0 if rng.random() > 0.22 else rng.choice([1, 1, 2, 3, 5, 8, 13])
    return {
        **album,
        **artist,
        ("set", "split"): rng.choices(["training", "validation", "test"], [8, 1, 1])[0],
        ("set", "subset"): rng.choices(SUBSETS, [8, 17, 81])[0],
        ("track", "bit_rate"): rng.choice([320000, 256000, 192000, 128000, -1]),
        ("track", "comments"): rng.choice([0, 0, 0, 1]),
        ("track", "composer"): _sentence(rng, 2) if rng.random() < 0.03 else np.nan,
        ("track", "date_created"): _date(rng, 2008, 2017, True),
        ("track", "date_recorded"): _date(rng, 1990, 2017, False)
        if rng.random() < 0.06
        else pd.NaT,
        ("track", "duration"): rng.randint(10, 900),
        ("track", "favorites"): rng.randint(0, 20),
        ("track", "genre_top"): GENRE_TITLES[next(iter(tops))]
        if len(tops) == 1 and rng.random() < 0.9
        else np.nan,
        ("track", "genres"): genres,
        ("track", "genres_all"): sorted(set(genres) | tops),
        ("track", "information"): _html(rng, rng.randint(50, 600))
        if rng.random() < 0.05
        else np.nan,
        ("track", "interest"): rng.randint(0, 50_000),
        ("track", "language_code"): "en" if rng.random() < 0.15 else np.nan,
        ("track", "license"): rng.choice(_LICENSES) if rng.random() < 0.999 else np.nan,
        ("track", "listens"): rng.randint(0, 100_000),
        ("track", "lyricist"): _sentence(rng, 2) if rng.random() < 0.01 else np.nan,
        ("track", "number"): rng.randint(-1, 20),
        ("track", "publisher"): _sentence(rng, 2) if rng.random() < 0.01 else np.nan,
        ("track", "tags"): rng.sample(_TAGS, min(n_tags, len(_TAGS))),
        ("track", "title"): _sentence(rng, rng.randint(1, 6)).title()
        if rng.random() < 0.9999
        else np.nan,
    }


def synthetic_tracks(n: int = 106_574, seed: int = 0) -> pd.DataFrame:
    """``n`` FMA-like records (ids sorted, gaps, shared artists/albums, realistic text)."""
    rng = random.Random(seed)
    ids = sorted(rng.sample(range(2, 155_321), n)) if n <= 155_000 else list(range(2, n + 2))
    n_artists = max(1, n // 6)
    n_albums = max(1, n // 7)
    genre_ids = list(GENRE_TITLES)
    artists = [_synthetic_artist(rng, a) for a in range(1, n_artists + 1)]
    albums = [_synthetic_album(rng, b) for b in range(1, n_albums + 1)]
    no_album = {
        key: -1
        if key[1] in ("id", "tracks", "comments", "favorites", "listens")
        else ([] if key[1] == "tags" else (pd.NaT if "date" in key[1] else np.nan))
        for key in albums[0]
    }
    rows: dict[int, dict[tuple[str, str], Any]] = {}
    for tid in ids:
        artist = artists[min(n_artists - 1, int(rng.random() ** 1.5 * n_artists))]
        album = albums[rng.randrange(n_albums)] if rng.random() < 0.97 else no_album
        rows[tid] = _synthetic_row(rng, album, artist, genre_ids)
    if len(ids) > 10:
        rows[ids[10]][("track", "tags")] = many_tags(150)
    return tracks_frame(rows)


# --------------------------------------------------------------------------- files


def write_tracks_csv(frame: pd.DataFrame, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path)
    return path


def write_genres_csv(path: Path, genres: Iterable[tuple[int, int, int, str, int]] = GENRES) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(
        list(genres), columns=["genre_id", "#tracks", "parent", "title", "top_level"]
    )
    frame.to_csv(path, index=False)
    return path


def write_metadata(metadata_dir: Path, frame: pd.DataFrame | None = None) -> Path:
    """tracks.csv (``quirky_tracks()`` by default) and genres.csv in ``metadata_dir``."""
    write_tracks_csv(quirky_tracks() if frame is None else frame, metadata_dir / "tracks.csv")
    write_genres_csv(metadata_dir / "genres.csv")
    return metadata_dir


def reference_load(path: Path) -> pd.DataFrame:
    """The dataset's own loader (mdeff/fma utils.load for tracks.csv), on current pandas."""
    tracks = pd.read_csv(path, index_col=0, header=[0, 1], low_memory=False)
    for column in LIST_COLUMNS:
        tracks[column] = tracks[column].map(ast.literal_eval)
    for column in DATE_COLUMNS:
        tracks[column] = pd.to_datetime(tracks[column])
    tracks["set", "subset"] = tracks["set", "subset"].astype(
        pd.CategoricalDtype(categories=SUBSETS, ordered=True)
    )
    for column in CATEGORY_COLUMNS:
        tracks[column] = tracks[column].astype("category")
    return tracks


# --------------------------------------------------------------------------- comparison


def _canonical(value: Any, kind: str) -> Any:
    """A reference-loader value as our table stores it (-1 gaps are NULL there)."""
    if isinstance(value, list):
        return [int(v) if isinstance(v, (int, np.integer)) else v for v in value]
    if value is None or value is pd.NaT:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if kind == DATE:
        return pd.Timestamp(value).to_pydatetime()
    if isinstance(value, (np.integer, int)) and not isinstance(value, bool):
        value = int(value)
        return None if kind == INT and value == -1 else value
    if isinstance(value, np.floating):
        return float(value)
    return value


def compare_with_reference(
    con: duckdb.DuckDBPyConnection, reference: pd.DataFrame, max_reported: int = 20
) -> tuple[int, list[str]]:
    """Compare table ``tracks`` with the reference frame on every row and column.

    Returns (number of cells compared, mismatch descriptions).
    """
    names = [f"{g}_{f}" for g, f, _ in FMA_COLUMNS]
    kinds = [k for _, _, k in FMA_COLUMNS]
    ours = con.execute(
        f"SELECT track_id, {', '.join(names)} FROM tracks ORDER BY track_id"
    ).fetchall()
    mismatches: list[str] = []
    ref_ids = [int(i) for i in reference.index]
    our_ids = [row[0] for row in ours]
    if ref_ids != our_ids:
        return 0, [f"track ids differ: ours {our_ids[:10]}..., reference {ref_ids[:10]}..."]
    columns = [reference[(g, f)].tolist() for g, f, _ in FMA_COLUMNS]
    compared = bad = 0
    for r, row in enumerate(ours):
        for c, (name, kind) in enumerate(zip(names, kinds, strict=True)):
            expected = _canonical(columns[c][r], kind)
            got = row[c + 1]
            compared += 1
            same = (
                math.isclose(got, expected, rel_tol=1e-15, abs_tol=0.0)
                if isinstance(got, float) and isinstance(expected, float)
                else got == expected
            )
            if not same:
                bad += 1
                if len(mismatches) < max_reported:
                    mismatches.append(
                        f"track {row[0]} {name}: ours {got!r} != reference {expected!r}"
                    )
    if bad > len(mismatches):
        mismatches.append(f"... {bad} mismatching cells in all")
    return compared, mismatches
