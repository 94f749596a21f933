"""Text-to-music search over the `track_embeddings` DuckDB table, and M3U playlists.

Storage: DuckDB table ``track_embeddings`` (one row per decoded track, a
``FLOAT[d]`` column of L2-normalised audio embeddings plus the metadata a result
line needs and the model version that produced it). A rebuild fills a staging
table and swaps it in with one transaction, so readers see the old or the new
set, never a mix.

Query path: the N x d matrix is loaded once into a contiguous float32 numpy
array (from an ``.npy`` cache next to the DuckDB file, keyed by model version and
table contents: reading 100k FLOAT[512] rows out of DuckDB takes about a second,
the cache tens of milliseconds), then one matrix-vector product and an
``np.partition`` give the top k. DuckDB's ``array_cosine_similarity`` was about 5x
slower than numpy on 100k x 512 (see benchmarks/bench_search.py).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from clap_pipeline import tracking
from clap_pipeline.config import Settings
from clap_pipeline.dataset import audio_path as fma_audio_path
from clap_pipeline.feedback import validate_query
from clap_pipeline.genre_search import (
    GENRE_QUERIES,
    GenreSearchConfig,
    eligible_genres,
    model_genre_search,
)
from clap_pipeline.search.filters import Filters, build_catalog
from clap_pipeline.selection import read_genres
from clap_pipeline.storage import (
    atomic_path,
    duckdb_connection,
    table_exists,
    transaction,
    write_text_atomic,
)
from clap_pipeline.tables import UNPRINTABLE_IN_JSON, Table, printable

TABLE = "track_embeddings"
STAGING_TABLE = "track_embeddings__staging"
CACHE_DIR_NAME = "cache"


class SearchError(RuntimeError):
    """Search cannot run yet; the message names the asset to materialize or the input to fix."""


# ---------------------------------------------------------------------------------------------
# Which model: the champion of the MLflow registry, or a folder given with --model


@dataclass(frozen=True)
class ModelChoice:
    source: str  # what load_clap() takes: a save_pretrained folder (or hub id)
    version: str | None = None  # version of the registered model `clap-fma`, when from there
    run_id: str | None = None
    label: str = ""  # how messages name it

    @property
    def name(self) -> str:
        return self.label or self.source


def champion_model(tracking_uri: str, model_name: str) -> ModelChoice:
    """The registry's `champion` of ``model_name``, as a local folder (tracking.py downloads it)."""
    champion = tracking.resolve_champion(tracking_uri, name=model_name)
    return ModelChoice(
        source=str(champion.local_dir),
        version=str(champion.version),
        run_id=champion.run_id,
        label=f"the champion ({model_name} version {champion.version})",
    )


_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w-]+))$")


def registry_model(model_uri: str, tracking_uri: str, model_name: str) -> ModelChoice:
    """``models:/<model_name>/<version>`` or ``models:/<model_name>@<alias>`` from the registry."""
    match = _MODELS_URI.match(model_uri)
    if match is None or match["name"] != model_name:
        raise ValueError(
            f"--model {model_uri!r}: expected models:/{model_name}/<version>, "
            f"models:/{model_name}@<alias> or a save_pretrained folder"
        )
    from mlflow.exceptions import MlflowException

    client = tracking.client(tracking_uri)
    try:
        if match["version"]:
            mv = client.get_model_version(model_name, match["version"])
        else:
            mv = client.get_model_version_by_alias(model_name, match["alias"])
    except MlflowException as exc:
        raise SearchError(
            f"--model {model_uri}: not in the MLflow registry at {tracking_uri} "
            f"({str(exc).splitlines()[0]}); materialize the `clap_model` asset to register one"
        ) from exc
    local = tracking.version_local_dir(mv, tracking_uri=tracking_uri)
    return ModelChoice(str(local), str(mv.version), mv.run_id, label=model_uri)


def resolve_model(model_arg: str | None, tracking_uri: str, model_name: str) -> ModelChoice:
    """--model as given (a folder, or a models:/ URI of ``model_name``), else the champion."""
    if not model_arg:
        return champion_model(tracking_uri, model_name)
    if model_arg.startswith("models:/"):
        return registry_model(model_arg, tracking_uri, model_name)
    return ModelChoice(source=model_arg)


# ---------------------------------------------------------------------------------------------
# Writing the table (the `track_embeddings` asset)


