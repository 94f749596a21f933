"""The `track_embeddings` DuckDB table read into memory: the matrix, the catalog, the fingerprint.

The N x d matrix is loaded into a contiguous float32 numpy array (from an ``.npy`` cache
next to the DuckDB file, keyed by model version and table contents: reading 100k
FLOAT[512] rows out of DuckDB takes about a second, the cache tens of milliseconds). The
tracks' metadata (``Catalog``) and the fingerprint come from the same read-only
connection (``read_collection``), so they always describe the same table. Ranking is
``search/vector_index.py``; answering a query is ``search/engine.py``.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np

from clap_pipeline.search.filters import Catalog, build_catalog
from clap_pipeline.storage import atomic_path, duckdb_connection, table_exists

TABLE = "track_embeddings"
CACHE_DIR_NAME = "cache"


class SearchError(RuntimeError):
    """Search cannot run yet; the message names the asset to materialize or the input to fix."""


@dataclass(frozen=True)
class IndexInfo:
    count: int
    dim: int
    model_version: str | None
    model_run_id: str | None
    fingerprint: tuple


@dataclass(frozen=True)
class StoredEmbeddings:
    """The table's ids and matrix alone: for checks, tests and benchmarks."""

    track_ids: np.ndarray  # int64 (N,), ascending
    matrix: np.ndarray  # float32 (N, d), C-contiguous, rows L2-normalised
    info: IndexInfo

    @property
    def model_version(self) -> str | None:
        return self.info.model_version

    @property
    def model_run_id(self) -> str | None:
        return self.info.model_run_id


@dataclass(frozen=True)
class Collection:
    """The table as a search reads it: matrix, catalog (row order = matrix order), info."""

    matrix: np.ndarray
    catalog: Catalog
    info: IndexInfo
    cache_dir: Path  # where the derived indexes of this table are kept


# The catalog's columns; those a table written before them lacks read as NULL (filters on
# them match nothing) until `track_embeddings` is materialized again.
CATALOG_COLUMNS = (
    *("track_id", "title", "artist", "genre", "audio_path", "license"),
    *("genres", "year", "track_duration_s", "duration_s", "album", "tags"),
)


def catalog_columns(con: duckdb.DuckDBPyConnection) -> dict[str, list]:
    """``CATALOG_COLUMNS`` of every row, in track id order (the matrix's row order)."""
    present = {row[0] for row in con.execute(f"DESCRIBE {TABLE}").fetchall()}
    names = [c for c in CATALOG_COLUMNS if c in present]
    rows = con.execute(f"SELECT {', '.join(names)} FROM {TABLE} ORDER BY track_id").fetchall()
    values = list(zip(*rows, strict=True)) if rows else [() for _ in names]
    return {name: list(v) for name, v in zip(names, values, strict=True)}


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


def cache_dir(duckdb_path: Path) -> Path:
    """Where what is derived from the table is kept: the matrix, the lexical index, ONNX."""
    return duckdb_path.parent / CACHE_DIR_NAME


def _cache_path(duckdb_path: Path, info: IndexInfo) -> Path:
    key = hashlib.sha1(repr(info.fingerprint).encode()).hexdigest()[:16]
    version = re.sub(r"[^A-Za-z0-9_.-]", "_", str(info.model_version or "local"))
    return cache_dir(duckdb_path) / f"{TABLE}-v{version}-{key}.npy"


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


def _read_matrix(
    con: duckdb.DuckDBPyConnection, duckdb_path: Path, info: IndexInfo, use_cache: bool
) -> np.ndarray:
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
    return matrix


@contextlib.contextmanager
def _read_only(duckdb_path: Path):
    if not duckdb_path.exists():
        raise _missing_table_error(duckdb_path, "no DuckDB file")
    with duckdb_connection(duckdb_path, read_only=True) as con:
        yield con


def load_embeddings(duckdb_path: str | Path, *, use_cache: bool = True) -> StoredEmbeddings:
    """Ids and matrix (from the .npy cache when it matches the table)."""
    duckdb_path = Path(duckdb_path)
    with _read_only(duckdb_path) as con:
        info = read_index_info(con, duckdb_path)
        ids = con.execute(f"SELECT track_id FROM {TABLE} ORDER BY track_id").fetchnumpy()
        matrix = _read_matrix(con, duckdb_path, info, use_cache)
    return StoredEmbeddings(np.asarray(ids["track_id"], dtype=np.int64), matrix, info)


def read_collection(duckdb_path: str | Path) -> Collection:
    """Matrix, catalog and fingerprint from one read-only connection (closed on return)."""
    duckdb_path = Path(duckdb_path)
    with _read_only(duckdb_path) as con:
        info = read_index_info(con, duckdb_path)
        columns = catalog_columns(con)
        matrix = _read_matrix(con, duckdb_path, info, use_cache=True)
    catalog = build_catalog(columns)
    ids = catalog.track_ids
    if len(ids) != matrix.shape[0] or int(ids.sum()) != info.fingerprint[1]:
        raise SearchError(f"`{TABLE}` changed while it was read: try again")
    return Collection(matrix, catalog, info, cache_dir(duckdb_path))


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
