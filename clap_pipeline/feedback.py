"""Listeners' verdicts on search results: the DuckDB table ``search_feedback``.

One row per click on thumbs up/down: the query text, the track, the verdict, the model
version that ranked it and when. Each write opens a short write connection (the
file's write turn, see storage.py) and closes it, so the DuckDB file stays readable by
other processes while the search server runs.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from clap_pipeline.search import validate_query
from clap_pipeline.storage import duckdb_connection, table_exists

TABLE = "search_feedback"
WRITE_TIMEOUT_S = 15.0  # a request waits this long for another writer, then fails with 503

_SCHEMA = f"""CREATE TABLE IF NOT EXISTS {TABLE} (
    query VARCHAR NOT NULL,
    track_id BIGINT NOT NULL,
    relevant BOOLEAN NOT NULL,
    model_version VARCHAR,
    created_at TIMESTAMPTZ NOT NULL)"""


@dataclass(frozen=True)
class Feedback:
    query: str
    track_id: int
    relevant: bool
    model_version: str | None
    created_at: dt.datetime


def record_feedback(
    duckdb_path: str | Path,
    *,
    query: str,
    track_id: int,
    relevant: bool,
    model_version: str | None,
    created_at: dt.datetime | None = None,
    lock_timeout_s: float = WRITE_TIMEOUT_S,
) -> Feedback:
    """Append one row (creating the table on first use) in a short write transaction."""
    row = Feedback(
        validate_query(query),
        int(track_id),
        bool(relevant),
        model_version,
        created_at or dt.datetime.now(dt.UTC),
    )
    with duckdb_connection(duckdb_path, lock_timeout_s=lock_timeout_s) as con:
        con.execute(_SCHEMA)
        con.execute(
            f"INSERT INTO {TABLE} VALUES (?, ?, ?, ?, ?)",
            [row.query, row.track_id, row.relevant, row.model_version, row.created_at],
        )
    return row


def read_feedback(duckdb_path: str | Path) -> list[Feedback]:
    """Every row, oldest first (empty when nobody has given feedback yet)."""
    with duckdb_connection(duckdb_path, read_only=True) as con:
        if not table_exists(con, TABLE):
            return []
        rows = con.execute(
            f"SELECT query, track_id, relevant, model_version, created_at FROM {TABLE} "
            "ORDER BY created_at, rowid"
        ).fetchall()
    return [Feedback(*row) for row in rows]