def write_track_embeddings(
    duckdb_path: str | Path,
    track_ids: np.ndarray,
    embeddings: np.ndarray,
    audio_paths: Sequence[str],
    source_sizes: np.ndarray,
    model: ModelChoice,
    created_at: dt.datetime | None = None,
) -> int:
    """Replace the table with these rows atomically; title/artist/... come from `tracks`.

    ``duration_s`` (for playlists) estimates the *file's* length as size x 8 / the
    track's bit rate: FMA's audio files are 30-s clips, while ``track_duration``
    is the full track's (sometimes wrong) length; it is the fallback.
    """
    n, dim = embeddings.shape
    if n != len(track_ids) or n != len(audio_paths) or n != len(source_sizes):
        raise ValueError("track_ids, embeddings, audio_paths and source_sizes differ in length")
    norms = np.linalg.norm(embeddings, axis=1)
    if not np.all(np.abs(norms - 1.0) < 1e-3):
        raise ValueError("embeddings must be L2-normalised (audio_embeddings() returns them so)")
    flat = pa.array(np.ascontiguousarray(embeddings, dtype=np.float32).ravel())
    new_rows = pa.table(
        {
            "track_id": pa.array(np.asarray(track_ids, dtype=np.int64)),
            "embedding": pa.FixedSizeListArray.from_arrays(flat, dim),
            "audio_path": pa.array([str(p) for p in audio_paths], pa.string()),
            "source_size": pa.array(np.asarray(source_sizes, dtype=np.int64)),
        }
    )
    created_at = created_at or dt.datetime.now(dt.UTC)
    with duckdb_connection(duckdb_path) as con:
        # DuckDB 2 refuses register() while a query result is unfinished: register first.
        con.register("new_rows", new_rows)
        if not table_exists(con, "tracks"):
            raise SearchError(f"no `tracks` table in {duckdb_path}: materialize `tracks` first")
        # Build aside (a crashed earlier build may have left its staging table) ...
        con.execute(f"DROP TABLE IF EXISTS {STAGING_TABLE}")
        try:
            con.execute(
                f"""CREATE TABLE {STAGING_TABLE} (
                    track_id BIGINT PRIMARY KEY,
                    embedding FLOAT[{dim}] NOT NULL,
                    title VARCHAR, artist VARCHAR, genre VARCHAR, license VARCHAR,
                    audio_path VARCHAR NOT NULL,
                    duration_s DOUBLE,
                    model_version VARCHAR, model_run_id VARCHAR,
                    created_at TIMESTAMPTZ NOT NULL,
                    genres VARCHAR[], year INTEGER, track_duration_s DOUBLE)"""
            )
            col = _tracks_columns(con)
            con.execute(
                f"""INSERT INTO {STAGING_TABLE}
                SELECT n.track_id, n.embedding, {col("track_title")}, {col("artist_name")},
                       {col("track_genre_top")}, {col("track_license")}, n.audio_path,
                       CASE WHEN TRY_CAST({col("track_bit_rate")} AS DOUBLE) > 0
                                 AND n.source_size > 0
                            THEN round(n.source_size * 8.0
                                       / TRY_CAST({col("track_bit_rate")} AS DOUBLE), 1)
                            ELSE TRY_CAST({col("track_duration")} AS DOUBLE) END,
                       ?, ?, ?,
                       list_filter(list_distinct(list_concat(
                           [{col("track_genre_top")}::VARCHAR], gn.names)), lambda x: x IS NOT NULL),
                       coalesce(year(TRY_CAST({col("album_date_released")} AS TIMESTAMP)),
                                year(TRY_CAST({col("track_date_created")} AS TIMESTAMP))),
                       CASE WHEN TRY_CAST({col("track_duration")} AS DOUBLE) > 0
                            THEN TRY_CAST({col("track_duration")} AS DOUBLE) END
                FROM new_rows n LEFT JOIN tracks t USING (track_id)
                LEFT JOIN ({_genre_names_sql(con)}) gn USING (track_id)
                ORDER BY n.track_id""",
                [model.version, model.run_id, created_at],
            )
        except Exception:
            con.execute(f"DROP TABLE IF EXISTS {STAGING_TABLE}")  # leave no half-built table
            raise
        # ... then swap in one transaction: readers see the old set or the new one.
        with transaction(con):
            con.execute(f"DROP TABLE IF EXISTS {TABLE}")
            con.execute(f"ALTER TABLE {STAGING_TABLE} RENAME TO {TABLE}")
    return n


def _tracks_columns(con: duckdb.DuckDBPyConnection) -> Callable[[str], str]:
    """``t.<column>`` when `tracks` has it, else ``NULL`` (test and benchmark tables are slim)."""
    present = {row[0] for row in con.execute("DESCRIBE tracks").fetchall()}
    return lambda name: f"t.{name}" if name in present else "NULL"


