"""Retrieval metrics with LAION-AI/CLAP's conventions, bootstrap intervals and random baselines.

For an N x N similarity matrix (row i = query i, column i = its match):
``rank_i`` is the 0-based position of the match among the row's scores sorted
descending. Ties are broken pessimistically and deterministically: every other
item scoring *the same or higher* than the match counts as ranked above it, so a
constant model gets rank N-1, never a lucky 0.

R@k = mean(rank < k); median rank = floor(median(rank)) + 1; mean rank =
mean(rank) + 1; mAP@10 = mean(1 / (rank + 1) if rank < 10 else 0) (one relevant
item per query, so AP is the reciprocal rank cut at 10).

Bootstrap intervals resample the *per-query ranks* (each computed once against
the full pool of N candidates), not the query indices with the pool rebuilt
from the resample. Reasons:

- R@k depends on the pool size: keeping the pool at the N evaluated candidates
  keeps every resample comparable with the random baseline k/N.
- A resampled pool holds duplicate items; an exact copy of the match ties with
  it and, with pessimistic tie-breaking, pushes it down a rank, biasing every
  resample downward.
- It is O(B x N) instead of O(B x N^2).

The interval therefore covers the sampling of queries for this candidate pool,
not the variation from drawing a different pool. Text->audio and audio->text
use the same resampled pair indices (pair i is both a text and a clip query).
"""

from __future__ import annotations

import numpy as np

KS = (1, 5, 10)
TEXT_TO_AUDIO, AUDIO_TO_TEXT = DIRECTIONS = ("text_to_audio", "audio_to_text")
MAP_CUTOFF = 10


def recall_name(k: int) -> str:
    """``recall_at_<k>``, the name of R@k in one direction."""
    return f"recall_at_{k}"


# Per-metric names from ``metrics_from_ranks``, in report order, spelled here only (a
# metric's key, as MLflow and the reports hold it, is ``metric_key(direction, name)``).
RECALL_NAMES = tuple(recall_name(k) for k in KS)
MEDIAN_RANK, MEAN_RANK = RANK_METRICS = ("median_rank", "mean_rank")
MAP_NAME = f"map_at_{MAP_CUTOFF}"
METRIC_NAMES = (*RECALL_NAMES, *RANK_METRICS, MAP_NAME)
# Bounded by 1 (recalls, mAP) vs ranks in [1, N].
UNIT_INTERVAL_METRICS = (*RECALL_NAMES, MAP_NAME)


def metric_key(direction: str, name: str) -> str:
    """The key of one metric in one direction: ``text_to_audio_recall_at_5``."""
    return f"{direction}_{name}"


def recall_key(k: int, direction: str = TEXT_TO_AUDIO) -> str:
    return metric_key(direction, recall_name(k))


# Text->audio R@5: training's epoch selection, the registry's champion rule and the
# evaluation's headline (its verdict against random).
SELECTION_METRIC = recall_key(5)
# Each bootstrap chunk holds at most this many resampled ranks (memory ~ 8 bytes each).
_BOOTSTRAP_CHUNK_ELEMENTS = 2_000_000


def match_ranks(similarity: np.ndarray) -> np.ndarray:
    """0-based rank of the diagonal entry in each row (ties count against the match)."""
    sim = np.asarray(similarity, dtype=np.float64)
    if sim.ndim != 2 or sim.shape[0] != sim.shape[1]:
        raise ValueError(f"similarity must be square (N x N), got shape {sim.shape}")
    diag = np.diag(sim)[:, None]
    others = sim >= diag
    np.fill_diagonal(others, False)
    return others.sum(axis=1)


def match_ranks_blockwise(
    queries: np.ndarray,
    candidates: np.ndarray,
    block_rows: int = 1024,
    groups: np.ndarray | None = None,
) -> np.ndarray:
    """``match_ranks(queries @ candidates.T)`` without holding the N x N matrix.

    Query i's match is candidate i. Scores are computed ``block_rows`` queries at a
    time (memory ~ block_rows x N), with the same pessimistic tie rule; the
    match's score is read from the same product as the others, so a query never
    ties with itself through rounding.

    ``groups`` (N ints, optional): candidates in the match's group are equivalent
    to it and never ranked above it (pairs whose prompt texts are identical: the
    text cannot tell them apart, so retrieving either is not a miss).
    """
    q = np.asarray(queries, dtype=np.float64)
    c = np.asarray(candidates, dtype=np.float64)
    if q.ndim != 2 or q.shape != c.shape:
        raise ValueError(f"queries and candidates must both be (N, d), got {q.shape}, {c.shape}")
    if block_rows < 1:
        raise ValueError(f"block_rows must be >= 1, got {block_rows}")
    if groups is not None:
        groups = np.asarray(groups)
        if groups.shape != (len(q),):
            raise ValueError(f"groups must have one entry per pair ({len(q)}), got {groups.shape}")
    n = len(q)
    ranks = np.empty(n, dtype=np.int64)
    for start in range(0, n, block_rows):
        stop = min(start + block_rows, n)
        rows = np.arange(stop - start)
        scores = q[start:stop] @ c.T
        match = scores[rows, start + rows][:, None]
        above = scores >= match
        above[rows, start + rows] = False
        if groups is not None:
            above &= groups[start:stop, None] != groups[None, :]
        ranks[start:stop] = above.sum(axis=1)
    return ranks


