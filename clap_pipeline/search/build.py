"""The `track_embeddings` asset's work: one vector per track from a model's window embeddings,
the table and its lexical index (``write_search_index``).

The champion's window embeddings (``window_embeddings/<fingerprint>/``, embedded once per
model: ``model/embed_windows.py``) are aggregated to one vector per track by the rule the
evaluation chose (``whole_track.py``: the first window or the mean of the windows).
Storage: DuckDB table ``track_embeddings`` (one row per decoded track, a ``FLOAT[d]``
column of L2-normalised audio embeddings plus the metadata a result line needs and the
model version that produced it). A rebuild fills a staging table and swaps it in with one
transaction, so readers see the old or the new set, never a mix.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds

from clap_pipeline.config import Settings
from clap_pipeline.dataset import audio_path as fma_audio_path
from clap_pipeline.genre_search import (
    GENRE_QUERIES,
    PRECISION_NAME,
    GenreSearchConfig,
    eligible_genres,
    model_genre_search,
)
from clap_pipeline.knobs import DEVICE, EMBED_BATCH_SIZE
from clap_pipeline.model.choice import ModelChoice, champion_model
from clap_pipeline.reporting import Log
from clap_pipeline.search.index import TABLE, SearchError, load_embeddings, read_collection
from clap_pipeline.search.lexical import load_or_build
from clap_pipeline.search.text_encoder import encode_query
from clap_pipeline.selection import read_genres
from clap_pipeline.storage import duckdb_connection, table_exists, transaction
from clap_pipeline.window_embeddings import (
    DEFAULT_RULE,
    VECTOR_RULES,
    chosen_rule,
    read_store,
    search_rule,
)

STAGING_TABLE = "track_embeddings__staging"


def _new_rows(
    track_ids: np.ndarray, embeddings: np.ndarray, audio_paths: Sequence[str], sizes: np.ndarray
) -> pa.Table:
    """The embedded clips as an Arrow table, after checking lengths and norms."""
    n, dim = embeddings.shape
    if n != len(track_ids) or n != len(audio_paths) or n != len(sizes):
        raise ValueError("track_ids, embeddings, audio_paths and source_sizes differ in length")
    norms = np.linalg.norm(embeddings, axis=1)
    if not np.all(np.abs(norms - 1.0) < 1e-3):
        raise ValueError("embeddings must be L2-normalised (audio_embeddings() returns them so)")
    flat = pa.array(np.ascontiguousarray(embeddings, dtype=np.float32).ravel())
    return pa.table(
        {
            "track_id": pa.array(np.asarray(track_ids, dtype=np.int64)),
            "embedding": pa.FixedSizeListArray.from_arrays(flat, dim),
            "audio_path": pa.array([str(p) for p in audio_paths], pa.string()),
            "source_size": pa.array(np.asarray(sizes, dtype=np.int64)),
        }
    )


def _staging_ddl(dim: int) -> str:
    return f"""CREATE TABLE {STAGING_TABLE} (
        track_id BIGINT PRIMARY KEY,
        embedding FLOAT[{dim}] NOT NULL,
        title VARCHAR, artist VARCHAR, genre VARCHAR, license VARCHAR,
        audio_path VARCHAR NOT NULL,
        duration_s DOUBLE,
        model_version VARCHAR, model_run_id VARCHAR,
        created_at TIMESTAMPTZ NOT NULL,
        genres VARCHAR[], year INTEGER, track_duration_s DOUBLE,
        album VARCHAR, tags VARCHAR[])"""


def _insert_sql(con: duckdb.DuckDBPyConnection) -> str:
    """The staging rows: embeddings joined with their `tracks` columns (model, time: ?)."""
    col = _tracks_columns(con)
    return f"""INSERT INTO {STAGING_TABLE}
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
                    THEN TRY_CAST({col("track_duration")} AS DOUBLE) END,
               {col("album_title")}, {col("track_tags")}
        FROM new_rows n LEFT JOIN tracks t USING (track_id)
        LEFT JOIN ({_genre_names_sql(con)}) gn USING (track_id)
        ORDER BY n.track_id"""


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
    new_rows = _new_rows(track_ids, embeddings, audio_paths, source_sizes)
    created_at = created_at or dt.datetime.now(dt.UTC)
    with duckdb_connection(duckdb_path) as con:
        # DuckDB 2 refuses register() while a query result is unfinished: register first.
        con.register("new_rows", new_rows)
        if not table_exists(con, "tracks"):
            raise SearchError(f"no `tracks` table in {duckdb_path}: materialize `tracks` first")
        # Build aside (a crashed earlier build may have left its staging table) ...
        con.execute(f"DROP TABLE IF EXISTS {STAGING_TABLE}")
        try:
            con.execute(_staging_ddl(embeddings.shape[1]))
            con.execute(_insert_sql(con), [model.version, model.run_id, created_at])
        except Exception:
            con.execute(f"DROP TABLE IF EXISTS {STAGING_TABLE}")  # leave no half-built table
            raise
        # ... then swap in one transaction: readers see the old set or the new one.
        with transaction(con):
            con.execute(f"DROP TABLE IF EXISTS {TABLE}")
            con.execute(f"ALTER TABLE {STAGING_TABLE} RENAME TO {TABLE}")
    return len(new_rows)


def write_search_index(
    duckdb_path: str | Path,
    track_ids: np.ndarray,
    embeddings: np.ndarray,
    audio_paths: Sequence[str],
    source_sizes: np.ndarray,
    model: ModelChoice,
) -> int:
    """The table (``write_track_embeddings``) and its lexical index, kept in step: the
    index is saved under the new table's fingerprint (``search/lexical.py``)."""
    count = write_track_embeddings(
        duckdb_path, track_ids, embeddings, audio_paths, source_sizes, model
    )
    collection = read_collection(duckdb_path)
    load_or_build(collection.catalog, collection.cache_dir, collection.info.fingerprint)
    return count


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
    clips_per_s: float  # windows embedded per second (0 when the store had them all)
    genre_search: dict[str, object] | None = None  # collection_genre_search()
    aggregation: str = "mean"  # how a track's windows made its vector
    windows: int = 0


