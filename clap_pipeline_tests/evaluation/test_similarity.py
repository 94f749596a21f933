"""'More like this' scored: audio->audio genre precision with and without the query's artist."""

from __future__ import annotations

import numpy as np
import pytest

from clap_pipeline.evaluation.similarity import candidate_masks, genre_precision, genre_prior


def test_the_artist_filter_drops_the_query_and_its_artists_clips_only() -> None:
    genres = ["Rock", "Rock", None, "Folk", "Folk"]
    artists = [1, 1, 1, 2, None]
    masks = candidate_masks(genres, artists)
    # Queries are the clips with a genre (0, 1, 3, 4); never themselves.
    assert masks["all"].tolist() == [
        [False, True, True, True, True],
        [True, False, True, True, True],
        [True, True, True, False, True],
        [True, True, True, True, False],
    ]
    # Artist 1's clips (0, 1, 2) drop out for queries 0 and 1; a clip without an artist
    # shares it with nobody.
    assert masks["other_artists"].tolist() == [
        [False, False, False, True, True],
        [False, False, False, True, True],
        [True, True, True, False, True],
        [True, True, True, True, False],
    ]


def test_same_artist_neighbours_inflate_genre_precision() -> None:
    # 4 genres x 3 artists x 3 clips. An embedding that only knows the artist puts its
    # 2 same-artist clips nearest: with them, every query's top 2 share its genre; without
    # them, its ranking knows nothing about the genre.
    rng = np.random.default_rng(0)
    genres, artists, audio = [], [], []
    artist_vectors = rng.standard_normal((12, 16))
    for artist in range(12):
        for _ in range(3):
            genres.append(f"g{artist % 4}")
            artists.append(artist)
            audio.append(artist_vectors[artist] + 0.01 * rng.standard_normal(16))
    audio = np.array(audio)
    masks = candidate_masks(genres, artists)
    with_artist = genre_precision(audio, genres, masks["all"], k=2)
    without = genre_precision(audio, genres, masks["other_artists"], k=2)
    assert with_artist.tolist() == [1.0] * 36
    assert without.mean() < 0.6
    # The prior: the genre's share among each query's candidates.
    assert genre_prior(genres, masks["all"]) == pytest.approx([8 / 35] * 36)
    assert genre_prior(genres, masks["other_artists"]) == pytest.approx([6 / 33] * 36)


def test_precision_matches_a_direct_ranking_with_pessimistic_ties() -> None:
    rng = np.random.default_rng(4)
    genres = [str(g) for g in rng.integers(0, 3, 25)]
    artists = list(rng.integers(0, 8, 25))
    audio = rng.standard_normal((25, 6))
    audio[3] = audio[7]  # a tie between two candidates of every other query
    masks = candidate_masks(genres, artists)
    got = genre_precision(audio, genres, masks["other_artists"], k=10)
    for q in range(25):
        pool = [i for i in range(25) if masks["other_artists"][q, i]]
        relevant = {i for i in pool if genres[i] == genres[q]}
        # Best score first; among equal scores the irrelevant clip first.
        order = sorted(pool, key=lambda i: (-float(audio[i] @ audio[q]), i in relevant))
        assert got[q] == pytest.approx(sum(i in relevant for i in order[:10]) / min(10, len(pool)))
