"""Captions of an arrangement: what a clip plays, in the words people use for music.

One home for the phrasings that describe a generated clip from how it was made (its
genre, band, tempo, register and tone): the stand-in's pre-training captions its corpus
with them (``pretrain.py``), and ``demo-data`` writes them as the collection's
``captions.csv`` (``track_id``, ``caption``; several per track), the table
``CLAP_CAPTIONS`` reads (``metadata/captions.py``). No torch here.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from typing import Protocol

import numpy as np

from clap_pipeline.demo.plan import GENRE_BY_ID, TOP_OF_STYLE, TrackPlan
from clap_pipeline.demo.synth import TEMPO_TAGS, TONE_TAGS

CAPTIONS_NAME = "captions.csv"  # next to tracks.csv in a demo collection
CAPTIONS_PER_TRACK = 3

# Made-up titles and artists: metadata-derived captions carry names that say nothing
# about the sound; a model has to learn to look past them.
NAME_WORDS = [
    "Blue",
    "Night",
    "River",
    "Stone",
    "Paper",
    "Glass",
    "Silver",
    "Winter",
    "Summer",
    "Echo",
    "Harbor",
    "Lantern",
    "Orbit",
    "Velvet",
    "Signal",
    "Meadow",
    "Copper",
    "Drift",
    "Hollow",
    "Bright",
    "Ember",
    "Static",
    "Tide",
    "Willow",
    "Atlas",
    "Cinder",
    "Marlow",
    "Juno",
    "Ivory",
    "Sable",
    "Quill",
    "Rowan",
    "Tamsin",
    "Odile",
    "Bram",
    "Kestrel",
    "Fenn",
    "Lyra",
    "Corin",
]
# Words a caption may use besides genre names and tags (the stand-in's tokenizer learns them).
CAPTION_WORDS = [
    "with",
    "and",
    "featuring",
    "playing",
    "played",
    "on",
    "a",
    "an",
    "the",
    "of",
    "music",
    "song",
    "track",
    "tune",
    "piece",
    "instrumental",
    "tempo",
    "mood",
    "sound",
    "sounds",
    "band",
    "solo",
]


class Arranged(Protocol):
    """What a caption is written from."""

    style: str
    genre: str  # an FMA genre title: the style's top-level genre or one of its sub-genres
    band: tuple[str, ...]  # instruments, as rendered (none for the synthesiser)
    words: tuple[str, ...]  # tempo / tone / register tags, as rendered


def spoken_list(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def caption(clip: Arranged, rng: np.random.Generator) -> str:
    """One phrasing of what the clip plays (genre, band, tempo and tone words)."""
    band = list(clip.band)
    rng.shuffle(band)
    if len(band) > 1 and rng.random() < 0.3:
        band = band[: int(rng.integers(1, len(band)))]  # captions often name only some
    genre = clip.genre
    if rng.random() < 0.3:  # the top-level name now and then, as people type it
        genre = GENRE_BY_ID[TOP_OF_STYLE[clip.style]][2]
    words = [w for w in clip.words if w in TEMPO_TAGS + TONE_TAGS]
    adjectives = " ".join(words) + " " if words else ""
    tags = list(clip.band) + list(clip.words)
    rng.shuffle(tags)
    name = " ".join(str(w) for w in rng.choice(NAME_WORDS, 2))
    artist = " ".join(str(w) for w in rng.choice(NAME_WORDS, 2))
    templates = [f"{genre} music"]
    if band:
        templates += [
            f"{genre} music with {spoken_list(band)}",
            f"a {adjectives}{genre} track with {spoken_list(band)}",
            spoken_list(band),
            f"{adjectives}{spoken_list(band)}",
        ]
    elif adjectives:
        templates += [f"a {adjectives}{genre} track", f"{adjectives}{genre} music"]
    if tags:
        templates += [
            f"Genre: {genre}. Tags: {', '.join(tags)}.",
            f"music tagged {', '.join(tags)}",
            f'"{name}" by {artist}. Genre: {genre}. Tags: {", ".join(tags)}.',
        ]
    templates.append(f'A {genre} track called "{name}" by {artist}.')
    return str(templates[int(rng.integers(len(templates)))]).strip()


class _PlanArrangement:
    """A demo track's arrangement, as its plan renders it."""

    def __init__(self, plan: TrackPlan):
        params = plan.params
        genres = [g for g in plan.row[("track", "genres")] or () if g in GENRE_BY_ID]  # type: ignore[attr-defined]
        self.style = params.style
        self.genre = GENRE_BY_ID[genres[0] if genres else TOP_OF_STYLE[self.style]][2]
        self.band = tuple(params.instruments)
        self.words = tuple(w for w in (params.tempo, params.tone, params.register) if w)


def plan_captions(plan: TrackPlan, seed: int, n: int = CAPTIONS_PER_TRACK) -> list[str]:
    """Up to ``n`` distinct captions of a demo track (a function of the seed and its id)."""
    rng = np.random.default_rng([seed, 77, plan.track_id])
    arranged = _PlanArrangement(plan)
    out: list[str] = []
    for _ in range(4 * n):
        text = caption(arranged, rng)
        if text not in out:
            out.append(text)
        if len(out) == n:
            break
    return out


def captions_csv_text(plans: Iterable[TrackPlan], seed: int) -> str:
    """``track_id,caption`` rows for the tracks with audio (several per track)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["track_id", "caption"])
    for plan in plans:
        if plan.defect is None:
            writer.writerows([plan.track_id, text] for text in plan_captions(plan, seed))
    return buffer.getvalue()