def _genre_names_sql(con: duckdb.DuckDBPyConnection) -> str:
    """(track_id, names): titles of every genre of a track (``track_genres_all``) from `genres`."""
    present = {row[0] for row in con.execute("DESCRIBE tracks").fetchall()}
    source = next((c for c in ("track_genres_all", "track_genres") if c in present), None)
    if source is None or not table_exists(con, "genres"):
        return "SELECT NULL::BIGINT AS track_id, NULL::VARCHAR[] AS names WHERE false"
    return f"""SELECT u.track_id, list(DISTINCT g.title) AS names
               FROM (SELECT track_id, unnest({source}) AS genre_id FROM tracks) u
               JOIN genres g ON g.genre_id = u.genre_id
               GROUP BY u.track_id"""


@dataclass(frozen=True)
class BuildSummary:
    count: int
    dim: int
    model: ModelChoice
    seconds: float
    clips_per_s: float
    genre_search: dict[str, object] | None = None  # collection_genre_search()


def build_track_embeddings(
    *,
    model: ModelChoice,
    waveforms_dir: str | Path,
    audio_dir: str | Path,
    duckdb_path: str | Path,
    batch_size: int = 32,
    device: str = "auto",
    log: Callable[[str], None] | None = None,
) -> BuildSummary:
    """Embed every clip of the waveforms dataset with ``model`` and replace the table."""
    from clap_pipeline.model.clap import load_clap
    from clap_pipeline.search.embeddings import embed_waveforms

    clap = load_clap(model.source)
    embedded = embed_waveforms(clap, waveforms_dir, batch_size=batch_size, device=device, log=log)
    # Playlists need absolute paths; the waveforms record the decoded file's path.
    paths = [
        p if Path(p).is_absolute() else str(fma_audio_path(audio_dir, tid))
        for tid, p in zip(embedded.track_ids.tolist(), embedded.source_paths, strict=True)
    ]
    count = write_track_embeddings(
        duckdb_path, embedded.track_ids, embedded.embeddings, paths, embedded.source_sizes, model
    )
    # Warms the query cache too, so the first search does not pay the DuckDB read.
    genre_search = collection_genre_search(clap, duckdb_path)
    return BuildSummary(
        count, embedded.dim, model, embedded.seconds, embedded.clips_per_s, genre_search
    )


def collection_genre_search(
    clap, duckdb_path: str | Path, config: GenreSearchConfig | None = None
) -> dict[str, object] | None:
    """Genre search over the whole index: "<genre> music" for every genre with >= 3 tracks.

    What a person searching the collection sees (precision@10 of the genre's tracks vs
    its share), as ``genre_search`` defines it; None when no genre qualifies. The chance
    level is the genres' mean share (a random ranking's expected precision@k, exact), so
    no random rounds over the whole collection are needed.
    """
    config = config or GenreSearchConfig(n_bootstrap=100)
    index = load_index(duckdb_path)
    genre_of = read_genres(Path(duckdb_path), index.track_ids.tolist())
    labels = [genre_of.get(int(t)) for t in index.track_ids]
    genres = eligible_genres(labels)
    if not genres:
        return None
    template = GENRE_QUERIES["genre_music"]
    queries = np.stack([encode_query(clap, template.format(genre=g)) for g in genres])
    return {
        "query": template,
        "genres": genres,
        "n": len(labels),
        "model": model_genre_search(queries, index.matrix, labels, genres, config),
        "mean_share": float(np.mean([labels.count(g) / len(labels) for g in genres])),
    }


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


# ---------------------------------------------------------------------------------------------
# The in-memory index and top-k


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


# ---------------------------------------------------------------------------------------------
# Queries


def encode_query(clap, text: str) -> np.ndarray:
    """L2-normalised text embedding (d,) of one query, on the CPU (one query: no GPU start-up)."""
    import torch

    from clap_pipeline.model.clap import text_embeddings, tokenize

    model = clap.model
    if model.training or next(model.parameters()).device.type != "cpu":
        model = model.to("cpu").eval()  # a no-op move still costs ~1 ms a query: skip it
    with torch.inference_mode():
        emb = text_embeddings(model, tokenize(clap.tokenizer, [text]))
    return emb[0].float().numpy()