def metrics_from_ranks(ranks: np.ndarray, ks: tuple[int, ...] = KS) -> dict[str, float]:
    ranks = np.asarray(ranks)
    out = {recall_name(k): float(np.mean(ranks < k)) for k in ks}
    out[MEDIAN_RANK] = float(np.floor(np.median(ranks)) + 1)
    out[MEAN_RANK] = float(np.mean(ranks) + 1)
    out[MAP_NAME] = float(np.mean(np.where(ranks < MAP_CUTOFF, 1.0 / (ranks + 1), 0.0)))
    return out


def retrieval_metrics(similarity_text_audio: np.ndarray) -> dict[str, float]:
    """Metrics for both directions from ``sim[i, j] = cos(text_i, audio_j)``.

    Keys: ``text_to_audio_recall_at_1`` ... ``audio_to_text_map_at_10``.
    """
    sim = np.asarray(similarity_text_audio)
    out: dict[str, float] = {}
    for direction, matrix in ((TEXT_TO_AUDIO, sim), (AUDIO_TO_TEXT, sim.T)):
        for name, value in metrics_from_ranks(match_ranks(matrix)).items():
            out[metric_key(direction, name)] = value
    return out


def retrieval_metrics_blockwise(
    text: np.ndarray, audio: np.ndarray, block_rows: int = 1024
) -> dict[str, float]:
    """``retrieval_metrics(text @ audio.T)`` from the embeddings, never holding the N x N matrix.

    Memory ~ ``block_rows`` x N per direction instead of N x N (a 10,657-clip split:
    85 MB per block instead of 0.9 GB of float64 scores plus a boolean copy).
    """
    out: dict[str, float] = {}
    for direction, queries, candidates in (
        (TEXT_TO_AUDIO, text, audio),
        (AUDIO_TO_TEXT, audio, text),
    ):
        ranks = match_ranks_blockwise(queries, candidates, block_rows)
        for name, value in metrics_from_ranks(ranks).items():
            out[metric_key(direction, name)] = value
    return out


def random_recall(k: int, n: int) -> float:
    """Expected R@k of a random ranking over n candidates: exactly min(k, n) / n."""
    return min(k, n) / n


# --------------------------------------------------------------------------- batched statistics


def _metrics_per_row(ranks: np.ndarray) -> dict[str, np.ndarray]:
    """``metrics_from_ranks`` applied to each row of a (B, N) array of ranks, vectorised."""
    out = {recall_name(k): np.mean(ranks < k, axis=1) for k in KS}
    out[MEDIAN_RANK] = np.floor(np.median(ranks, axis=1)) + 1
    out[MEAN_RANK] = np.mean(ranks, axis=1) + 1
    reciprocal = np.where(ranks < MAP_CUTOFF, 1.0 / (ranks + 1.0), 0.0)
    out[MAP_NAME] = np.mean(reciprocal, axis=1)
    return out


