"""The server's top-k: exact scan for small collections, calibrated IVF for large ones."""

from __future__ import annotations

import numpy as np
import pytest

from clap_pipeline.search.vector_index import (
    build_vector_index,
    exact_top_k_batch,
    recall_at_k,
    top_k,
)
from clap_pipeline_tests.search_fixtures import unit_rows


def clustered_rows(n: int, dim: int, clusters: int, seed: int) -> np.ndarray:
    """Unit rows around a few centres, like embeddings of genres (uniform noise has no cells)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    rows = centres[rng.integers(0, clusters, n)] + 0.8 * rng.standard_normal((n, dim)).astype(
        np.float32
    )
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_recall_at_k_counts_shared_ids_per_row() -> None:
    exact = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    assert recall_at_k(exact, exact) == 1.0
    assert recall_at_k(np.array([[4, 3, 9, 9], [5, 0, 0, 0]]), exact) == pytest.approx(3 / 8)
    with pytest.raises(ValueError, match="result rows"):
        recall_at_k(exact[:1], exact)


def test_exact_batch_matches_top_k() -> None:
    matrix = unit_rows(500, 16, seed=1)
    queries = unit_rows(7, 16, seed=2)
    batch = exact_top_k_batch(matrix, queries, 10)
    for q, row in zip(queries, batch, strict=True):
        assert row.tolist() == top_k(matrix, q, 10)[0].tolist()


def test_small_collections_are_scanned_exactly() -> None:
    matrix = unit_rows(300, 16, seed=3)
    index = build_vector_index(matrix, exact_max_rows=1000)
    assert index.kind == "exact" and index.describe() == {"kind": "exact", "rows": 300}
    q = unit_rows(1, 16, seed=4)[0]
    for k in (1, 10, 300, 500):
        np.testing.assert_array_equal(index.search(q, k)[0], top_k(matrix, q, k)[0])


def test_ivf_index_reaches_the_recall_target_on_unseen_queries() -> None:
    matrix = clustered_rows(30_000, 64, clusters=50, seed=5)
    index = build_vector_index(matrix, exact_max_rows=1_000, target_recall=0.995)
    info = index.describe()
    assert info["kind"] == "ivf" and 1 <= info["nprobe"] <= info["nlist"]
    assert info["calibration_recall_at_10"] >= 0.995
    # Fresh queries (not the calibration ones): recall@10 against exact search.
    rng = np.random.default_rng(6)
    queries = matrix[rng.integers(0, len(matrix), 200)] + 0.05 * rng.standard_normal(
        (200, 64)
    ).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    exact = exact_top_k_batch(matrix, queries, 10)
    found = np.stack([index.search(q, 10)[0] for q in queries])
    assert recall_at_k(found, exact) >= 0.99
    # Returned scores are the exact cosine scores of the returned rows, best first.
    positions, scores = index.search(queries[0] * 3.0, 10)
    np.testing.assert_allclose(scores, matrix[positions] @ queries[0], rtol=1e-5, atol=1e-6)
    assert np.all(np.diff(scores) <= 0)
    # k beyond what the probed cells may hold still gets k rows (exact fallback).
    assert len(index.search(queries[0], 5_000)[0]) == 5_000


@pytest.mark.parametrize("share", [0.002, 0.05, 0.6])
def test_filtered_search_returns_k_allowed_rows_in_exact_order(share: float) -> None:
    """IVF + ID selector (many allowed rows) or exact scan (few): only allowed rows, k of them."""
    matrix = clustered_rows(6000, 32, 20, seed=5)
    index = build_vector_index(matrix, exact_max_rows=1000)
    assert index.kind == "ivf"
    rng = np.random.default_rng(6)
    allowed = rng.random(len(matrix)) < share
    rows = np.flatnonzero(allowed)
    recalls = []
    for q in clustered_rows(30, 32, 20, seed=7):
        positions, scores = index.search(q, 10, allowed)
        assert len(positions) == min(10, len(rows))  # k results whenever k rows are allowed
        assert allowed[positions].all()
        assert np.all(np.diff(scores) <= 1e-6)
        exact = rows[top_k(matrix[rows], q, 10)[0]]
        recalls.append(len(set(positions.tolist()) & set(exact.tolist())) / len(exact))
    assert np.mean(recalls) >= 0.95
    nothing = np.zeros(len(matrix), dtype=bool)
    assert len(index.search(matrix[0], 10, nothing)[0]) == 0