def search(
    settings: Settings,
    query: str,
    k: int,
    model_arg: str | None = None,
    filters: Filters | None = None,
) -> list[SearchHit]:
    """Top ``k`` tracks for a text query among those that pass ``filters`` (all when k >= N)."""
    from clap_pipeline.model.clap import load_clap

    text = validate_query(query)
    if k < 1:
        raise ValueError(f"the number of results must be >= 1, got {k}")
    model = resolve_model(model_arg, settings.mlflow_tracking_uri, settings.registered_model)
    # Fail before the (slow) model load when the embeddings are missing or stale.
    info = index_info(settings.duckdb_path)
    if model.version is not None and info.model_version not in (None, model.version):
        raise SearchError(
            f"`{TABLE}` was computed with {settings.registered_model} version {info.model_version}, "
            f"the query model is {model.name}: materialize `{TABLE}` again (it uses the "
            f"champion) or pass --model models:/{settings.registered_model}/{info.model_version}"
        )
    clap = load_clap(model.source)
    query_emb = encode_query(clap, text)
    if query_emb.shape[0] != info.dim:
        raise SearchError(
            f"model {model.name} embeds text in {query_emb.shape[0]} dimensions but `{TABLE}` "
            f"holds {info.dim}-d embeddings (model version {info.model_version}): use the "
            f"model that built them, or materialize `{TABLE}` with this one"
        )
    with open_index(settings.duckdb_path) as index:
        if index.model_version != info.model_version or index.dim != info.dim:
            raise SearchError(f"`{TABLE}` was rebuilt during the search: run it again")
        if filters is None or not filters.active:
            return index.search(query_emb, k)
        assert index.con is not None
        allowed = build_catalog(catalog_rows(index.con)).allowed(filters)
        rows = np.flatnonzero(allowed)
        if len(rows) == 0:
            return []
        best, scores = top_k(index.matrix[rows], query_emb, k)  # ranked among the allowed rows
        return fetch_hits(index.con, index.track_ids[rows[best]], scores)


# ---------------------------------------------------------------------------------------------
# Output


# Characters a terminal acts on instead of showing: C0/C1 controls (ESC starts colour and
# cursor sequences, CSI is \x9b), DEL, and the bidirectional overrides that reorder text.
def _cell(value: object, width: int = 40) -> str:
    text = "" if value is None else printable(" ".join(str(value).split()))
    return text if len(text) <= width else text[: width - 1] + "…"


def format_table(hits: Sequence[SearchHit]) -> str:
    rows = [
        (h.rank, _cell(h.title), _cell(h.artist), _cell(h.genre, 24), f"{h.score:.4f}")
        for h in hits
    ]
    # Numbers (rank, score) right-aligned.
    return Table(
        ("rank", "title", "artist", "genre", "score"), rows, right=frozenset({0, 4})
    ).text()


def hits_json(hits: Sequence[SearchHit]) -> str:
    # json escapes C0 controls itself; C1 controls and bidi overrides are valid JSON text
    # that a terminal would act on, so they are written as \u escapes too.
    text = json.dumps([asdict(h) for h in hits], indent=2, ensure_ascii=False)
    return UNPRINTABLE_IN_JSON.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def m3u_text(hits: Sequence[SearchHit]) -> str:
    """Extended M3U: ``#EXTINF:<seconds>,<artist> - <title>`` then the absolute file path."""
    lines = ["#EXTM3U"]
    for h in hits:
        seconds = round(h.duration_s) if h.duration_s is not None else -1
        label = " - ".join(_cell(v, 200) for v in (h.artist, h.title) if v) or f"track {h.track_id}"
        lines += [f"#EXTINF:{seconds},{label}", str(Path(h.audio_path).absolute())]
    return "\n".join(lines) + "\n"


def m3u_target(path: str | Path) -> Path:
    """The playlist path, refused when something other than a regular file is there.

    The playlist is written aside and renamed into place, which would replace a symlink,
    a FIFO or a device node (``/dev/stdout``) instead of writing to it: such targets,
    folders and an empty path are refused, so the link and what it points to stay as
    they are. An existing regular file is replaced.
    """
    if not str(path).strip():
        raise ValueError("--m3u is empty: give the playlist's file name, e.g. --m3u warm.m3u")
    target = Path(path).expanduser()
    if target.is_symlink():
        raise ValueError(
            f"--m3u {target} is a symbolic link (to {os.readlink(target)}): refusing to replace "
            "it; give the path of a regular file"
        )
    if target.exists() and not target.is_file():
        kind = "a folder" if target.is_dir() else "not a regular file (a FIFO, device or socket)"
        raise ValueError(f"--m3u {target} is {kind}: give the path of a regular file")
    return target


def write_m3u(path: str | Path, hits: Sequence[SearchHit]) -> Path:
    return write_text_atomic(m3u_target(path), m3u_text(hits))