def _percentile_interval(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = (1.0 - confidence) / 2 * 100
    low, high = np.percentile(samples, [tail, 100 - tail])
    return float(low), float(high)


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def bootstrap_rank_metrics(
    ranks_by_direction: dict[str, np.ndarray],
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, dict[str, float]]:
    """Point estimates and percentile bootstrap intervals from per-query ranks.

    ``ranks_by_direction`` maps a direction name to the N per-query ranks (all the
    same N, index i = pair i). Each resample draws N pair indices with replacement
    (seeded) and applies them to every direction. Returns
    ``{"<direction>_<metric>": {"value", "ci_low", "ci_high"}}``.
    """
    _check_confidence(confidence)
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    arrays = {d: np.asarray(r, dtype=np.int64) for d, r in ranks_by_direction.items()}
    sizes = {len(r) for r in arrays.values()}
    if len(sizes) != 1 or 0 in sizes:
        raise ValueError(f"every direction needs the same non-zero number of ranks, got {sizes}")
    n = sizes.pop()
    rng = np.random.default_rng(seed)
    samples: dict[str, list[np.ndarray]] = {f"{d}_{m}": [] for d in arrays for m in METRIC_NAMES}
    chunk = max(1, _BOOTSTRAP_CHUNK_ELEMENTS // n)
    done = 0
    while done < n_resamples:
        size = min(chunk, n_resamples - done)
        idx = rng.integers(0, n, size=(size, n))
        for direction, ranks in arrays.items():
            for name, values in _metrics_per_row(ranks[idx]).items():
                samples[metric_key(direction, name)].append(values)
        done += size
    out: dict[str, dict[str, float]] = {}
    for direction, ranks in arrays.items():
        for name, value in metrics_from_ranks(ranks).items():
            key = metric_key(direction, name)
            low, high = _percentile_interval(np.concatenate(samples[key]), confidence)
            out[key] = {"value": value, "ci_low": low, "ci_high": high}
    return out


def bootstrap_mean_interval(
    values: np.ndarray, *, n_resamples: int = 1000, seed: int = 0, confidence: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-item values (e.g. 0/1 correctness)."""
    _check_confidence(confidence)
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or len(x) == 0 or n_resamples < 1:
        raise ValueError(f"need a non-empty 1-d array and n_resamples >= 1, got {x.shape}")
    rng = np.random.default_rng(seed)
    chunk = max(1, _BOOTSTRAP_CHUNK_ELEMENTS // len(x))
    means = []
    for start in range(0, n_resamples, chunk):
        size = min(chunk, n_resamples - start)
        means.append(x[rng.integers(0, len(x), size=(size, len(x)))].mean(axis=1))
    return _percentile_interval(np.concatenate(means), confidence)


def retrieval_metrics_with_ci(
    similarity_text_audio: np.ndarray,
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, dict[str, float]]:
    """``retrieval_metrics`` (same keys, same values) each with a bootstrap interval."""
    sim = np.asarray(similarity_text_audio)
    ranks = {TEXT_TO_AUDIO: match_ranks(sim), AUDIO_TO_TEXT: match_ranks(sim.T)}
    return bootstrap_rank_metrics(ranks, n_resamples=n_resamples, seed=seed, confidence=confidence)


# --------------------------------------------------------------------------- random baselines


def random_expected_metrics(n: int) -> dict[str, float]:
    """Exact values for a uniformly random ranking of n candidates (one direction).

    The match's 0-based rank is uniform on 0..n-1, so R@k = min(k, n)/n, mean
    rank = (n + 1)/2, mAP@10 = H(min(10, n))/n (H = harmonic number) and the
    median rank is that of the rank distribution itself: floor((n - 1)/2) + 1.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    out = {recall_name(k): random_recall(k, n) for k in KS}
    out[MEDIAN_RANK] = float((n - 1) // 2 + 1)
    out[MEAN_RANK] = (n + 1) / 2
    out[MAP_NAME] = float(sum(1.0 / r for r in range(1, min(MAP_CUTOFF, n) + 1)) / n)
    return out


def random_rankings(n: int, rounds: int, rng: np.random.Generator) -> np.ndarray:
    """(rounds, n) ranks of each query's match under independent random rankings.

    In a uniformly random order of n candidates, the match's 0-based position is
    uniform on 0..n-1, so it is drawn directly: O(rounds x n) instead of sorting
    n x n random scores per round (the tests check both give the same law).
    """
    return rng.integers(0, n, size=(rounds, n))


def empirical_random_metrics(
    n: int,
    *,
    rounds: int = 200,
    seed: int = 0,
    confidence: float = 0.95,
    directions: tuple[str, ...] = DIRECTIONS,
) -> dict[str, dict[str, float]]:
    """Metrics of ``rounds`` seeded random rankings over the same n candidates.

    ``value`` is the mean over rounds, ``ci_low``/``ci_high`` the central
    ``confidence`` range of a single random model's score (what a model that
    learned nothing could reach by luck on this N). Same keys as
    ``retrieval_metrics_with_ci``.
    """
    _check_confidence(confidence)
    if n < 1 or rounds < 1:
        raise ValueError(f"n and rounds must be >= 1, got n={n}, rounds={rounds}")
    rng = np.random.default_rng(seed)
    out: dict[str, dict[str, float]] = {}
    chunk = max(1, _BOOTSTRAP_CHUNK_ELEMENTS // n)  # bounded memory for large n
    for direction in directions:
        per_round: dict[str, list[np.ndarray]] = {m: [] for m in METRIC_NAMES}
        done = 0
        while done < rounds:
            size = min(chunk, rounds - done)
            for name, values in _metrics_per_row(random_rankings(n, size, rng)).items():
                per_round[name].append(values)
            done += size
        for name, parts in per_round.items():
            values = np.concatenate(parts)
            low, high = _percentile_interval(values, confidence)
            out[metric_key(direction, name)] = {
                "value": float(np.mean(values)),
                "ci_low": low,
                "ci_high": high,
            }
    return out
