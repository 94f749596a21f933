"""`clap-pipeline demo-data`: an offline FMA-format dataset whose audio follows its metadata.

Writes ``<out>/fma_metadata/{tracks.csv,genres.csv}`` and ``<out>/fma_audio/NNN/NNNNNN.mp3``
in the shape of the real release (three-line pandas header, 52 columns, Python-repr
lists, ``-1`` gaps, HTML/newlines in free text, sparse ids, mixed MP3 encodings,
ID3v2 tags) so the whole pipeline runs without a download.

The audio follows the metadata so that a model can learn a text <-> audio mapping
from the first seconds of a clip: the top-level genre of a track's first genre picks
the arrangement, its tempo/register/tone tags shape it (see ``demo_audio``). Clips
are piped as PCM into ffmpeg/libmp3lame, in parallel. A few tracks are FMA-style
defects: an empty clip, a 0.5-s clip, a file cut mid-frame and a listed track
without a file.

Everything is a function of the seed: the same seed gives the same tracks.csv
bytes and the same MP3 bytes (with the same ffmpeg build).
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import hashlib
import io
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

from clap_pipeline.audio.demo.synth import (
    CLIP_SECONDS,
    REGISTER_TAGS,
    SR,
    STYLES,
    TEMPO_TAGS,
    TONE_TAGS,
    AudioParams,
    render_loop,
)
from clap_pipeline.audio.ffmpeg_bin import ffmpeg_exe
from clap_pipeline.config import DEFAULT_MAX_TRACKS
from clap_pipeline.metadata.fma import FMA_COLUMNS, read_track_ids
from clap_pipeline.metadata.selection import audio_path, folder_of
from clap_pipeline.storage import atomic_path, write_text_atomic

Log = Callable[[str], None]

SHORT_CLIP_SECONDS = 0.5
MIN_TRACKS = 8  # 4 defects + at least one playable track per split
MAX_TRACKS = 200_000  # keeps ids below 1,000,000 (six digits, FMA's path format)
MARKER_NAME = ".clap-demo-dataset.json"
GENERATOR = "clap-pipeline demo-data"
FORMAT_VERSION = 1

DEFECT_EMPTY, DEFECT_SHORT, DEFECT_TRUNCATED, DEFECT_MISSING = (
    "empty_clip",
    "short_clip",
    "truncated_file",
    "missing_file",
)
DEFECT_KINDS = (DEFECT_EMPTY, DEFECT_SHORT, DEFECT_TRUNCATED, DEFECT_MISSING)


class DemoDataError(RuntimeError):
    """The demo dataset cannot be written; the message names the path or setting."""


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
    track_id: int, genre_ids: Sequence[int], tags: Iterable[str], seed: int
) -> AudioParams:
    """How a track sounds, from its tracks.csv genres and tags (and the dataset's seed)."""
    return AudioParams.from_tags(style_for_genres(genre_ids), tags, seed, track_id)


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


def _make_artist(index: int, style: str, rng: np.random.Generator) -> _Artist:
    artist_id = 1 + index * 7 + int(rng.integers(7))
    kind = rng.random()
    if kind < 0.15:
        name = str(_pick(rng, UNICODE_ARTISTS))
        members = None
    elif kind < 0.55:
        name = f"The {_pick(rng, BAND_ADJ)} {_pick(rng, BAND_WORDS)}"
        count = int(rng.integers(2, 5))
        members = "\n".join(
            f"{_pick(rng, ARTIST_FIRST)} {_pick(rng, ARTIST_LAST)}" for _ in range(count)
        )
    else:
        name = f"{_pick(rng, ARTIST_FIRST)} {_pick(rng, ARTIST_LAST)}"
        members = None
    if rng.random() < 0.2:
        name = f"{name} {index}"  # keeps most names distinct at scale
    place, lat, lon = PLACES[int(rng.integers(len(PLACES)))]
    has_place = rng.random() < 0.7
    created = _random_moment(rng, dt.datetime(2008, 11, 25), 2400)
    top_title = GENRE_BY_ID[TOP_OF_STYLE[style]][2]
    bio = (
        f'<p>{name} makes {top_title.lower()} music in {place}, "mostly at night", '
        f"with friends, tape machines and whatever is around.</p>\n"
        f'<p>Contact: <a href="mailto:booking@example.org">booking</a> &amp; more.</p>'
        if rng.random() < 0.8
        else None
    )
    slug = "".join(ch for ch in name.lower() if ch.isascii() and ch.isalnum()) or f"a{artist_id}"
    row: dict[tuple[str, str], object] = {
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
        ("artist", "location"): place if has_place else None,
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
    artist = _Artist(artist_id, name, style, row)
    for k in range(int(rng.integers(1, 3))):
        album_id = 3 * artist_id + k  # unique: artist ids are
        album_created = created + dt.timedelta(days=int(rng.integers(0, 400)))
        title = f"{_pick(rng, TITLE_WORDS_A)} {_pick(rng, TITLE_WORDS_B)}"
        information = (
            f'<p>Recorded live at "The Basement", {album_created.year}.</p>\r\n'
            f"<p>Mixed by {_pick(rng, ARTIST_FIRST)}, mastered by nobody.</p>"
            if rng.random() < 0.5
            else "<p></p>"
        )
        artist.albums.append(
            {
                ("album", "comments"): int(rng.integers(0, 3)),
                ("album", "date_created"): _fmt_date(album_created),
                (
                    "album",
                    "date_released",
                ): f"{album_created.year}-{album_created.month:02d}-01 00:00:00"
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
                ("album", "type"): str(
                    _pick(rng, ("Album", "Album", "Single Tracks", "Live Performance"))
                ),
            }
        )
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


def _descriptive_tags(rng: np.random.Generator) -> list[str]:
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


def plan_dataset(n_tracks: int, seed: int) -> list[TrackPlan]:
    """All tracks' metadata, audio parameters, encodings and defects (no I/O)."""
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
    artist_count = 0
    album_sizes: dict[int, int] = {}  # album id -> tracks so far
    defect_positions = rng.choice(n_tracks, size=len(DEFECT_KINDS), replace=False)
    defect_at = {int(p): kind for p, kind in zip(defect_positions, DEFECT_KINDS, strict=True)}
    playable = [i for i in range(n_tracks) if i not in defect_at]
    quirks = (
        "no_title",
        "quoted_title",
        "unicode_title",
        "escaped_tag",
        "no_genre_top",
        "no_license",
        "wrong_duration",
    )
    playable_encodings = dict(zip(playable, _encodings(len(playable), rng), strict=True))
    quirk_order = rng.permutation(playable).tolist()
    quirk_at: dict[int, set[str]] = {}
    for k, quirk in enumerate(quirks):
        quirk_at.setdefault(int(quirk_order[k % len(quirk_order)]), set()).add(quirk)

    plans: list[TrackPlan] = []
    for i, track_id in enumerate(ids):
        style = styles[i]
        pool = artists[style]
        if not pool or (len(pool) * per_artist < (i + 1) / len(STYLES) and rng.random() < 0.7):
            pool.append(_make_artist(artist_count, style, rng))
            artist_count += 1
        artist = pool[int(rng.integers(len(pool)))]
        track_quirks = quirk_at.get(i, set())

        # Genres: a sub-genre or the root; some tracks also sit in a second root genre
        # (FMA leaves genre_top empty for those). The second genre has a larger id, so
        # the first listed genre is always the one the audio follows.
        top = TOP_OF_STYLE[style]
        main = int(_pick(rng, (top, *SUBGENRES[top]))) if rng.random() < 0.6 else top
        genres = [main]
        if "no_genre_top" in track_quirks or rng.random() < 0.2:
            others = [g[0] for g in GENRES if g[0] > main and g[3] != top]
            genres.append(int(_pick(rng, others)))
        genres_all = sorted({a for g in genres for a in genre_ancestors(g)})
        roots = {GENRE_BY_ID[g][3] for g in genres}
        genre_top = GENRE_BY_ID[top][2] if len(roots) == 1 else None

        tags = _descriptive_tags(rng)
        noise = [str(_pick(rng, NOISE_TAGS))] if rng.random() < 0.35 else []
        if rng.random() < 0.1:
            noise.append(GENRE_BY_ID[top][2].lower())  # a genre name as a tag, as on FMA
        if "escaped_tag" in track_quirks:
            noise.insert(0, ESCAPED_TAG)
        track_tags = tags + noise

        if "no_title" in track_quirks:
            title = None
        elif "quoted_title" in track_quirks:
            title = 'Hello, "World" (Live, 2009)'
        elif "unicode_title" in track_quirks or rng.random() < 0.1:
            title = str(_pick(rng, UNICODE_TITLES))
        else:
            title = f"{_pick(rng, TITLE_WORDS_A)} {_pick(rng, TITLE_WORDS_B)}"

        album_index = int(rng.integers(len(artist.albums)))
        if rng.random() < 0.08:
            album: Mapping[tuple[str, str], object] = _NO_ALBUM
            number = -1
        else:
            album = artist.albums[album_index]
            album_id = int(album[("album", "id")])  # type: ignore[call-overload]
            album_sizes[album_id] = number = album_sizes.get(album_id, 0) + 1
        created = _random_moment(rng, dt.datetime(2008, 11, 26), 2600)
        defect = defect_at.get(i)
        encoding = DEFECT_ENCODINGS[defect] if defect else playable_encodings[i]
        row: dict[tuple[str, str], object] = {
            **album,
            **artist.row,
            ("set", "split"): None,  # assigned below
            ("set", "subset"): None,
            ("track", "bit_rate"): encoding[1] * 1000 if encoding[0] == "cbr" else -1,
            ("track", "comments"): int(rng.integers(0, 3)),
            ("track", "composer"): artist.name if rng.random() < 0.05 else None,
            ("track", "date_created"): _fmt_date(created),
            (
                "track",
                "date_recorded",
            ): f"{created.year}-{created.month:02d}-{created.day:02d} 00:00:00"
            if rng.random() < 0.1
            else None,
            ("track", "duration"): 18_350
            if "wrong_duration" in track_quirks
            else int(rng.integers(90, 420)),
            ("track", "favorites"): int(rng.integers(0, 9)),
            ("track", "genre_top"): genre_top,
            ("track", "genres"): genres,
            ("track", "genres_all"): genres_all,
            ("track", "information"): "<p>Taken from the &quot;Basement Tapes&quot;.</p>"
            if rng.random() < 0.05
            else None,
            ("track", "interest"): int(rng.lognormal(7, 1)),
            ("track", "language_code"): "en" if rng.random() < 0.4 else None,
            ("track", "license"): None
            if "no_license" in track_quirks
            else str(_pick(rng, LICENSES)),
            ("track", "listens"): int(rng.lognormal(6.5, 1.2)),
            ("track", "lyricist"): None,
            ("track", "number"): number,
            ("track", "publisher"): None,
            ("track", "tags"): track_tags,
            ("track", "title"): title,
        }
        plans.append(
            TrackPlan(
                track_id=track_id,
                row=row,
                params=audio_params(track_id, genres, track_tags, seed),
                encoding=encoding,
                id3_version=4 if rng.random() < 0.7 else 3,
                defect=defect,
            )
        )
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


# --------------------------------------------------------------------------- MP3


def mp3_frames(data: bytes) -> list[tuple[int, int]]:
    """(offset, length) of the MPEG-1 Layer III frames after the ID3v2 tag.

    The last entry may run past the end of ``data`` (a truncated frame).
    """
    bitrates = (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)
    rates = (44_100, 48_000, 32_000)
    pos = 0
    if data[:3] == b"ID3" and len(data) >= 10:
        size = 0
        for byte in data[6:10]:
            size = (size << 7) | (byte & 0x7F)
        pos = 10 + size
    frames = []
    while pos + 4 <= len(data):
        h = int.from_bytes(data[pos : pos + 4], "big")
        if (h >> 21) & 0x7FF != 0x7FF or (h >> 19) & 3 != 3 or (h >> 17) & 3 != 1:
            break  # not an MPEG-1 Layer III header (end of audio, e.g. an ID3v1 tag)
        br_index, sr_index, padding = (h >> 12) & 0xF, (h >> 10) & 3, (h >> 9) & 1
        if br_index in (0, 15) or sr_index == 3:
            break
        length = 144_000 * bitrates[br_index] // rates[sr_index] + padding
        frames.append((pos, length))
        pos += length
    return frames


def _encode_args(plan: TrackPlan) -> list[str]:
    mode, value = plan.encoding
    rate = ["-b:a", f"{value}k"] if mode == "cbr" else ["-q:a", str(value)]
    tags: list[str] = []
    for key, text in (
        ("title", plan.title),
        ("artist", plan.artist),
        ("album", plan.row[("album", "title")]),
        ("genre", plan.row[("track", "genre_top")]),
    ):
        if text:
            tags += ["-metadata", f"{key}={text}"]
    number = plan.row[("track", "number")]
    if isinstance(number, int) and number > 0:
        tags += ["-metadata", f"track={number}"]
    return [
        "-c:a", "libmp3lame", *rate,
        # LAME's "fast, ok quality" algorithm: about 3x faster than the default here.
        "-compression_level", "7",
        "-id3v2_version", str(plan.id3_version), "-write_id3v1", "0",
        "-fflags", "+bitexact", "-flags:a", "+bitexact",
        *tags,
    ]  # fmt: skip


def _widen_pipe(fd: int) -> None:
    """Grow a pipe to 1 MiB (Linux), so a writer thread needs the GIL a few times per
    clip rather than once per 64 KiB; while synthesis holds the GIL, encoders starve."""
    set_size = getattr(fcntl, "F_SETPIPE_SZ", None) if fcntl else None
    if set_size is not None:
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, set_size, 1 << 20)


def _run_ffmpeg(loop: np.ndarray, n_frames: int, out: Path, plan: TrackPlan) -> None:
    """Encode ``n_frames`` stereo frames of ``loop`` repeated, streamed to ffmpeg's stdin.

    Streaming the loop saves building (and copying) the whole 5-MB clip; stderr goes to
    a file so a chatty ffmpeg can never block on a full pipe while we write.
    """
    cmd = [
        ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
        "-f", "s16le", "-ar", str(SR), "-ac", "2", "-i", "pipe:0",
        *_encode_args(plan), "-f", "mp3", str(out),
    ]  # fmt: skip
    loop_bytes = np.ascontiguousarray(loop, dtype="<i2").reshape(-1).view(np.uint8)
    remaining = n_frames * 4
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=errors
        )
        try:
            assert proc.stdin is not None
            _widen_pipe(proc.stdin.fileno())
            with proc.stdin:
                while remaining > 0 and len(loop_bytes):
                    chunk = loop_bytes[: min(remaining, len(loop_bytes))]
                    proc.stdin.write(memoryview(chunk))
                    remaining -= len(chunk)
        except BrokenPipeError:
            pass  # ffmpeg exited early: its exit status and stderr say why
        finally:
            returncode = proc.wait(timeout=300)
        if returncode != 0:
            errors.seek(0)
            tail = errors.read().decode("utf-8", "replace")[-800:]
            raise DemoDataError(
                f"ffmpeg failed to encode track {plan.track_id} to {out} (exit {returncode}): {tail}"
            )


