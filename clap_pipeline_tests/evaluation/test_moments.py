"""Moment accuracy: the best window of a track for "<genre> music" inside that genre's section."""

from __future__ import annotations

import numpy as np
import pytest

from clap_pipeline.evaluation.moments import MOMENT_QUERY, moment_accuracy
from clap_pipeline.sections import Section
from clap_pipeline.window_embeddings import WindowEmbeddings, l2_normalise

DIM = 16
GENRES = ["Folk", "Rock", "Jazz"]


def sectioned_windows(n_tracks: int, seed: int) -> tuple[WindowEmbeddings, list[Section]]:
    """30-s tracks: 3 windows of one genre, then 3 of another; window = genre + noise."""
    rng = np.random.default_rng(seed)
    centres = l2_normalise(np.eye(DIM, dtype=np.float32)[: len(GENRES)])
    ids, starts, rows, sections = [], [], [], []
    for t in range(n_tracks):
        a, b = rng.choice(len(GENRES), 2, replace=False)
        for w in range(6):
            rows.append(centres[a if w < 3 else b] + 0.3 * rng.standard_normal(DIM))
            ids.append(t)
            starts.append(5.0 * w)
        sections += [Section(t, 0, 15, GENRES[a]), Section(t, 15, 30, GENRES[b])]
    start = np.array(starts)
    emb = l2_normalise(np.array(rows, dtype=np.float32))
    return WindowEmbeddings(np.array(ids), start, start + 5, emb), sections


def genre_encoder(texts: list[str]) -> np.ndarray:
    """A text encoder that knows the genres (as a trained model would)."""
    eye = np.eye(DIM, dtype=np.float32)
    return np.stack([eye[GENRES.index(next(g for g in GENRES if g in t))] for t in texts])


def test_a_model_that_hears_the_genres_finds_the_moment_and_chance_is_the_share() -> None:
    windows, sections = sectioned_windows(40, 1)
    result = moment_accuracy(windows, [*sections, Section(999, 0, 5, "Rock")], genre_encoder)
    assert result is not None
    assert result.queries == 80  # the track without windows is not asked
    assert result.accuracy > 0.95 and result.chance == pytest.approx(0.5)
    assert result.ci_low <= result.accuracy <= result.ci_high and result.ci_low > result.chance
    asked: list[str] = []

    def random_encoder(texts: list[str]) -> np.ndarray:
        asked.extend(texts)
        return np.random.default_rng(len(texts)).standard_normal((len(texts), DIM))

    blind = moment_accuracy(windows, sections, random_encoder)
    assert blind is not None and blind.ci_low < 0.5 + 0.2 and blind.accuracy < result.accuracy
    assert sorted(asked) == sorted(MOMENT_QUERY.format(genre=g) for g in GENRES)
    assert moment_accuracy(windows, [Section(999, 0, 5, "Rock")], genre_encoder) is None
