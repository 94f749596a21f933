"""The demo dataset's plan: which tracks, their tracks.csv/genres.csv records and audio recipes.

Pure functions of ``(n_tracks, seed)``: no file is written here (see ``collection``,
which writes the files, and ``encode``, which makes the MP3 clips).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from clap_pipeline.dataset import FMA_COLUMNS
from clap_pipeline.demo.rendered import INSTRUMENT_WORDS, RENDERERS, Scheme, instruments_for
from clap_pipeline.demo.synth import (
    REGISTER_TAGS,
    STYLES,
    TEMPO_TAGS,
    TONE_TAGS,
    AudioParams,
)

MIN_TRACKS = 8  # 4 defects + at least one playable track per split
MAX_TRACKS = 200_000  # keeps ids within MAX_TRACK_ID (six digits, FMA's path format)

DEFECT_EMPTY, DEFECT_SHORT, DEFECT_TRUNCATED, DEFECT_MISSING = (
    "empty_clip",
    "short_clip",
    "truncated_file",
    "missing_file",
)
DEFECT_KINDS = (DEFECT_EMPTY, DEFECT_SHORT, DEFECT_TRUNCATED, DEFECT_MISSING)


# --------------------------------------------------------------------------- genres

# (genre_id, parent, title, top_level) as in FMA's genres.csv: the 16 top-level
# genres and some of their sub-genres, with the real ids.
GENRES: tuple[tuple[int, int, str, int], ...] = (
    (1, 38, "Avant-Garde", 38),
    (2, 0, "International", 2),
    (3, 0, "Blues", 3),
    (4, 0, "Jazz", 4),
    (5, 0, "Classical", 5),
    (8, 0, "Old-Time / Historic", 8),
    (9, 0, "Country", 9),
    (10, 0, "Pop", 10),
    (12, 0, "Rock", 12),
    (13, 0, "Easy Listening", 13),
    (14, 0, "Soul-RnB", 14),
    (15, 0, "Electronic", 15),
    (17, 0, "Folk", 17),
    (18, 1235, "Soundtrack", 1235),
    (20, 0, "Spoken", 20),
    (21, 0, "Hip-Hop", 21),
    (25, 12, "Punk", 12),
    (27, 12, "Lo-Fi", 12),
    (31, 12, "Metal", 12),
    (32, 38, "Noise", 38),
    (33, 17, "Psych-Folk", 17),
    (37, 4, "Jazz: Vocal", 4),
    (38, 0, "Experimental", 38),
    (46, 2, "Latin America", 2),
    (47, 38, "Drone", 38),
    (49, 17, "Free-Folk", 17),
    (58, 12, "Psych-Rock", 12),
    (66, 12, "Indie-Rock", 12),
    (74, 4, "Free-Jazz", 4),
    (76, 10, "Experimental Pop", 10),
    (77, 2, "French", 2),
    (85, 12, "Garage", 12),
    (100, 21, "Alternative Hip-Hop", 21),
    (103, 17, "Singer-Songwriter", 17),
    (107, 1235, "Ambient", 1235),
    (179, 4, "Big Band/Swing", 4),
    (180, 17, "British Folk", 17),
    (181, 15, "Techno", 15),
    (182, 15, "House", 15),
    (187, 5, "20th Century Classical", 5),
    (224, 38, "Sound Collage", 38),
    (236, 15, "IDM", 15),
    (240, 297, "Chiptune", 15),
    (250, 38, "Improv", 38),
    (297, 15, "Chip Music", 15),
    (322, 5, "Composed Music", 5),
    (362, 10, "Synth Pop", 10),
    (442, 5, "Chamber Music", 5),
    (539, 21, "Rap", 21),
    (659, 5, "Contemporary Classical", 5),
    (811, 21, "Hip-Hop Beats", 21),
    (906, 4, "Modern Jazz", 4),
    (1235, 0, "Instrumental", 1235),
)
GENRE_BY_ID: dict[int, tuple[int, int, str, int]] = {g[0]: g for g in GENRES}

# Top-level genre id -> synthesis style. These eight get tracks; the others only
# appear as a second genre of multi-genre tracks (whose genre_top is then empty).
STYLE_OF_TOP: dict[int, str] = {
    12: "rock",
    15: "electronic",
    21: "hiphop",
    17: "folk",
    5: "classical",
    4: "jazz",
    10: "pop",
    38: "experimental",
}
TOP_OF_STYLE: dict[str, int] = {s: g for g, s in STYLE_OF_TOP.items()}
# Sub-genres a track of each style may be filed under (Lo-Fi stays unused: its
# name would collide with the "lo-fi" tone tag).
SUBGENRES: dict[int, tuple[int, ...]] = {
    top: tuple(g[0] for g in GENRES if g[3] == top and g[0] != top and g[0] != 27)
    for top in STYLE_OF_TOP
}


def genre_ancestors(genre_id: int) -> list[int]:
    """The genre and its parents up to the root (FMA's ``genres_all`` is their union)."""
    chain = []
    current = genre_id
    while current and current in GENRE_BY_ID and current not in chain:
        chain.append(current)
        current = GENRE_BY_ID[current][1]
    return chain


def style_for_genres(genre_ids: Sequence[int]) -> str:
    """Synthesis style of a track: the top-level genre of its first listed genre."""
    for gid in genre_ids:
        top = GENRE_BY_ID.get(int(gid), (0, 0, "", 0))[3]
        if top in STYLE_OF_TOP:
            return STYLE_OF_TOP[top]
    raise ValueError(f"no synthesised genre among {list(genre_ids)}")


def audio_params(
    track_id: int,
    genre_ids: Sequence[int],
    tags: Iterable[str],
    seed: int,
    renderer: str = "synth",
) -> AudioParams:
    """How a track sounds, from its tracks.csv genres and tags (and the dataset's seed)."""
    tags = [str(t).strip().lower() for t in tags]
    params = AudioParams.from_tags(style_for_genres(genre_ids), tags, seed, track_id)
    if renderer == "synth":
        return params
    if renderer not in RENDERERS:
        raise ValueError(f"unknown renderer {renderer!r}; expected one of {RENDERERS}")
    instruments = tuple(t for t in tags if t in INSTRUMENT_WORDS)
    return replace(params, instruments=instruments, renderer=renderer)


# --------------------------------------------------------------------------- metadata

LICENSES = (
    "Attribution-NonCommercial-ShareAlike 3.0 International",
    "Attribution-Noncommercial-No Derivative Works 3.0 United States",
    "Attribution-NonCommercial-NoDerivatives (aka Music Sharing) 3.0 International",
    "Attribution 4.0 International",
    "Attribution-ShareAlike 3.0 United States",
    "Creative Commons Attribution-NonCommercial-NoDerivatives 4.0",
    "Public Domain Mark 1.0",
    "CC0 1.0 Universal",
)
PLACES = (
    ("Richmond, VA", 37.5407246, -77.4360481),
    ("Brooklyn, NY", 40.6781784, -73.9441579),
    ("Montréal, Québec", 45.5016889, -73.567256),
    ("Berlin, Germany", 52.52000659999999, 13.404954),
    ("São Paulo", -23.5505199, -46.6333094),
    ("Tokyo", 35.6894875, 139.6917064),
    ("Reykjavík", 64.146582, -21.9426354),
    ("Portland, OR", 45.5230622, -122.6764816),
)
TITLE_WORDS_A = (
    "Electric", "Midnight", "Silent", "Golden", "Broken", "Velvet", "Hollow", "Neon", "Paper",
    "Crimson", "Lonely", "Northern", "Wandering", "Déjà", "Naïve", "Frozen", "Última",
    "Søndag", "Sleepy", "Distant",
)  # fmt: skip
TITLE_WORDS_B = (
    "Avenue", "Garden", "River", "Machine", "Summer", "Lights", "Ghosts", "Highway", "Café",
    "Mirrors", "Signal", "Harbor", "Vu", "Parade", "Canción", "Dreams", "Static", "Forest",
    "Ocean", "Morning",
)  # fmt: skip
UNICODE_TITLES = ("夜の街", "Смерч над морем", "Ölüdeniz", "Ça va, ça vient", "Niño Perdido")
ARTIST_FIRST = ("Kurt", "Nicky", "Lúcia", "Jökull", "Zoë", "Ana", "Marek", "Yuki", "Sam", "Oumou")
ARTIST_LAST = ("Vile", "Cook", "Ørsted", "Wiśniewski", "Moreau", "Tanaka", "Okafor", "Ferreira")
BAND_WORDS = ("Owls", "Satellites", "Ghosts", "Machines", "Tigers", "Pilots", "Lanterns", "Wolves")
BAND_ADJ = ("Velvet", "Quiet", "Electric", "Paper", "Ñandú", "Mëtal", "Hollow", "Golden")
UNICODE_ARTISTS = ("空の音", "Ясная Поляна", "Sigrún & Ómar", "Los Niños del Sur", "Mø Kollektiv")
NOISE_TAGS = (
    "netlabel", "free download", "creative commons", "diy", "home recording", "2009",
    "bandcamp", "wfmu", "ccmixter", "café", "live session", "demo",
)  # fmt: skip
# A tag with both quote characters: its repr needs backslash escapes.
ESCAPED_TAG = """it's "free" music"""


@dataclass
class TrackPlan:
    """One track: its tracks.csv record and how its clip is made."""

    track_id: int
    row: dict[tuple[str, str], object]
    params: AudioParams
    encoding: tuple[str, int]  # ("cbr", kbps) or ("vbr", quality)
    id3_version: int
    defect: str | None = None

    @property
    def title(self) -> str:
        return str(self.row[("track", "title")] or "")

    @property
    def artist(self) -> str:
        return str(self.row[("artist", "name")] or "")


@dataclass
class _Artist:
    artist_id: int
    name: str
    style: str
    row: dict[tuple[str, str], object]
    albums: list[dict[tuple[str, str], object]] = field(default_factory=list)


def _fmt_date(moment: dt.datetime | None) -> str | None:
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment else None


def _random_moment(rng: np.random.Generator, start: dt.datetime, days: int) -> dt.datetime:
    return start + dt.timedelta(seconds=int(rng.integers(days * 86_400)))


def _pick(rng: np.random.Generator, items: Sequence[object]) -> object:
    return items[int(rng.integers(len(items)))]


def _track_ids(n: int, rng: np.random.Generator) -> list[int]:
    """Sparse increasing ids from 2 (like FMA's), spanning at least folders 000 and 001."""
    mean_gap = max(4, math.ceil(1500 / n))
    gaps = rng.integers(1, 2 * mean_gap, size=n - 1)
    ids = [2, *(2 + np.cumsum(gaps)).tolist()]
    if ids[-1] < 1000:
        ids[-1] = 1000 + int(rng.integers(1, 500))
    return [int(i) for i in ids]


def _artist_name(index: int, rng: np.random.Generator) -> tuple[str, str | None]:
    """A name (a person, a band with members, or unicode) and the band's members."""
    kind = rng.random()
    if kind < 0.15:
        name, members = str(_pick(rng, UNICODE_ARTISTS)), None
    elif kind < 0.55:
        name = f"The {_pick(rng, BAND_ADJ)} {_pick(rng, BAND_WORDS)}"
        count = int(rng.integers(2, 5))
        members = "\n".join(
            f"{_pick(rng, ARTIST_FIRST)} {_pick(rng, ARTIST_LAST)}" for _ in range(count)
        )
    else:
        name, members = f"{_pick(rng, ARTIST_FIRST)} {_pick(rng, ARTIST_LAST)}", None
    if rng.random() < 0.2:
        name = f"{name} {index}"  # keeps most names distinct at scale
    return name, members


def _artist_row(
    artist_id: int,
    name: str,
    members: str | None,
    style: str,
    created: dt.datetime,
    place: tuple[str, float, float],
    has_place: bool,
    rng: np.random.Generator,
) -> dict[tuple[str, str], object]:
    """The artist's columns of tracks.csv (its draws in column order)."""
    city, lat, lon = place
    top_title = GENRE_BY_ID[TOP_OF_STYLE[style]][2]
    bio = (
        f'<p>{name} makes {top_title.lower()} music in {city}, "mostly at night", '
        f"with friends, tape machines and whatever is around.</p>\n"
        f'<p>Contact: <a href="mailto:booking@example.org">booking</a> &amp; more.</p>'
        if rng.random() < 0.8
        else None
    )
    slug = "".join(ch for ch in name.lower() if ch.isascii() and ch.isalnum()) or f"a{artist_id}"
    return {
        ("artist", "active_year_begin"): f"{int(rng.integers(1995, 2012))}-01-01 00:00:00"
        if rng.random() < 0.5
        else None,
        ("artist", "active_year_end"): f"{int(rng.integers(2012, 2017))}-01-01 00:00:00"
        if rng.random() < 0.1
        else None,
        ("artist", "associated_labels"): "Azillion Records, Free Range"
        if rng.random() < 0.2
        else None,
        ("artist", "bio"): bio,
        ("artist", "comments"): int(rng.integers(0, 4)),
        ("artist", "date_created"): _fmt_date(created),
        ("artist", "favorites"): int(rng.integers(0, 60)),
        ("artist", "id"): artist_id,
        ("artist", "latitude"): lat if has_place else None,
        ("artist", "location"): city if has_place else None,
        ("artist", "longitude"): lon if has_place else None,
        ("artist", "members"): members,
        ("artist", "name"): name,
        ("artist", "related_projects"): "Side Project, Another Band"
        if rng.random() < 0.1
        else None,
        # FMA's artist tags often just repeat the artist's name.
        ("artist", "tags"): [name.lower()] + (["diy"] if rng.random() < 0.3 else []),
        ("artist", "website"): f"http://www.{slug}.com" if rng.random() < 0.6 else None,
        ("artist", "wikipedia_page"): None,
    }


def _album_row(
    album_id: int, name: str, created: dt.datetime, rng: np.random.Generator
) -> dict[tuple[str, str], object]:
    """One album's columns (its draws in column order, its title and notes first)."""
    album_created = created + dt.timedelta(days=int(rng.integers(0, 400)))
    title = f"{_pick(rng, TITLE_WORDS_A)} {_pick(rng, TITLE_WORDS_B)}"
    information = (
        f'<p>Recorded live at "The Basement", {album_created.year}.</p>\r\n'
        f"<p>Mixed by {_pick(rng, ARTIST_FIRST)}, mastered by nobody.</p>"
        if rng.random() < 0.5
        else "<p></p>"
    )
    return {
        ("album", "comments"): int(rng.integers(0, 3)),
        ("album", "date_created"): _fmt_date(album_created),
        ("album", "date_released"): f"{album_created.year}-{album_created.month:02d}-01 00:00:00"
        if rng.random() < 0.7
        else None,
        ("album", "engineer"): None,
        ("album", "favorites"): int(rng.integers(0, 12)),
        ("album", "id"): album_id,
        ("album", "information"): information,
        ("album", "listens"): int(rng.lognormal(7, 1.2)),
        ("album", "producer"): f"{_pick(rng, ARTIST_FIRST)} {_pick(rng, ARTIST_LAST)}"
        if rng.random() < 0.15
        else None,
        ("album", "tags"): [],
        ("album", "title"): f"{name} - {title}" if rng.random() < 0.3 else title,
        ("album", "tracks"): -1,  # counted once tracks are assigned
        ("album", "type"): str(_pick(rng, ("Album", "Album", "Single Tracks", "Live Performance"))),
    }


def _make_artist(index: int, style: str, rng: np.random.Generator) -> _Artist:
    artist_id = 1 + index * 7 + int(rng.integers(7))
    name, members = _artist_name(index, rng)
    place = PLACES[int(rng.integers(len(PLACES)))]
    has_place = rng.random() < 0.7
    created = _random_moment(rng, dt.datetime(2008, 11, 25), 2400)
    row = _artist_row(artist_id, name, members, style, created, place, has_place, rng)
    artist = _Artist(artist_id, name, style, row)
    for k in range(int(rng.integers(1, 3))):
        artist.albums.append(_album_row(3 * artist_id + k, name, created, rng))  # unique ids
    return artist


_NO_ALBUM: dict[tuple[str, str], object] = {
    ("album", "comments"): -1,
    ("album", "date_created"): None,
    ("album", "date_released"): None,
    ("album", "engineer"): None,
    ("album", "favorites"): -1,
    ("album", "id"): -1,
    ("album", "information"): None,
    ("album", "listens"): -1,
    ("album", "producer"): None,
    ("album", "tags"): [],
    ("album", "title"): None,
    ("album", "tracks"): -1,
    ("album", "type"): None,
}


def descriptive_tags(rng: np.random.Generator) -> list[str]:
    """Tempo, tone and register tags (each present or not); ~8 % of tracks get none."""
    if rng.random() < 0.08:
        return []
    tags: list[str] = []
    if rng.random() < 0.85:
        tags.append(str(_pick(rng, TEMPO_TAGS)))
    if rng.random() < 0.75:
        tags.append(str(_pick(rng, TONE_TAGS)))
    if rng.random() < 0.6:
        tags.append(str(_pick(rng, REGISTER_TAGS)))
    return tags


QUIRKS = (
    "no_title",
    "quoted_title",
    "unicode_title",
    "escaped_tag",
    "no_genre_top",
    "no_license",
    "wrong_duration",
)


def _quirks_at(playable: list[int], rng: np.random.Generator) -> dict[int, set[str]]:
    """Which playable tracks (positions) carry which of the QUIRKS (each at least once)."""
    order = rng.permutation(playable).tolist()
    at: dict[int, set[str]] = {}
    for k, quirk in enumerate(QUIRKS):
        at.setdefault(int(order[k % len(order)]), set()).add(quirk)
    return at


def _track_genres(
    style: str, quirks: set[str], rng: np.random.Generator
) -> tuple[list[int], list[int], str | None]:
    """Genres, all their ancestors, and genre_top.

    A sub-genre or the root; some tracks also sit in a second root genre (FMA leaves
    genre_top empty for those). The second genre has a larger id, so the first listed
    genre is always the one the audio follows.
    """
    top = TOP_OF_STYLE[style]
    main = int(_pick(rng, (top, *SUBGENRES[top]))) if rng.random() < 0.6 else top
    genres = [main]
    if "no_genre_top" in quirks or rng.random() < 0.2:
        others = [g[0] for g in GENRES if g[0] > main and g[3] != top]
        genres.append(int(_pick(rng, others)))
    genres_all = sorted({a for g in genres for a in genre_ancestors(g)})
    roots = {GENRE_BY_ID[g][3] for g in genres}
    return genres, genres_all, GENRE_BY_ID[top][2] if len(roots) == 1 else None


def _track_tags(
    style: str,
    quirks: set[str],
    band: np.random.Generator | None,
    scheme: Scheme | None,
    rng: np.random.Generator,
) -> list[str]:
    """Descriptive tags, FMA-like noise and, for rendered tracks, the band's instruments."""
    tags = descriptive_tags(rng)
    noise = [str(_pick(rng, NOISE_TAGS))] if rng.random() < 0.35 else []
    if rng.random() < 0.1:
        noise.append(GENRE_BY_ID[TOP_OF_STYLE[style]][2].lower())  # a genre name, as on FMA
    if "escaped_tag" in quirks:
        noise.insert(0, ESCAPED_TAG)
    if band is not None:  # the band plays what the tags name
        tags = [*instruments_for(style, band, scheme), *tags]
    return tags + noise


def _track_title(quirks: set[str], rng: np.random.Generator) -> str | None:
    if "no_title" in quirks:
        return None
    if "quoted_title" in quirks:
        return 'Hello, "World" (Live, 2009)'
    if "unicode_title" in quirks or rng.random() < 0.1:
        return str(_pick(rng, UNICODE_TITLES))
    return f"{_pick(rng, TITLE_WORDS_A)} {_pick(rng, TITLE_WORDS_B)}"


def _track_album(
    artist: _Artist, album_sizes: dict[int, int], rng: np.random.Generator
) -> tuple[Mapping[tuple[str, str], object], int]:
    """One of the artist's albums (8 %: none) and the track's number on it."""
    album_index = int(rng.integers(len(artist.albums)))
    if rng.random() < 0.08:
        return _NO_ALBUM, -1
    album = artist.albums[album_index]
    album_id = int(album[("album", "id")])  # type: ignore[call-overload]
    album_sizes[album_id] = number = album_sizes.get(album_id, 0) + 1
    return album, number


def _track_row(
    artist: _Artist,
    album: Mapping[tuple[str, str], object],
    number: int,
    genres: tuple[list[int], list[int], str | None],
    tags: list[str],
    title: str | None,
    encoding: tuple[str, int],
    quirks: set[str],
    rng: np.random.Generator,
) -> dict[tuple[str, str], object]:
    """The track's row of tracks.csv (its draws in column order)."""
    created = _random_moment(rng, dt.datetime(2008, 11, 26), 2600)
    track_genres, genres_all, genre_top = genres
    return {
        **album,
        **artist.row,
        ("set", "split"): None,  # assigned by _assign_sets
        ("set", "subset"): None,
        ("track", "bit_rate"): encoding[1] * 1000 if encoding[0] == "cbr" else -1,
        ("track", "comments"): int(rng.integers(0, 3)),
        ("track", "composer"): artist.name if rng.random() < 0.05 else None,
        ("track", "date_created"): _fmt_date(created),
        ("track", "date_recorded"): f"{created.year}-{created.month:02d}-{created.day:02d} 00:00:00"
        if rng.random() < 0.1
        else None,
        ("track", "duration"): 18_350 if "wrong_duration" in quirks else int(rng.integers(90, 420)),
        ("track", "favorites"): int(rng.integers(0, 9)),
        ("track", "genre_top"): genre_top,
        ("track", "genres"): track_genres,
        ("track", "genres_all"): genres_all,
        ("track", "information"): "<p>Taken from the &quot;Basement Tapes&quot;.</p>"
        if rng.random() < 0.05
        else None,
        ("track", "interest"): int(rng.lognormal(7, 1)),
        ("track", "language_code"): "en" if rng.random() < 0.4 else None,
        ("track", "license"): None if "no_license" in quirks else str(_pick(rng, LICENSES)),
        ("track", "listens"): int(rng.lognormal(6.5, 1.2)),
        ("track", "lyricist"): None,
        ("track", "number"): number,
        ("track", "publisher"): None,
        ("track", "tags"): tags,
        ("track", "title"): title,
    }


def plan_dataset(
    n_tracks: int, seed: int, renderer: str = "synth", scheme: Scheme | None = None
) -> list[TrackPlan]:
    """All tracks' metadata, audio parameters, encodings and defects (no I/O).

    ``scheme``: whose bands the rendered tracks' instrument tags name (the demo's ``BAND``).
    """
    if not MIN_TRACKS <= n_tracks <= MAX_TRACKS:
        raise ValueError(
            f"--tracks must be between {MIN_TRACKS} and {MAX_TRACKS} (got {n_tracks}): the demo "
            f"dataset always holds {len(DEFECT_KINDS)} defective tracks plus playable ones"
        )
    rng = np.random.default_rng([seed, 1])
    ids = _track_ids(n_tracks, rng)
    # Balanced genres: a shuffled cycle over the eight styles.
    styles = [STYLES[i % len(STYLES)] for i in range(n_tracks)]
    rng.shuffle(styles)
    per_artist = 6
    artists: dict[str, list[_Artist]] = {s: [] for s in STYLES}
    album_sizes: dict[int, int] = {}  # album id -> tracks so far
    defect_positions = rng.choice(n_tracks, size=len(DEFECT_KINDS), replace=False)
    defect_at = {int(p): kind for p, kind in zip(defect_positions, DEFECT_KINDS, strict=True)}
    playable = [i for i in range(n_tracks) if i not in defect_at]
    playable_encodings = dict(zip(playable, _encodings(len(playable), rng), strict=True))
    quirk_at = _quirks_at(playable, rng)
    plans: list[TrackPlan] = []
    for i, track_id in enumerate(ids):
        style, quirks = styles[i], quirk_at.get(i, set())
        pool = artists[style]
        if not pool or (len(pool) * per_artist < (i + 1) / len(STYLES) and rng.random() < 0.7):
            pool.append(_make_artist(sum(map(len, artists.values())), style, rng))
        artist = pool[int(rng.integers(len(pool)))]
        genres = _track_genres(style, quirks, rng)
        band = np.random.default_rng([seed, 9, track_id]) if renderer != "synth" else None
        tags = _track_tags(style, quirks, band, scheme, rng)
        title = _track_title(quirks, rng)
        album, number = _track_album(artist, album_sizes, rng)
        defect = defect_at.get(i)
        encoding = DEFECT_ENCODINGS[defect] if defect else playable_encodings[i]
        row = _track_row(artist, album, number, genres, tags, title, encoding, quirks, rng)
        params = audio_params(track_id, genres[0], tags, seed, renderer)
        id3 = 4 if rng.random() < 0.7 else 3
        plans.append(TrackPlan(track_id, row, params, encoding, id3, defect))
    for plan in plans:
        album_id = plan.row[("album", "id")]
        if album_id != -1:
            plan.row[("album", "tracks")] = album_sizes[album_id]  # type: ignore[index]
    _assign_sets(plans, rng)
    return plans


# Ten encodings, dealt in shuffled blocks so every small dataset mixes CBR rates and VBR.
ENCODING_CYCLE: tuple[tuple[str, int], ...] = (
    ("cbr", 320), ("cbr", 320), ("cbr", 320), ("cbr", 256), ("cbr", 256),
    ("cbr", 192), ("cbr", 128), ("cbr", 128), ("vbr", 0), ("vbr", 4),
)  # fmt: skip
DEFECT_ENCODINGS = {
    DEFECT_EMPTY: ("cbr", 128),
    DEFECT_SHORT: ("cbr", 320),
    DEFECT_TRUNCATED: ("cbr", 192),
    DEFECT_MISSING: ("cbr", 256),
}


def _encodings(n: int, rng: np.random.Generator) -> list[tuple[str, int]]:
    dealt: list[tuple[str, int]] = []
    while len(dealt) < n:
        dealt += [ENCODING_CYCLE[i] for i in rng.permutation(len(ENCODING_CYCLE))]
    return dealt[:n]


def _assign_sets(plans: list[TrackPlan], rng: np.random.Generator) -> None:
    """80/10/10 training/validation/test, stratified by style; defects stay in training.

    ``set.subset`` is the smallest FMA subset a track is in: tracks without a
    genre_top are only in large; Jazz and Classical (absent from FMA's small) in medium.
    """
    playable = [p for p in plans if p.defect is None]
    order = sorted(playable, key=lambda p: (p.params.style, rng.random()))
    for k, plan in enumerate(order):
        slot = k % 10
        plan.row[("set", "split")] = (
            "validation" if slot == 8 else "test" if slot == 9 else "training"
        )
    for plan in plans:
        if plan.defect is not None:
            plan.row[("set", "split")] = "training"
        if plan.row[("track", "genre_top")] is None:
            subset = "large"
        elif plan.params.style in ("jazz", "classical") or rng.random() < 0.3:
            subset = "medium"
        else:
            subset = "small"
        plan.row[("set", "subset")] = subset


def _cell(value: object) -> str:
    """A value as pandas' to_csv writes it (lists as Python reprs, None as empty)."""
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list):
        return repr(value)
    return str(value)


def tracks_csv_text(plans: Sequence[TrackPlan]) -> str:
    """tracks.csv as FMA wrote it: three header lines, then one record per track."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerow(["", *(group for group, _f, _k in FMA_COLUMNS)])
    writer.writerow(["", *(name for _g, name, _k in FMA_COLUMNS)])
    writer.writerow(["track_id", *([""] * len(FMA_COLUMNS))])
    for plan in plans:
        writer.writerow([plan.track_id, *(_cell(plan.row[(g, f)]) for g, f, _k in FMA_COLUMNS)])
    return buf.getvalue()


def genres_csv_text(plans: Sequence[TrackPlan]) -> str:
    """genres.csv: ``genre_id,#tracks,parent,title,top_level``; #tracks counts genres_all."""
    counts = {g[0]: 0 for g in GENRES}
    for plan in plans:
        for gid in plan.row[("track", "genres_all")]:  # type: ignore[union-attr]
            counts[gid] += 1
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["genre_id", "#tracks", "parent", "title", "top_level"])
    for gid, parent, title, top in GENRES:
        writer.writerow([gid, counts[gid], parent, title, top])
    return buf.getvalue()
