"""Text prompts for CLAP from FMA metadata: five templates, clean fields, a seeded choice.

Every template is rendered for every track (None where it does not apply) so
training can draw a different one per epoch; one of the applicable templates is
chosen per track from a hash of (seed, track_id), so a track keeps its prompt
when other tracks come and go.

Captions from a table (``captions.py``) extend a track's renderings after the template
slots (``CAPTION_MODES``: beside the templates, or instead of them); a prompt whose
``template_id`` is ``N_TEMPLATES`` or more is one of them.

Missing fields never leak: a template that needs a missing field is not
applicable, optional phrases ("Genre: ...", "Tags: ...") are dropped whole, and
values that are empty, "nan", "None" or "null" count as missing. Tags come from
the track, then its album, then its artist; they are de-duplicated
case-insensitively, lose the artist's own name and the track's genre names, and
at most five are kept in their original order.
"""

from __future__ import annotations

import hashlib
import html
import json
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import duckdb
import pyarrow as pa

from clap_pipeline.dataset import PROMPTS_SCHEMA
from clap_pipeline.storage import table_exists

MAX_TAGS = 5
TEMPLATE_NAMES = ("reference", "genre_track", "genre_artist", "album", "tagged")
N_TEMPLATES = len(TEMPLATE_NAMES)
TEMPLATE_PATTERNS = (
    '"{title}" by {artist}. Genre: {genre}. Tags: {tags}.',
    'A {genre} track called "{title}" by {artist}.',
    '{genre} music by {artist}, from the album "{album}".',
    '"{title}", from the album "{album}" by {artist}.',
    "Music by {artist}, tagged {tags}.",
)
_MISSING = {"nan", "none", "null", "n/a"}
_INVISIBLE = re.compile("[\u200b-\u200f\u2060\ufeff\u00ad]")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
_SPACES = re.compile(r"\s+")
# Words that only appear in a prompt when a missing value was formatted as text.
_LEAK_WORDS = re.compile(r"\b(?:None|nan|NaN|null)\b")
_EMPTY_FIELD = re.compile(r"(?:Genre|Tags):\s*[.,]|\(\s*\)")


@dataclass(frozen=True)
class TrackText:
    """The cleaned fields a prompt may use (None when missing)."""

    track_id: int
    title: str | None
    artist: str | None
    album: str | None
    genre: str | None
    tags: tuple[str, ...]

    def values(self) -> list[str]:
        return [v for v in (self.title, self.artist, self.album, self.genre) if v] + list(self.tags)


# --------------------------------------------------------------------------- cleaning


