"""Top-k over the track embeddings: exact when small, IVF when large.

``top_k`` scans every row (numpy matmul + partition): 100,000 x 512 float32 is
200 MB of memory per query, about 13–30 ms on 2 cores depending on their load. A
server answers many queries against one matrix, so above ``EXACT_MAX_ROWS`` rows it
builds a faiss inverted-file index (``IndexIVFFlat``, inner product): k-means cells
over a sample of the rows, every row stored in float32 in its nearest cell, a query
scans only the ``nprobe`` cells nearest to it. The scores of the rows it returns are
exact inner products; only *which* rows are found is approximate.

``nprobe`` is calibrated when the index is built: held-out queries (rows of the matrix
plus noise, so they are near but not on stored vectors) are answered exactly and by
the index with a doubling ``nprobe`` until recall@10 reaches ``target_recall``. The
calibration recall is kept with the index so a health page can show it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

EXACT_MAX_ROWS = 20_000  # below this a full scan costs about as much as probing cells
TARGET_RECALL = 0.995
CALIBRATION_QUERIES = 200
RECALL_K = 10


def top_k(matrix: np.ndarray, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best ``k`` rows of ``matrix @ query`` by score, ties broken by lower row position.

    Same order as a stable ``argsort(-scores)``, but O(N) instead of O(N log N):
    ``partition`` finds the k-th best score, only rows scoring at least that are
    sorted.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    q = np.asarray(query, dtype=np.float32).ravel()
    if q.shape[0] != matrix.shape[1]:
        raise ValueError(f"query has {q.shape[0]} dimensions, the embeddings {matrix.shape[1]}")
    q = q / max(float(np.linalg.norm(q)), 1e-12)
    scores = matrix @ q
    n = scores.shape[0]
    if k < n:
        kth_best = np.partition(scores, n - k)[n - k]
        candidates = np.flatnonzero(scores >= kth_best)
    else:
        candidates = np.arange(n)
    order = np.lexsort((candidates, -scores[candidates]))[:k]
    best = candidates[order]
    return best, scores[best]


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean share of each row of ``exact`` (q, k) found in the same row of ``found`` (q, >=k)."""
    if found.shape[0] != exact.shape[0]:
        raise ValueError(f"{found.shape[0]} result rows for {exact.shape[0]} exact rows")
    hits = [len(set(f.tolist()) & set(e.tolist())) for f, e in zip(found, exact, strict=True)]
    return float(np.mean(hits) / exact.shape[1])


