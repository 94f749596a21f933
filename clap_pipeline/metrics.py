"""Retrieval metrics with LAION-AI/CLAP's conventions.

For an N x N similarity matrix (row i = query i, column i = its match):
``rank_i`` is the 0-based position of the match among the row's scores sorted
descending. Ties are broken pessimistically and deterministically: every other
item scoring *the same or higher* than the match counts as ranked above it, so a
constant model gets rank N-1, never a lucky 0.
"""

from __future__ import annotations

import numpy as np

KS = (1, 5, 10)


def match_ranks(similarity: np.ndarray) -> np.ndarray:
    """0-based rank of the diagonal entry in each row (ties count against the match)."""
    sim = np.asarray(similarity, dtype=np.float64)
    if sim.ndim != 2 or sim.shape[0] != sim.shape[1]:
        raise ValueError(f"similarity must be square (N x N), got shape {sim.shape}")
    diag = np.diag(sim)[:, None]
    others = sim >= diag
    np.fill_diagonal(others, False)
    return others.sum(axis=1)


def metrics_from_ranks(ranks: np.ndarray, ks: tuple[int, ...] = KS) -> dict[str, float]:
    ranks = np.asarray(ranks)
    out = {f"recall_at_{k}": float(np.mean(ranks < k)) for k in ks}
    out["median_rank"] = float(np.floor(np.median(ranks)) + 1)
    out["mean_rank"] = float(np.mean(ranks) + 1)
    out["map_at_10"] = float(np.mean(np.where(ranks < 10, 1.0 / (ranks + 1), 0.0)))
    return out


def retrieval_metrics(similarity_text_audio: np.ndarray) -> dict[str, float]:
    """Metrics for both directions from ``sim[i, j] = cos(text_i, audio_j)``.

    Keys: ``text_to_audio_recall_at_1`` ... ``audio_to_text_map_at_10``.
    """
    sim = np.asarray(similarity_text_audio)
    out: dict[str, float] = {}
    for direction, matrix in (("text_to_audio", sim), ("audio_to_text", sim.T)):
        for name, value in metrics_from_ranks(match_ranks(matrix)).items():
            out[f"{direction}_{name}"] = value
    return out


def random_recall(k: int, n: int) -> float:
    """Expected R@k of a random ranking over n candidates: exactly min(k, n) / n."""
    return min(k, n) / n