def clean_text(value: object) -> str | None:
    """One line of text: HTML entities decoded, whitespace collapsed; None when missing.

    Double quotes become single quotes because templates quote titles with ``"``.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = html.unescape(str(value))
    text = _INVISIBLE.sub("", text)
    text = _CONTROL.sub(" ", text).replace('"', "'")
    text = _SPACES.sub(" ", text).strip()
    if not text or text.casefold() in _MISSING:
        return None
    return text


def clean_tags(
    tag_lists: Iterable[Iterable[object] | None],
    artist: str | None,
    genres: Iterable[str | None],
    limit: int = MAX_TAGS,
) -> tuple[str, ...]:
    """First ``limit`` distinct tags (case-insensitive), without the artist or a genre name."""
    skip = {g.casefold() for g in (clean_text(g) for g in genres) if g}
    if artist:
        skip.add(artist.casefold())
    seen: set[str] = set()
    kept: list[str] = []
    for tags in tag_lists:
        for raw in tags or ():
            tag = clean_text(raw)
            if tag is None:
                continue
            key = tag.casefold()
            if key in seen or key in skip:
                continue
            seen.add(key)
            kept.append(tag)
            if len(kept) == limit:
                return tuple(kept)
    return tuple(kept)


def track_text(
    track_id: int,
    title: object,
    artist: object,
    album: object,
    genre_top: object,
    genre_names: Sequence[str] = (),
    tag_lists: Iterable[Iterable[object] | None] = (),
) -> TrackText:
    """Clean one track's fields. ``genre_names``: titles of its genres, most specific first.

    The genre shown is ``genre_top``, else the first of ``genre_names`` (FMA leaves
    genre_top empty for about half the tracks, those in several root genres).
    """
    clean_artist = clean_text(artist)
    genre = clean_text(genre_top) or next(
        (g for g in (clean_text(n) for n in genre_names) if g), None
    )
    clean_album = clean_text(album)
    return TrackText(
        track_id=int(track_id),
        title=clean_text(title),
        artist=clean_artist,
        album=clean_album,
        genre=genre,
        tags=clean_tags(tag_lists, clean_artist, [genre, genre_top, *genre_names]),
    )


# --------------------------------------------------------------------------- templates


def _sentence(text: str) -> str:
    """End with a period unless the text already ends a sentence."""
    return text if text.endswith((".", "!", "?")) else text + "."


def _article(word: str) -> str:
    return "An" if word[:1].lower() in "aeiou" else "A"


def _reference(t: TrackText) -> str | None:
    # The reference recipe's template, with the Genre/Tags phrases dropped when empty.
    if not (t.title and t.artist):
        return None
    parts = [_sentence(f'"{t.title}" by {t.artist}')]
    if t.genre:
        parts.append(_sentence(f"Genre: {t.genre}"))
    if t.tags:
        parts.append(_sentence(f"Tags: {', '.join(t.tags)}"))
    return " ".join(parts)


def _genre_track(t: TrackText) -> str | None:
    if not (t.genre and t.title):
        return None
    text = f'{_article(t.genre)} {t.genre} track called "{t.title}"'
    return _sentence(f"{text} by {t.artist}" if t.artist else text)


def _genre_artist(t: TrackText) -> str | None:
    if not (t.genre and t.artist):
        return None
    text = f"{t.genre} music by {t.artist}"
    return _sentence(f'{text}, from the album "{t.album}"' if t.album else text)


def _album(t: TrackText) -> str | None:
    if not (t.title and t.album) or t.album.casefold() == t.title.casefold():
        return None
    text = f'"{t.title}", from the album "{t.album}"'
    return _sentence(f"{text} by {t.artist}" if t.artist else text)


def _tagged(t: TrackText) -> str | None:
    if not t.tags:
        return None
    tags = ", ".join(t.tags)
    return _sentence(f"Music by {t.artist}, tagged {tags}" if t.artist else f"Music tagged {tags}")


TEMPLATES: tuple[Callable[[TrackText], str | None], ...] = (
    _reference,
    _genre_track,
    _genre_artist,
    _album,
    _tagged,
)


def render_all(t: TrackText) -> tuple[str | None, ...]:
    """Every template's rendering for the track (index = template id; None = n/a)."""
    return tuple(template(t) for template in TEMPLATES)


def choose_template(track_id: int, seed: int, renderings: Sequence[str | None]) -> int | None:
    """One applicable template id, fixed by (seed, track_id); None if none applies."""
    applicable = [i for i, text in enumerate(renderings) if text]
    if not applicable:
        return None
    digest = hashlib.blake2b(f"{seed}:{int(track_id)}".encode(), digest_size=8).digest()
    return applicable[int.from_bytes(digest, "big") % len(applicable)]


# --------------------------------------------------------------------------- checks


def leak_problems(text: str | None, allowed_words: Iterable[str] = ()) -> list[str]:
    """What is wrong with a prompt: formatted missing values, empty quotes/fields, spacing.

    ``allowed_words`` are None/nan/... words that really occur in the track's own
    metadata (a title like "None of the Above").
    """
    if text is None or not text.strip():
        return ["empty prompt"]
    problems = []
    allowed = set(allowed_words)
    leaked = sorted({m.group() for m in _LEAK_WORDS.finditer(text)} - allowed)
    if leaked:
        problems.append(f"contains {', '.join(repr(w) for w in leaked)}")
    if '""' in text:
        problems.append('contains empty quotes ""')
    if _EMPTY_FIELD.search(text):
        problems.append("contains an empty field (e.g. 'Tags: .')")
    if "  " in text:
        problems.append("contains a double space")
    if text != text.strip():
        problems.append("leading or trailing whitespace")
    return problems


def allowed_leak_words(t: TrackText) -> set[str]:
    return {m.group() for value in t.values() for m in _LEAK_WORDS.finditer(value)}


# --------------------------------------------------------------------------- build


@dataclass(frozen=True)
class PromptSet:
    table: pa.Table  # PROMPTS_SCHEMA, sorted by track_id
    skipped: tuple[int, ...]  # tracks without any applicable template

    def template_counts(self) -> dict[str, int]:
        counts = Counter(template_name(i) for i in self.table.column("template_id").to_pylist())
        return {name: counts.get(name, 0) for name in (*TEMPLATE_NAMES, CAPTION)}


CAPTION = "caption"  # what a stored prompt from the captions file is named


def template_name(template_id: int) -> str:
    """A template's name, or ``caption`` for the renderings after the template slots."""
    return TEMPLATE_NAMES[template_id] if template_id < N_TEMPLATES else CAPTION