def exact_top_k_batch(matrix: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Row positions (q, k) of the exact top k of each query (queries L2-normalised)."""
    scores = queries @ matrix.T
    k = min(k, matrix.shape[0])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


@dataclass
class VectorIndex:
    """``search(query, k)`` -> (row positions, cosine scores), best first."""

    matrix: np.ndarray  # float32 (N, d), rows L2-normalised; kept for exact fallbacks
    ivf: object | None = None  # faiss.IndexIVFFlat when N > EXACT_MAX_ROWS
    nprobe: int = 0
    calibration_recall: float | None = None
    build_seconds: float = 0.0
    nlist: int = 0
    exact_max_rows: int = EXACT_MAX_ROWS  # filtered searches scan up to this many rows exactly

    @property
    def kind(self) -> str:
        return "exact" if self.ivf is None else "ivf"

    def describe(self) -> dict[str, object]:
        info: dict[str, object] = {"kind": self.kind, "rows": int(self.matrix.shape[0])}
        if self.ivf is not None:
            info |= {
                "nlist": self.nlist,
                "nprobe": self.nprobe,
                "calibration_recall_at_10": round(float(self.calibration_recall or 0), 4),
                "build_seconds": round(self.build_seconds, 2),
            }
        return info

    def search(
        self, query: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Best ``k`` rows; with ``allowed`` (bool per row) only among those rows.

        Filtered: up to ``exact_max_rows`` allowed rows are scanned exactly; more go
        through the IVF index with a faiss ID selector and ``nprobe`` scaled by the
        share of allowed rows, and a probe that finds fewer than ``min(k, allowed)``
        rows falls back to the exact scan of the allowed rows. So ``k`` results come
        back whenever ``k`` rows are allowed.
        """
        if allowed is not None:
            return self._search_allowed(query, k, allowed)
        if self.ivf is None:
            return top_k(self.matrix, query, k)
        q = self._query_row(query)
        scores, positions = self.ivf.search(q, k)  # type: ignore[attr-defined]
        keep = positions[0] >= 0
        if keep.sum() < min(k, self.matrix.shape[0]):
            return top_k(self.matrix, q[0], k)  # the probed cells held fewer than k rows
        return positions[0][keep].astype(np.int64), scores[0][keep]

    def _query_row(self, query: np.ndarray) -> np.ndarray:
        q = np.asarray(query, dtype=np.float32).reshape(1, -1)
        if q.shape[1] != self.matrix.shape[1]:
            raise ValueError(
                f"query has {q.shape[1]} dimensions, the embeddings {self.matrix.shape[1]}"
            )
        return q / max(float(np.linalg.norm(q)), 1e-12)

    def _search_allowed(
        self, query: np.ndarray, k: int, allowed: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        if allowed.shape != (self.matrix.shape[0],) or allowed.dtype != np.bool_:
            raise ValueError(f"allowed must be a bool mask of {self.matrix.shape[0]} rows")
        rows = np.flatnonzero(allowed)
        if len(rows) == 0:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
        q = self._query_row(query)
        if self.ivf is not None and len(rows) > self.exact_max_rows:
            import faiss

            bitmap = np.packbits(allowed, bitorder="little")
            selector = faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bitmap))
            share = len(rows) / len(allowed)
            nprobe = min(self.nlist, max(1, math.ceil(self.nprobe / share)))
            params = faiss.SearchParametersIVF(sel=selector, nprobe=nprobe)
            scores, positions = self.ivf.search(q, k, params=params)  # type: ignore[attr-defined]
            keep = positions[0] >= 0
            if keep.sum() >= min(k, len(rows)):
                return positions[0][keep].astype(np.int64), scores[0][keep]
        if self.ivf is None:
            best, scores = top_k(self.matrix[rows], q[0], k)
            return rows[best], scores
        import faiss

        # One query over the gathered rows: faiss scans them on this thread (numpy's matvec
        # would call a multi-threaded BLAS, slow when other work holds the cores).
        found_scores, found = faiss.knn(
            q, self.matrix[rows], min(k, len(rows)), metric=faiss.METRIC_INNER_PRODUCT
        )
        return rows[found[0]], found_scores[0]


def _calibration_queries(matrix: np.ndarray, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = matrix[rng.choice(matrix.shape[0], size=min(n, matrix.shape[0]), replace=False)]
    # Noise of about the rows' own norm: the queries sit between stored vectors, like a
    # text embedding does among audio embeddings.
    noisy = rows + rng.standard_normal(rows.shape, dtype=np.float32) / math.sqrt(rows.shape[1])
    return noisy / np.linalg.norm(noisy, axis=1, keepdims=True)


def build_vector_index(
    matrix: np.ndarray,
    *,
    exact_max_rows: int = EXACT_MAX_ROWS,
    target_recall: float = TARGET_RECALL,
    seed: int = 0,
) -> VectorIndex:
    """Exact scan for up to ``exact_max_rows`` rows, else a calibrated IVF index."""
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    n, dim = matrix.shape
    if n <= exact_max_rows:
        return VectorIndex(matrix)
    import faiss

    start = time.perf_counter()
    nlist = max(1, min(int(4 * math.sqrt(n)), 2048, n // 40))
    quantizer = faiss.IndexFlatIP(dim)
    ivf = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    ivf.cp.niter = 10
    ivf.cp.seed = seed
    rng = np.random.default_rng(seed)
    sample = matrix[np.sort(rng.choice(n, size=min(n, nlist * 40), replace=False))]
    ivf.train(sample)
    ivf.add(matrix)

    queries = _calibration_queries(matrix, CALIBRATION_QUERIES, seed + 1)
    exact = exact_top_k_batch(matrix, queries, RECALL_K)
    nprobe, recall = 1, 0.0
    while True:
        ivf.nprobe = nprobe
        _, found = ivf.search(queries, RECALL_K)
        recall = recall_at_k(found, exact)
        if recall >= target_recall or nprobe >= nlist:
            break
        nprobe = min(nprobe * 2, nlist)
    return VectorIndex(
        matrix,
        ivf=ivf,
        nprobe=nprobe,
        calibration_recall=recall,
        build_seconds=time.perf_counter() - start,
        nlist=nlist,
        exact_max_rows=exact_max_rows,
    )
