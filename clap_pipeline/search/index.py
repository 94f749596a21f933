"""The `track_embeddings` DuckDB table read for queries: its matrix in memory, top-k, hits.

The N x d matrix is loaded once into a contiguous float32 numpy array (from an ``.npy``
cache next to the DuckDB file, keyed by model version and table contents: reading 100k
FLOAT[512] rows out of DuckDB takes about a second, the cache tens of milliseconds), then
one matrix-vector product and an ``np.partition`` give the top k. DuckDB's
``array_cosine_similarity`` was about 5x slower than numpy on 100k x 512 (see
benchmarks/bench_search.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np

from clap_pipeline.storage import atomic_path, duckdb_connection, table_exists

TABLE = "track_embeddings"
CACHE_DIR_NAME = "cache"


class SearchError(RuntimeError):
    """Search cannot run yet; the message names the asset to materialize or the input to fix."""


@dataclass(frozen=True)
class SearchHit:
    rank: int
    track_id: int
    score: float
    title: str | None
    artist: str | None
    genre: str | None
    license: str | None
    audio_path: str
    duration_s: float | None


@dataclass
class EmbeddingIndex:
    """The table's matrix in memory, and the open read-only connection for the hits' rows."""

    track_ids: np.ndarray  # int64 (N,), ascending
    matrix: np.ndarray  # float32 (N, d), C-contiguous, rows L2-normalised
    model_version: str | None
    model_run_id: str | None
    con: duckdb.DuckDBPyConnection | None = None  # closed once open_index() exits

    def __len__(self) -> int:
        return len(self.track_ids)

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[1])

    def top_k(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Row positions and cosine scores of the ``k`` best rows (all rows if k >= N)."""
        return top_k(self.matrix, query, k)

    def search(self, query: np.ndarray, k: int) -> list[SearchHit]:
        """Top ``k`` tracks for a query embedding, with their metadata (the query path)."""
        if self.con is None:
            raise RuntimeError("search() needs the index from open_index()")
        positions, scores = self.top_k(query, k)
        return fetch_hits(self.con, self.track_ids[positions], scores)


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


def fetch_hits(
    con: duckdb.DuckDBPyConnection, track_ids: np.ndarray, scores: np.ndarray
) -> list[SearchHit]:
    ids = [int(t) for t in track_ids]
    rows = con.execute(
        f"""SELECT track_id, title, artist, genre, license, audio_path, duration_s
            FROM {TABLE} WHERE track_id IN (SELECT unnest(?::BIGINT[]))""",
        [ids],
    ).fetchall()
    by_id = {row[0]: row for row in rows}
    return [
        SearchHit(rank, tid, float(score), *by_id[tid][1:])
        for rank, (tid, score) in enumerate(zip(ids, scores.tolist(), strict=True), start=1)
    ]


FILTER_COLUMNS = ("license", "genres", "year", "track_duration_s")


def catalog_rows(con: duckdb.DuckDBPyConnection) -> list[tuple]:
    """(track_id, title, artist, genre, audio_path, license, genres, year, track_duration_s).

    In track id order (the index's row order). A table written before the filter columns
    existed reads with NULLs there (filters on them match nothing) until it is rebuilt.
    """
    present = {row[0] for row in con.execute(f"DESCRIBE {TABLE}").fetchall()}
    extra = ", ".join(c if c in present else f"NULL AS {c}" for c in FILTER_COLUMNS)
    return con.execute(
        f"SELECT track_id, title, artist, genre, audio_path, {extra} FROM {TABLE} ORDER BY track_id"
    ).fetchall()


@dataclass(frozen=True)
class IndexInfo:
    count: int
    dim: int
    model_version: str | None
    model_run_id: str | None
    fingerprint: tuple


def _missing_table_error(duckdb_path: Path, why: str) -> SearchError:
    return SearchError(
        f"{why} in {duckdb_path}: materialize the `{TABLE}` asset first "
        f"(it needs `tracks`, `waveforms` and a champion from `clap_model`)"
    )


def read_index_info(con: duckdb.DuckDBPyConnection, duckdb_path: Path) -> IndexInfo:
    if not table_exists(con, TABLE):
        raise _missing_table_error(duckdb_path, f"no `{TABLE}` table")
    # Everything that changes when the table is rebuilt: count, ids, build time, model.
    count, id_sum, created, version, run_id, dim = con.execute(
        f"""SELECT count(*), coalesce(sum(track_id), 0), max(created_at)::VARCHAR,
                   min(model_version), min(model_run_id), max(array_length(embedding))
            FROM {TABLE}"""
    ).fetchall()[0]
    if count == 0:
        raise _missing_table_error(duckdb_path, f"the `{TABLE}` table is empty")
    return IndexInfo(
        count, int(dim), version, run_id, (count, int(id_sum), created, version, run_id, dim)
    )


