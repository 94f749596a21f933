"""Tracks whose halves are two genres: a query that names one half should land in it.

``demo-data --sections``: every playable track's clip plays its own genre (its band, tempo
and progression, as the collection's renderer makes them) up to a window boundary near the
middle, and another genre after it; ``fma_metadata/sections.csv`` says which genre plays
where (``track_id, start_s, end_s, genre``, the genre as genres.csv titles it). The
evaluation's moment accuracy asks "<genre> music" of each section and checks whether the
track's best window starts inside it (``evaluation/moments.py``).

Everything is a function of (seed, track_id), like the rest of the generator.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from clap_pipeline.demo.plan import GENRE_BY_ID, TOP_OF_STYLE
from clap_pipeline.demo.rendered import instruments_for, render_track
from clap_pipeline.demo.synth import SR, AudioParams, render_clip
from clap_pipeline.sections import Section
from clap_pipeline.windows import CLIP_SECONDS as WINDOW_S


def genre_title(style: str) -> str:
    return GENRE_BY_ID[TOP_OF_STYLE[style]][2]


def second_half(params: AudioParams) -> AudioParams:
    """The other genre of a track's second half (its own band when rendered)."""
    rng = np.random.default_rng([params.seed, 13, params.track_id])
    others = sorted(s for s in TOP_OF_STYLE if s != params.style)
    style = str(rng.choice(others))
    second = replace(params, style=style)
    if params.renderer == "fluidsynth":
        second = replace(second, instruments=tuple(instruments_for(style, rng)))
    return second


def split_s(seconds: float) -> float:
    """Where the second half starts: the window boundary nearest the middle (half a clip
    shorter than two windows)."""
    boundary = WINDOW_S * round(seconds / (2 * WINDOW_S))
    return float(boundary) if 0 < boundary < seconds else seconds / 2


def track_sections(params: AudioParams, seconds: float, track_id: int) -> tuple[Section, Section]:
    """The two sections of a track's clip (no rendering)."""
    split = split_s(seconds)
    return (
        Section(track_id, 0.0, split, genre_title(params.style)),
        Section(track_id, split, float(seconds), genre_title(second_half(params).style)),
    )


def sectioned_clip(
    params: AudioParams, seconds: float, track_id: int
) -> tuple[np.ndarray, tuple[Section, Section]]:
    """The clip as int16 PCM (n, 2), and its two sections."""
    split = split_s(seconds)
    render = render_clip if params.renderer == "synth" else render_track
    first_pcm = render(params, split)[: round(split * SR)]
    pcm = np.concatenate([first_pcm, render(second_half(params), seconds - split)])
    return pcm, track_sections(params, seconds, track_id)
