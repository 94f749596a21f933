"""Genre-level search quality: what a person typing "folk music" sees in the results.

Exact-pair recall counts only the one clip a prompt was written for. Here each genre
with at least ``MIN_GENRE_TRACKS`` tracks in a split is a query ("<genre> music", and
the zero-shot template), every clip of the split is a candidate, and the clips of that
genre (FMA's ``genre_top``) are the relevant ones:

- precision@10 = share of the genre's clips among the 10 best-scoring clips
  (``min(10, N)`` when the split is smaller);
- average precision (AP) = mean over the genre's clips of the precision at each one's
  rank, over the whole ranking.

Both are averaged over genres (macro: each genre counts once). Ties are pessimistic, as
in ``metrics``: a relevant clip scoring the same as irrelevant ones ranks below them, so a
constant model scores like the worst ranking, never a lucky one.

Intervals: percentile bootstrap over the split's *clips* (the candidate pool is rebuilt
from each resample, genres kept fixed; a genre absent from a resample is left out of that
resample's average). The genre-prior baseline is a random ranking: its expected
precision@10 is the genre's share of the split; its AP and interval are the mean and the
central interval of seeded random rankings of the same split.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

MIN_GENRE_TRACKS = 3
SEARCH_K = 10
GENRE_QUERIES: Mapping[str, str] = {
    "genre_music": "{genre} music",
    "zero_shot_template": "This audio is a {genre} song.",
}


def precision_name(k: int) -> str:
    """``precision_at_<k>``: the share of the top k that are of the query's genre."""
    return f"precision_at_{k}"


PRECISION_NAME = precision_name(SEARCH_K)
SCORE_NAMES = (PRECISION_NAME, "average_precision")


def eligible_genres(labels: Sequence[str | None], min_tracks: int = MIN_GENRE_TRACKS) -> list[str]:
    """Genres with at least ``min_tracks`` clips, sorted."""
    counts: dict[str, int] = {}
    for label in labels:
        if label:
            counts[label] = counts.get(label, 0) + 1
    return sorted(g for g, c in counts.items() if c >= min_tracks)


def ranking_order(scores: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """Candidate indices best first; among equal scores the irrelevant ones come first."""
    return np.lexsort((relevant.astype(np.int8), -np.asarray(scores, dtype=np.float64)))


def precision_and_ap(
    scores: np.ndarray, relevant: np.ndarray, k: int = SEARCH_K
) -> tuple[float, float]:
    """(precision@k, average precision) of one query; ``relevant`` must hold a True."""
    hits = relevant[ranking_order(scores, relevant)].astype(np.float64)
    n_relevant = hits.sum()
    if n_relevant == 0:
        raise ValueError("average precision needs at least one relevant candidate")
    cutoff = min(k, len(hits))
    precision_at_k = float(hits[:cutoff].sum() / cutoff)
    precision_at_rank = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return precision_at_k, float((precision_at_rank * hits).sum() / n_relevant)


def _macro(
    scores: np.ndarray, labels: np.ndarray, genres: Sequence[str], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-genre (precision@k, AP) for a (G, N) score matrix; NaN where a genre is absent."""
    out = np.full((2, len(genres)), np.nan)
    for g, genre in enumerate(genres):
        relevant = labels == genre
        if relevant.any():
            out[:, g] = precision_and_ap(scores[g], relevant, k)
    return out[0], out[1]


def _mean_present(values: np.ndarray) -> float:
    """Mean over the genres present (NaN marks an absent one); NaN when none is."""
    present = values[~np.isnan(values)]
    return float(present.mean()) if len(present) else float("nan")


@dataclass(frozen=True)
class GenreSearchConfig:
    n_bootstrap: int = 1000
    random_rounds: int = 1000
    confidence: float = 0.95
    seed: int = 0
    k: int = SEARCH_K


def _interval(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = (1 - confidence) / 2 * 100
    low, high = np.nanpercentile(samples, [alpha, 100 - alpha])
    return float(low), float(high)


def _stat(value: float, samples: np.ndarray, confidence: float) -> dict[str, float]:
    low, high = _interval(samples, confidence)
    return {"value": float(value), "ci_low": low, "ci_high": high}


def model_genre_search(
    query_embeddings: np.ndarray,
    audio_embeddings: np.ndarray,
    labels: Sequence[str | None],
    genres: Sequence[str],
    config: GenreSearchConfig,
) -> dict[str, object]:
    """Macro precision@k and mAP (with bootstrap intervals) and the per-genre values.

    ``query_embeddings`` (G, d) holds one query per genre in ``genres`` order;
    ``audio_embeddings`` (N, d) the split's clips with their ``labels``.
    """
    scores = np.asarray(query_embeddings, np.float64) @ np.asarray(audio_embeddings, np.float64).T
    return scored_genre_search(scores, labels, genres, config)


def scored_genre_search(
    scores: np.ndarray,
    labels: Sequence[str | None],
    genres: Sequence[str],
    config: GenreSearchConfig,
) -> dict[str, object]:
    """:func:`model_genre_search` from a (G, N) score matrix (a track's windows aggregated
    by any rule: ``window_embeddings.WindowEmbeddings.track_scores``)."""
    labels_arr = np.array([label or "" for label in labels], dtype=object)
    scores = np.asarray(scores, np.float64)
    precision, ap = _macro(scores, labels_arr, genres, config.k)
    rng = np.random.default_rng([config.seed, 11])
    n = len(labels_arr)
    boot = np.empty((2, config.n_bootstrap))
    for b in range(config.n_bootstrap):
        pick = rng.integers(0, n, n)
        p_b, ap_b = _macro(scores[:, pick], labels_arr[pick], genres, config.k)
        boot[:, b] = _mean_present(p_b), _mean_present(ap_b)
    name_p, name_ap = SCORE_NAMES
    return {
        name_p: _stat(np.mean(precision), boot[0], config.confidence),
        name_ap: _stat(np.mean(ap), boot[1], config.confidence),
        "per_genre": {
            genre: {name_p: float(precision[g]), name_ap: float(ap[g])}
            for g, genre in enumerate(genres)
        },
    }


def prior_genre_search(
    labels: Sequence[str | None], genres: Sequence[str], config: GenreSearchConfig
) -> dict[str, object]:
    """The genre-prior baseline: random rankings of the split (seeded)."""
    labels_arr = np.array([label or "" for label in labels], dtype=object)
    n = len(labels_arr)
    shares = np.array([(labels_arr == g).mean() for g in genres])
    rng = np.random.default_rng([config.seed, 12])
    rounds = np.empty((2, config.random_rounds))
    for r in range(config.random_rounds):
        scores = np.broadcast_to(rng.permutation(n).astype(np.float64), (len(genres), n))
        p_r, ap_r = _macro(scores, labels_arr, genres, config.k)
        rounds[:, r] = p_r.mean(), ap_r.mean()
    name_p, name_ap = SCORE_NAMES
    return {
        # Expected precision@k of a random ranking = the genre's share (exact).
        name_p: _stat(float(shares.mean()), rounds[0], config.confidence),
        name_ap: _stat(float(rounds[1].mean()), rounds[1], config.confidence),
        "shares": {g: float(s) for g, s in zip(genres, shares, strict=True)},
    }


def genre_queries(genres: Sequence[str]) -> dict[str, list[str]]:
    """Each query template's text per genre (``genres`` order)."""
    return {
        name: [template.format(genre=g) for g in genres] for name, template in GENRE_QUERIES.items()
    }