def index_info(duckdb_path: str | Path) -> IndexInfo:
    """Size, dimension and model version of the table: a cheap check before loading a model."""
    duckdb_path = Path(duckdb_path)
    if not duckdb_path.exists():
        raise _missing_table_error(duckdb_path, "no DuckDB file")
    with duckdb_connection(duckdb_path, read_only=True) as con:
        return read_index_info(con, duckdb_path)


def _cache_path(duckdb_path: Path, info: IndexInfo) -> Path:
    key = hashlib.sha1(repr(info.fingerprint).encode()).hexdigest()[:16]
    version = re.sub(r"[^A-Za-z0-9_.-]", "_", str(info.model_version or "local"))
    return duckdb_path.parent / CACHE_DIR_NAME / f"{TABLE}-v{version}-{key}.npy"


def _read_cache(path: Path, info: IndexInfo) -> np.ndarray | None:
    try:
        matrix = np.load(path)
    except (OSError, ValueError):
        return None
    if matrix.shape != (info.count, info.dim) or matrix.dtype != np.float32:
        return None
    return np.ascontiguousarray(matrix)


def _write_cache(path: Path, matrix: np.ndarray) -> None:
    """Best effort: a read-only data folder only costs the next search the DuckDB read."""
    with contextlib.suppress(OSError):
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.save(f, matrix)
        for old in path.parent.glob(f"{TABLE}-*.npy"):
            if old != path:
                old.unlink(missing_ok=True)


@contextlib.contextmanager
def open_index(duckdb_path: str | Path, *, use_cache: bool = True) -> Iterator[EmbeddingIndex]:
    """Load the matrix (from the .npy cache when it matches the table) on a read-only connection.

    The connection stays open inside the ``with`` block for ``EmbeddingIndex.search``.
    """
    duckdb_path = Path(duckdb_path)
    if not duckdb_path.exists():
        raise _missing_table_error(duckdb_path, "no DuckDB file")
    with duckdb_connection(duckdb_path, read_only=True) as con:
        info = read_index_info(con, duckdb_path)
        ids = con.execute(f"SELECT track_id FROM {TABLE} ORDER BY track_id").fetchnumpy()
        track_ids = np.asarray(ids["track_id"], dtype=np.int64)
        cache = _cache_path(duckdb_path, info)
        matrix = _read_cache(cache, info) if use_cache else None
        if matrix is None:
            table = con.sql(f"SELECT embedding FROM {TABLE} ORDER BY track_id").to_arrow_table()
            flat = table.column("embedding").combine_chunks().flatten()
            matrix = np.ascontiguousarray(
                flat.to_numpy(zero_copy_only=False), dtype=np.float32
            ).reshape(info.count, info.dim)
            if use_cache:
                _write_cache(cache, matrix)
        yield EmbeddingIndex(track_ids, matrix, info.model_version, info.model_run_id, con)


def load_index(duckdb_path: str | Path, *, use_cache: bool = True) -> EmbeddingIndex:
    """The matrix and ids alone (no open connection): for checks, tests and benchmarks."""
    with open_index(duckdb_path, use_cache=use_cache) as index:
        index.con = None
        return index


def embeddings_health(duckdb_path: str | Path) -> dict[str, float | int]:
    """Row count, norm range, NaN rows and number of model versions of the table."""
    with duckdb_connection(duckdb_path, read_only=True) as con:
        if not table_exists(con, TABLE):
            raise SearchError(f"no `{TABLE}` table in {duckdb_path}: materialize `{TABLE}`")
        row = con.execute(
            f"""SELECT count(*),
                   min(sqrt(array_inner_product(embedding, embedding))),
                   max(sqrt(array_inner_product(embedding, embedding))),
                   count(*) FILTER (WHERE isnan(array_inner_product(embedding, embedding))),
                   count(DISTINCT coalesce(model_version, '')),
                   count(*) FILTER (WHERE title IS NULL)
            FROM {TABLE}"""
        ).fetchall()[0]
    keys = ("rows", "min_norm", "max_norm", "nan_rows", "model_versions", "rows_without_title")
    return dict(zip(keys, row, strict=True))
