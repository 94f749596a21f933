""" "More like this", judged: audio->audio genre precision, with and without the query's artist.

Each clip of a split with a genre is a query; the split's other clips are ranked by the
cosine of their audio embeddings to it (what ``/api/tracks/{id}/similar`` serves), and
precision@10 is the share of the query's genre (FMA's ``genre_top``) among the top 10
(``min(10, candidates)`` when fewer). Two numbers, as music-similarity evaluations report
them:

- **all clips**: every other clip is a candidate;
- **other artists only**: clips by the query's artist are left out of its candidates.
  An artist's tracks share a genre and often a sound, so same-artist neighbours make
  genre precision look several times better than the model's sense of genre is
  ("artist filter", Flexer & Schnitzer). Clips without an artist filter nothing.

Both are means over queries with a percentile bootstrap interval over queries, next to
the prior: the expected precision of a random ranking, the mean over queries of the
genre's share among that query's candidates. Ties are pessimistic, as in
``genre_search``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from clap_pipeline.evaluation.inputs import EvalConfig, SplitClips
from clap_pipeline.evaluation.report import Interval, SimilarityReport, SimilaritySplit
from clap_pipeline.genre_search import SEARCH_K, ranking_order
from clap_pipeline.metrics import bootstrap_mean_interval

if TYPE_CHECKING:  # the encoder module loads torch
    from clap_pipeline.evaluation.encoder import Embedded

FILTERS = ("all", "other_artists")  # candidate pools, as the report keys them
MIN_QUERIES = 2


def candidate_masks(
    genres: Sequence[str | None], artists: Sequence[object | None]
) -> dict[str, np.ndarray]:
    """(Q, N) booleans per filter: clip n is a candidate for query q (queries: clips with
    a genre, in order). Never the query itself; ``other_artists`` drops its artist too."""
    n = len(genres)
    queries = [i for i, g in enumerate(genres) if g]
    mask = np.ones((len(queries), n), dtype=bool)
    mask[np.arange(len(queries)), queries] = False
    artist = np.array([a if a is not None else object() for a in artists], dtype=object)
    same = artist[queries][:, None] == artist[None, :]
    return {"all": mask, "other_artists": mask & ~same}


def genre_precision(
    audio: np.ndarray, genres: Sequence[str | None], candidates: np.ndarray, k: int = SEARCH_K
) -> np.ndarray:
    """Per query precision@k of its genre among its candidates (NaN: no candidate)."""
    queries = [i for i, g in enumerate(genres) if g]
    labels = np.array([g or "" for g in genres], dtype=object)
    emb = np.asarray(audio, np.float64)
    out = np.full(len(queries), np.nan)
    for row, q in enumerate(queries):
        pool = np.flatnonzero(candidates[row])
        if not len(pool):
            continue
        relevant = labels[pool] == labels[q]
        order = ranking_order(emb[pool] @ emb[q], relevant)
        cutoff = min(k, len(pool))
        out[row] = relevant[order[:cutoff]].mean()
    return out


def genre_prior(genres: Sequence[str | None], candidates: np.ndarray) -> np.ndarray:
    """Per query: the share of its genre among its candidates (a random ranking's precision)."""
    queries = [i for i, g in enumerate(genres) if g]
    labels = np.array([g or "" for g in genres], dtype=object)
    same = labels[queries][:, None] == labels[None, :]
    counts = candidates.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, (same & candidates).sum(axis=1) / counts, np.nan)


def _interval(values: np.ndarray, config: EvalConfig) -> Interval:
    present = values[~np.isnan(values)]
    low, high = bootstrap_mean_interval(
        present, n_resamples=config.n_bootstrap, seed=config.seed, confidence=config.confidence
    )
    return Interval(float(present.mean()), low, high)


def similarity_report(
    clips: Mapping[str, SplitClips],
    embedded: Mapping[str, Embedded],
    genre_of: Mapping[int, str | None],
    artist_of: Mapping[int, object | None],
    config: EvalConfig,
) -> SimilarityReport:
    """Audio->audio genre precision@10 per split, model and candidate filter."""
    report = SimilarityReport(k=SEARCH_K, filters=list(FILTERS), splits={})
    for name, split in clips.items():
        genres = [genre_of.get(t) for t in split.track_ids]
        artists = [artist_of.get(t) for t in split.track_ids]
        masks = candidate_masks(genres, artists)
        n_queries = sum(1 for g in genres if g)
        block = report.splits[name] = SimilaritySplit(
            n_queries=n_queries,
            same_artist_pairs=int((masks["all"] & ~masks["other_artists"]).sum()),
        )
        if n_queries < MIN_QUERIES:
            continue
        for kind in FILTERS:
            prior = genre_prior(genres, masks[kind])
            if np.isnan(prior).all():
                continue
            block.prior[kind] = float(np.nanmean(prior))
            for model_key, run in embedded.items():
                precision = genre_precision(run.audio[name], genres, masks[kind])
                block.models.setdefault(model_key, {})[kind] = _interval(precision, config)
    return report