def _sources(waveforms_dir: str | Path) -> dict[int, tuple[str, int]]:
    """(source path, size) of each track of the waveforms."""
    table = ds.dataset(waveforms_dir, format="parquet").to_table(
        columns=["track_id", "source_path", "source_size"]
    )
    return {
        int(t): (str(p), int(size))
        for t, p, size in zip(
            table.column("track_id").to_pylist(),
            table.column("source_path").to_pylist(),
            table.column("source_size").to_pylist(),
            strict=True,
        )
    }


def build_track_embeddings(
    *,
    model: ModelChoice,
    waveforms_dir: str | Path,
    window_embeddings_dir: str | Path,
    audio_dir: str | Path,
    duckdb_path: str | Path,
    aggregation: str = DEFAULT_RULE,
    batch_size: int = EMBED_BATCH_SIZE.default,
    device: str = DEVICE.default,
    log: Log | None = None,
) -> BuildSummary:
    """One vector per track of the waveforms from ``model``'s window embeddings (embedding the
    windows the store lacks, ``model/embed_windows.py``), aggregated by ``aggregation``
    (first or mean); the table replaced."""
    from clap_pipeline.model.clap import load_clap
    from clap_pipeline.model.embed_windows import embed_windows

    if aggregation not in VECTOR_RULES:
        raise ValueError(f"aggregation must be one of {VECTOR_RULES}, got {aggregation!r}")
    clap = load_clap(model.source)
    done = embed_windows(
        clap, waveforms_dir, window_embeddings_dir, model_version=str(model.version or ""),
        batch_size=batch_size, device=device, log=log,
    )  # fmt: skip
    windows = read_store(window_embeddings_dir, done.fingerprint)
    sources = _sources(waveforms_dir)
    track_ids = windows.tracks
    # Playlists need absolute paths; the waveforms record the decoded file's path.
    paths = [
        p if Path(p).is_absolute() else str(fma_audio_path(audio_dir, t))
        for t, p in ((int(t), sources[int(t)][0]) for t in track_ids)
    ]
    sizes = np.array([sources[int(t)][1] for t in track_ids], dtype=np.int64)
    vectors = windows.track_vectors(aggregation)
    count = write_search_index(duckdb_path, track_ids, vectors, paths, sizes, model)
    # Warms the query cache too, so the first search does not pay the DuckDB read.
    genre_search = collection_genre_search(clap, duckdb_path)
    return BuildSummary(
        count,
        int(vectors.shape[1]),
        model,
        done.seconds,
        done.windows_per_s,
        genre_search,
        aggregation=aggregation,
        windows=len(windows),
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
    index = load_embeddings(duckdb_path)
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


def embed_collection(
    settings: Settings, batch_size: int, device: str, log: Log
) -> dict[str, object]:
    """The `track_embeddings` asset: the champion embeds every clip; the metadata."""
    model = champion_model(settings.mlflow_tracking_uri, settings.registered_model)
    log(f"embedding with {settings.registered_model} version {model.version} from {model.source}")
    summary = build_track_embeddings(
        model=model,
        waveforms_dir=settings.waveforms_dir,
        window_embeddings_dir=settings.window_embeddings_dir,
        aggregation=search_rule(settings.reports_dir, log),
        audio_dir=settings.audio_dir,
        duckdb_path=settings.duckdb_path,
        batch_size=batch_size,
        device=device,
        log=log,
    )
    metadata: dict[str, object] = {}
    if summary.genre_search:
        found, share = summary.genre_search["model"], summary.genre_search["mean_share"]
        p10 = found[PRECISION_NAME]
        log(
            f"genre search over the collection ({len(summary.genre_search['genres'])} genres, "
            f"query {summary.genre_search['query']!r}): {p10['value']:.0%} of the top 10 are "
            f"of the genre vs a {share:.0%} share ({p10['value'] / share:.1f}x)"
        )
        metadata[f"genre_search_{PRECISION_NAME}"] = p10["value"]
        metadata[f"genre_search_prior_{PRECISION_NAME}"] = share
        metadata["genre_search_per_genre"] = found["per_genre"]
    return {
        **metadata,
        "count": summary.count,
        "dim": summary.dim,
        "model_version": str(summary.model.version),
        "model_run_id": str(summary.model.run_id),
        "model_dir": Path(summary.model.source),
        "table": f"{settings.duckdb_path}:{TABLE}",
        "aggregation": summary.aggregation,
        # The service ranks by every window with the evaluation's rule (max included).
        "search_windows_rule": chosen_rule(settings.reports_dir),
        "windows": summary.windows,
        "seconds": round(summary.seconds, 2),
        "windows_embedded_per_s": round(summary.clips_per_s, 2),
    }
