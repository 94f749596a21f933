"""Genre search quality: precision@k and AP by hand, ties, the prior baseline, intervals."""

from __future__ import annotations

import numpy as np
import pytest

from clap_pipeline.genre_search import (
    GenreSearchConfig,
    eligible_genres,
    genre_queries,
    model_genre_search,
    precision_and_ap,
    prior_genre_search,
)
from clap_pipeline.metrics import match_ranks_blockwise

QUICK = GenreSearchConfig(n_bootstrap=200, random_rounds=300, seed=1)


def test_precision_and_average_precision_by_hand() -> None:
    scores = np.array([0.9, 0.8, 0.7, 0.1])
    relevant = np.array([True, False, True, False])
    # Ranking: R, -, R, -: precision@2 = 1/2; AP = (1/1 + 2/3) / 2.
    assert precision_and_ap(scores, relevant, k=2) == pytest.approx((0.5, (1 + 2 / 3) / 2))
    # k beyond the pool: precision over the whole pool.
    assert precision_and_ap(scores, relevant, k=10)[0] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="relevant"):
        precision_and_ap(scores, np.zeros(4, bool))


def test_ties_count_against_the_relevant_clips() -> None:
    # A constant model: the relevant clip ranks last among equals, never first.
    p, ap = precision_and_ap(np.zeros(3), np.array([True, False, False]), k=1)
    assert (p, ap) == pytest.approx((0.0, 1 / 3))


def test_eligible_genres_need_three_clips() -> None:
    labels = ["Rock", "Rock", "Rock", "Folk", "Folk", None, "Jazz", "Jazz", "Jazz"]
    assert eligible_genres(labels) == ["Jazz", "Rock"]
    assert genre_queries(["Folk"]) == {
        "genre_music": ["Folk music"],
        "zero_shot_template": ["This audio is a Folk song."],
    }


def _one_hot_split(genres: list[str], per_genre: int) -> tuple[np.ndarray, list[str]]:
    labels = [g for g in genres for _ in range(per_genre)]
    audio = np.array([[float(g == h) for h in genres] for g in labels])
    return audio, labels


def test_a_perfect_model_scores_one_and_beats_the_prior() -> None:
    genres = ["Folk", "Jazz", "Rock", "Pop"]
    audio, labels = _one_hot_split(genres, per_genre=12)
    queries = np.eye(len(genres))
    result = model_genre_search(queries, audio, labels, genres, QUICK)
    assert result["precision_at_10"]["value"] == 1.0
    assert result["average_precision"]["value"] == 1.0
    # AP stays perfect in every resample; precision@10 dips where a resample holds < 10 clips.
    assert result["average_precision"]["ci_low"] == 1.0
    assert 0.8 < result["precision_at_10"]["ci_low"] < 1.0
    assert set(result["per_genre"]) == set(genres)

    prior = prior_genre_search(labels, genres, QUICK)
    assert prior["precision_at_10"]["value"] == pytest.approx(0.25)  # each genre's share
    assert 0.1 < prior["average_precision"]["value"] < 0.45
    assert prior["precision_at_10"]["ci_high"] < 1.0


def test_a_model_that_confuses_genres_scores_lower_with_an_honest_interval() -> None:
    genres = ["Folk", "Jazz", "Rock"]
    audio, labels = _one_hot_split(genres, per_genre=10)
    rng = np.random.default_rng(0)
    noisy = audio + rng.normal(0, 0.8, audio.shape)
    good = model_genre_search(np.eye(3), audio, labels, genres, QUICK)
    bad = model_genre_search(np.eye(3), noisy, labels, genres, QUICK)
    p = bad["precision_at_10"]
    assert p["value"] < good["precision_at_10"]["value"]
    assert p["ci_low"] <= p["value"] <= p["ci_high"] and p["ci_low"] < p["ci_high"]
    # Deterministic for a seed.
    assert model_genre_search(np.eye(3), noisy, labels, genres, QUICK) == bad


def test_identical_prompts_can_be_merged_in_exact_pair_ranks() -> None:
    # Pairs 0 and 1 have the same prompt text (identical text embeddings).
    text = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    audio = np.array([[0.9, 0.1], [1.0, 0.0], [0.0, 1.0]])
    strict = match_ranks_blockwise(text, audio)
    merged = match_ranks_blockwise(text, audio, groups=np.array([0, 0, 1]))
    assert strict.tolist() == [1, 0, 0]  # clip 1 outscores clip 0 for text 0: a miss
    assert merged.tolist() == [0, 0, 0]  # the same prompt: not a miss
    # audio->text: texts 0 and 1 tie exactly; strict counts the twin against the match.
    assert match_ranks_blockwise(audio, text).tolist() == [1, 1, 0]
    assert match_ranks_blockwise(audio, text, groups=np.array([0, 0, 1])).tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="groups"):
        match_ranks_blockwise(text, audio, groups=np.array([0, 1]))