def _write_clip(plan: TrackPlan, audio_root: Path) -> float:
    """Encode one track's clip (or its defect); returns the seconds of audio written."""
    if plan.defect == DEFECT_MISSING:
        return 0.0
    path = audio_path(audio_root, plan.track_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    if plan.defect == DEFECT_EMPTY:
        # What the encoder writes for no samples: ID3 tag + LAME info frame, no audio frames.
        _run_ffmpeg(np.zeros((0, 2), "<i2"), 0, path, plan)
        return 0.0
    seconds = SHORT_CLIP_SECONDS if plan.defect == DEFECT_SHORT else CLIP_SECONDS
    if plan.defect is None:  # clip lengths vary by a few hundredths, as FMA's do
        jitter = np.random.default_rng([plan.params.seed, 3, plan.track_id]).uniform(-0.03, 0.03)
        seconds += float(jitter)
    n_frames = round(seconds * SR)  # render_clip(params, seconds) is this loop tiled
    _run_ffmpeg(render_loop(plan.params), n_frames, path, plan)
    if plan.defect == DEFECT_TRUNCATED:
        data = path.read_bytes()
        frames = mp3_frames(data)
        cut = len(frames) * 2 // 3  # past the 5-s window the pipeline reads, inside a frame
        offset, length = frames[cut]
        path.write_bytes(data[: offset + length // 2])
        return cut * 1152 / SR
    return n_frames / SR


# --------------------------------------------------------------------------- dataset


@dataclass(frozen=True)
class DemoSummary:
    out_root: Path
    tracks_csv: Path
    genres_csv: Path
    audio_dir: Path
    n_tracks: int
    n_clips: int
    folders: tuple[str, ...]
    genre_counts: dict[str, int]
    defects: dict[str, int]
    seed: int
    audio_seconds: float
    elapsed_s: float

    def __str__(self) -> str:
        genres = ", ".join(f"{name} {count}" for name, count in self.genre_counts.items())
        defects = ", ".join(f"{kind} {tid:06d}" for kind, tid in self.defects.items())
        return (
            f"demo dataset (seed {self.seed}) written in {self.elapsed_s:.1f} s to {self.out_root}\n"
            f"  metadata: {self.tracks_csv} ({self.n_tracks} tracks), {self.genres_csv}\n"
            f"  audio:    {self.audio_dir} ({self.n_clips} MP3 files in folders "
            f"{', '.join(self.folders)}; {self.audio_seconds / 60:.1f} min of audio)\n"
            f"  genres:   {genres}\n"
            f"  defects:  {defects}"
        )


def _usable_cpus() -> int:
    affinity = getattr(os, "sched_getaffinity", None)  # Linux: honours taskset/cgroups
    return len(affinity(0)) if affinity else os.cpu_count() or 1


def _stderr_log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _marker(seed: int, n_tracks: int, tracks_sha256: str | None = None) -> str:
    content: dict[str, object] = {
        "generator": GENERATOR,
        "format_version": FORMAT_VERSION,
        "seed": seed,
        "n_tracks": n_tracks,
    }
    if tracks_sha256:
        content["tracks_csv_sha256"] = tracks_sha256
    return json.dumps(content, indent=2) + "\n"


def _is_demo_dir(directory: Path, tracks_csv: Path | None = None) -> bool:
    try:
        marker = json.loads((directory / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(marker, dict) or marker.get("generator") != GENERATOR:
        return False
    if tracks_csv is not None and tracks_csv.exists():
        digest = hashlib.sha256(tracks_csv.read_bytes()).hexdigest()
        return marker.get("tracks_csv_sha256") == digest
    return True


def check_replaceable(out_root: Path) -> None:
    """Refuse to replace metadata or audio that the generator did not write."""
    if out_root.exists() and not out_root.is_dir():
        raise DemoDataError(f"demo-data output {out_root} is a file, not a folder (--out)")
    metadata_dir, audio_dir = out_root / "fma_metadata", out_root / "fma_audio"
    tracks_csv = metadata_dir / "tracks.csv"
    for directory, csv_path in ((metadata_dir, tracks_csv), (audio_dir, None)):
        if not directory.exists() or not any(directory.iterdir()):
            continue
        if not _is_demo_dir(directory, csv_path):
            what = csv_path if csv_path is not None and csv_path.exists() else directory
            raise DemoDataError(
                f"{what} exists and was not written by `clap-pipeline demo-data` (no matching "
                f"{MARKER_NAME} in {directory}): refusing to replace what may be a real FMA "
                "dataset. Pass another --out (or set CLAP_DATA_DIR), or move it away yourself."
            )


def write_demo_dataset(
    out_root: Path,
    n_tracks: int = DEFAULT_MAX_TRACKS,
    seed: int = 0,
    *,
    workers: int | None = None,
    log: Log | None = _stderr_log,
) -> DemoSummary:
    """Write the demo dataset under ``out_root`` (fma_metadata/, fma_audio/) atomically.

    Both folders are built in hidden temporary siblings and renamed into place, audio
    first, so a crash leaves the previous dataset (or none). Raises DemoDataError if
    ``out_root`` holds metadata or audio the generator did not write.
    """
    started = time.monotonic()
    out_root = Path(out_root)
    log = log or (lambda _message: None)
    plans = plan_dataset(n_tracks, seed)  # validates n_tracks before touching the disk
    check_replaceable(out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    leftovers = sorted(
        p.name
        for pattern in (".fma_audio.*.tmp", ".fma_metadata.*.tmp", ".fma_*.old")
        for p in out_root.glob(pattern)
    )
    if leftovers:  # not removed here: another process might be writing them right now
        log(
            f"demo-data: note: {out_root} holds temporary folders of an interrupted run, "
            f"safe to delete when nothing runs: {', '.join(leftovers)}"
        )
    ffmpeg_exe()  # fail early and clearly when ffmpeg is missing
    workers = workers or _usable_cpus() + 1  # one extra keeps every core encoding
    metadata_dir, audio_dir = out_root / "fma_metadata", out_root / "fma_audio"

    with atomic_path(metadata_dir) as meta_tmp, atomic_path(audio_dir) as audio_tmp:
        audio_tmp.mkdir()
        audio_seconds = _encode_all(plans, audio_tmp, workers, log)
        (audio_tmp / MARKER_NAME).write_text(_marker(seed, n_tracks), encoding="utf-8")
        meta_tmp.mkdir()
        tracks_text = tracks_csv_text(plans).encode("utf-8")
        (meta_tmp / "tracks.csv").write_bytes(tracks_text)
        (meta_tmp / "genres.csv").write_text(genres_csv_text(plans), encoding="utf-8")
        digest = hashlib.sha256(tracks_text).hexdigest()
        (meta_tmp / MARKER_NAME).write_text(_marker(seed, n_tracks, digest), encoding="utf-8")
        # Leaving the block renames audio into place first, then the metadata.

    genre_counts: dict[str, int] = {}
    for plan in plans:
        name = GENRE_BY_ID[TOP_OF_STYLE[plan.params.style]][2]
        genre_counts[name] = genre_counts.get(name, 0) + 1
    with_files = [p for p in plans if p.defect != DEFECT_MISSING]
    return DemoSummary(
        out_root=out_root,
        tracks_csv=metadata_dir / "tracks.csv",
        genres_csv=metadata_dir / "genres.csv",
        audio_dir=audio_dir,
        n_tracks=len(plans),
        n_clips=len(with_files),
        folders=tuple(sorted({folder_of(p.track_id) for p in with_files})),
        genre_counts=dict(sorted(genre_counts.items())),
        defects={p.defect: p.track_id for p in plans if p.defect is not None},
        seed=seed,
        audio_seconds=audio_seconds,
        elapsed_s=time.monotonic() - started,
    )


@dataclass(frozen=True)
class AddedTracks:
    tracks_csv: Path
    folder: Path
    track_ids: tuple[int, ...]
    elapsed_s: float

    def __str__(self) -> str:
        return (
            f"added {len(self.track_ids)} tracks (ids {self.track_ids[0]}-{self.track_ids[-1]}) "
            f"in {self.elapsed_s:.1f} s: rows appended to {self.tracks_csv}, clips in "
            f"{self.folder}"
        )


def add_demo_tracks(
    out_root: Path,
    n_new: int,
    *,
    workers: int | None = None,
    log: Log | None = _stderr_log,
) -> AddedTracks:
    """Append ``n_new`` playable tracks to a demo dataset, in a new audio folder.

    New tracks "arriving": rows appended to tracks.csv (atomically replaced) and their
    clips in the next unused folder, written before the rows so that a crash leaves at
    most clips without metadata. Reproducible: the batch depends on the dataset's seed
    and the ids already present.
    """
    started = time.monotonic()
    log = log or (lambda _message: None)
    out_root = Path(out_root)
    metadata_dir, audio_dir = out_root / "fma_metadata", out_root / "fma_audio"
    tracks_csv = metadata_dir / "tracks.csv"
    if not 1 <= n_new <= 999:
        raise DemoDataError(f"--add must be between 1 and 999 (one new audio folder), got {n_new}")
    if not (_is_demo_dir(metadata_dir, tracks_csv) and _is_demo_dir(audio_dir)):
        raise DemoDataError(
            f"{out_root} does not hold an unmodified demo dataset (no matching {MARKER_NAME}): "
            "--add only extends what `clap-pipeline demo-data` wrote"
        )
    marker = json.loads((metadata_dir / MARKER_NAME).read_text(encoding="utf-8"))
    existing = read_track_ids(tracks_csv)
    base = (max(existing) // 1000 + 1) * 1000
    if base + n_new >= 1_000_000:
        raise DemoDataError(f"{tracks_csv}: no free audio folder left for new track ids")
    batch = plan_dataset(max(n_new + len(DEFECT_KINDS), MIN_TRACKS), seed=marker["seed"] + base)
    plans = [p for p in batch if p.defect is None][:n_new]
    for k, plan in enumerate(plans):
        # Ids in the new folder; artist and album ids moved clear of the existing ones.
        plan.track_id = base + 1 + k
        plan.row[("artist", "id")] = int(plan.row[("artist", "id")]) + base * 100  # type: ignore[call-overload]
        if plan.row[("album", "id")] != -1:
            plan.row[("album", "id")] = int(plan.row[("album", "id")]) + base * 100  # type: ignore[call-overload]
        plan.params = audio_params(
            plan.track_id,
            plan.row[("track", "genres")],  # type: ignore[arg-type]
            plan.row[("track", "tags")],  # type: ignore[arg-type]
            marker["seed"],
        )
    folder = audio_dir / folder_of(base)
    with atomic_path(folder) as tmp:
        # _write_clip writes <root>/NNN/NNNNNN.mp3: encode under tmp's parent-like root.
        staging_root = tmp.with_name(tmp.name + ".root")
        try:
            _encode_all(plans, staging_root, workers or _usable_cpus() + 1, log)
            os.replace(staging_root / folder.name, tmp)
        finally:
            with contextlib.suppress(OSError):
                staging_root.rmdir()
    rows = tracks_csv_text(plans).split("\n", 3)[3]  # the records, without the header
    text = tracks_csv.read_text(encoding="utf-8")
    text = (text if text.endswith("\n") else text + "\n") + rows
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    write_text_atomic(tracks_csv, text)
    write_text_atomic(
        metadata_dir / MARKER_NAME,
        _marker(marker["seed"], len(existing) + n_new, digest),
    )
    return AddedTracks(
        tracks_csv=tracks_csv,
        folder=folder,
        track_ids=tuple(p.track_id for p in plans),
        elapsed_s=time.monotonic() - started,
    )


def _encode_all(plans: Sequence[TrackPlan], audio_root: Path, workers: int, log: Log) -> float:
    """Encode every clip with a pool of threads, each driving one ffmpeg at a time.

    Threads suffice: the encoder runs in its own process, and synthesis is a small
    share of the work.
    """
    total = len(plans)
    done = 0
    seconds = 0.0
    started = last_report = time.monotonic()
    log(f"demo-data: encoding {total} clips with {workers} parallel ffmpeg processes")
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="demo-encode") as pool:
        futures = [pool.submit(_write_clip, plan, audio_root) for plan in plans]
        try:
            for future in as_completed(futures):
                seconds += future.result()
                done += 1
                now = time.monotonic()
                if now - last_report >= 5.0 or done == total:
                    last_report = now
                    rate = done / max(now - started, 1e-9)
                    eta = (total - done) / rate if rate else float("inf")
                    log(f"demo-data: {done}/{total} clips, {rate:.1f} clips/s, ETA {eta:.0f} s")
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return seconds