def with_captions(
    track_id: int,
    seed: int,
    templates: Sequence[str | None],
    captions: Sequence[str],
    mode: str,
) -> tuple[list[str | None], int | None]:
    """(renderings, chosen id) of a track: its template slots, then its captions.

    ``mixed`` keeps the templates and their choice (a caption only when no template
    applies); ``captions`` empties the template slots of a track that has captions, so its
    prompt and every epoch's draw is a caption; ``templates`` ignores them.
    """
    if mode == "templates" or not captions:
        return list(templates), choose_template(track_id, seed, templates)
    slots = list(templates) if mode == "mixed" else [None] * len(templates)
    renderings = [*slots, *captions]
    choice = choose_template(track_id, seed, slots)
    return renderings, choice if choice is not None else choose_template(track_id, seed, renderings)


def build_prompts(
    texts: Iterable[TrackText],
    seed: int,
    captions: Mapping[int, Sequence[str]] | None = None,
    captions_mode: str = "mixed",
) -> PromptSet:
    ids: list[int] = []
    prompts: list[str] = []
    template_ids: list[int] = []
    renderings: list[list[str | None]] = []
    skipped: list[int] = []
    captions = captions or {}
    for t in sorted(texts, key=lambda t: t.track_id):
        rendered, choice = with_captions(
            t.track_id, seed, render_all(t), captions.get(t.track_id, ()), captions_mode
        )
        if choice is None:
            skipped.append(t.track_id)
            continue
        ids.append(t.track_id)
        prompts.append(rendered[choice])  # type: ignore[arg-type]
        template_ids.append(choice)
        renderings.append(list(rendered))
    table = pa.table(
        {
            "track_id": pa.array(ids, pa.int64()),
            "prompt": pa.array(prompts, pa.string()),
            "template_id": pa.array(template_ids, pa.int32()),
            "renderings": pa.array(renderings, pa.list_(pa.string())),
        },
        schema=PROMPTS_SCHEMA,
    )
    return PromptSet(table=table, skipped=tuple(skipped))


def content_hash(table: pa.Table) -> str:
    """SHA-256 of the rows (not the file bytes, which depend on the Parquet writer)."""
    digest = hashlib.sha256()
    columns = [table.column(name).to_pylist() for name in PROMPTS_SCHEMA.names]
    for row in zip(*columns, strict=True):
        digest.update(json.dumps(row, ensure_ascii=False).encode())
        digest.update(b"\n")
    return digest.hexdigest()


# --------------------------------------------------------------------------- DuckDB

# Columns of `tracks` used for prompts; a smaller `tracks` table (tests of other
# parts) simply lacks some of them.
_TEXT_COLUMNS = (
    "track_title",
    "artist_name",
    "album_title",
    "track_genre_top",
    "track_genres",
    "track_genres_all",
    "track_tags",
    "album_tags",
    "artist_tags",
)


def read_track_texts(con: duckdb.DuckDBPyConnection, track_ids: Sequence[int]) -> list[TrackText]:
    """The cleaned prompt fields of these tracks from tables ``tracks`` and ``genres``."""
    if not table_exists(con, "tracks"):
        raise FileNotFoundError("no `tracks` table: materialize the `tracks` asset first")
    present = {row[0] for row in con.execute("DESCRIBE tracks").fetchall()}
    select = ", ".join(c if c in present else f"NULL AS {c}" for c in _TEXT_COLUMNS)
    genre_titles: Mapping[int, str] = {}
    if table_exists(con, "genres"):
        genre_titles = dict(con.execute("SELECT genre_id, title FROM genres").fetchall())
    rows = con.execute(
        f"""SELECT t.track_id, {select}
        FROM tracks t SEMI JOIN (SELECT unnest(?::BIGINT[]) AS track_id) s USING (track_id)
        ORDER BY t.track_id""",
        [list(map(int, track_ids))],
    ).fetchall()
    texts = []
    for tid, title, artist, album, top, genres, genres_all, tags, album_tags, artist_tags in rows:
        names = [genre_titles[g] for g in (genres or []) + (genres_all or []) if g in genre_titles]
        texts.append(
            track_text(tid, title, artist, album, top, names, (tags, album_tags, artist_tags))
        )
    return texts


def missing_track_ids(con: duckdb.DuckDBPyConnection, track_ids: Sequence[int]) -> list[int]:
    """The ids that have no row in table ``tracks``, sorted."""
    if not table_exists(con, "tracks"):
        return sorted(set(map(int, track_ids)))
    return [
        row[0]
        for row in con.execute(
            """SELECT s.track_id FROM (SELECT DISTINCT unnest(?::BIGINT[]) AS track_id) s
            ANTI JOIN tracks t USING (track_id) ORDER BY 1""",
            [list(map(int, track_ids))],
        ).fetchall()
    ]
