"""The DuckDB table ``decode_failures``: one row per selected track whose clip gave no window.

Rows are replaced per audio folder, in one transaction, when that folder's partition
of `waveforms` is rebuilt; a failure whose file did not change is carried over by the
next build instead of being decoded again (see ``waveforms``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import duckdb

from clap_pipeline.dataset import folder_id_range, folder_sql
from clap_pipeline.storage import duckdb_connection, table_exists, transaction

FAILURES_TABLE = "decode_failures"
FAILURES_DDL = f"""
CREATE TABLE IF NOT EXISTS {FAILURES_TABLE} (
    track_id BIGINT,
    path VARCHAR,
    reason VARCHAR,
    stderr_tail VARCHAR,
    failed_at TIMESTAMP,
    detail VARCHAR,
    source_size BIGINT,
    source_mtime DOUBLE,
    window_offset_s DOUBLE
)
"""
# Beyond the contract's five columns: what lets a re-run keep an unchanged failure.
_EXTRA_FAILURE_COLUMNS = {
    "detail": "VARCHAR",
    "source_size": "BIGINT",
    "source_mtime": "DOUBLE",
    "window_offset_s": "DOUBLE",
}
_FAILURE_COLUMNS = "track_id, path, reason, stderr_tail, failed_at, " + ", ".join(
    _EXTRA_FAILURE_COLUMNS
)
_IN_FOLDER = "WHERE track_id >= ? AND track_id < ?"


@dataclass(frozen=True)
class FailureRecord:
    """One row of ``decode_failures``."""

    track_id: int
    path: str
    reason: str
    stderr_tail: str
    failed_at: datetime
    detail: str
    source_size: int | None
    source_mtime: float | None
    window_offset_s: float


def _failure_select(con: duckdb.DuckDBPyConnection) -> str:
    """SELECT list for ``FailureRecord``; NULL for extra columns a foreign table lacks."""
    present = {
        row[0]
        for row in con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = ?",
            [FAILURES_TABLE],
        ).fetchall()
    }
    extras = [c if c in present else f"NULL AS {c}" for c in _EXTRA_FAILURE_COLUMNS]
    return ", ".join(["track_id", "path", "reason", "stderr_tail", "failed_at", *extras])


def _query_failures(
    duckdb_path: Path, where: str = "", params: Sequence[object] = ()
) -> list[FailureRecord]:
    if not duckdb_path.exists():
        return []
    with duckdb_connection(duckdb_path, read_only=True) as con:
        if not table_exists(con, FAILURES_TABLE):
            return []
        rows = con.execute(
            f"SELECT {_failure_select(con)} FROM {FAILURES_TABLE} {where} ORDER BY track_id",
            list(params),
        ).fetchall()
    return [FailureRecord(*r) for r in rows]


def read_failures(duckdb_path: str | Path) -> list[FailureRecord]:
    """All rows of ``decode_failures`` (empty when the table does not exist yet)."""
    return _query_failures(Path(duckdb_path))


def folder_failures(duckdb_path: str | Path, folder: str) -> dict[int, FailureRecord]:
    """The rows of one audio folder's tracks, by track_id."""
    ids = folder_id_range(folder)
    records = _query_failures(Path(duckdb_path), _IN_FOLDER, [ids.start, ids.stop])
    return {r.track_id: r for r in records}


def replace_failures(
    duckdb_path: str | Path, folder: str, records: Sequence[FailureRecord]
) -> None:
    """Replace the folder's rows of ``decode_failures`` in one transaction."""
    ids = folder_id_range(folder)
    with duckdb_connection(duckdb_path) as con:
        con.execute(FAILURES_DDL)
        for column, sql_type in _EXTRA_FAILURE_COLUMNS.items():
            con.execute(
                f"ALTER TABLE {FAILURES_TABLE} ADD COLUMN IF NOT EXISTS {column} {sql_type}"
            )
        with transaction(con):
            con.execute(f"DELETE FROM {FAILURES_TABLE} {_IN_FOLDER}", [ids.start, ids.stop])
            if records:
                con.executemany(
                    f"INSERT INTO {FAILURES_TABLE} ({_FAILURE_COLUMNS}) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        [
                            r.track_id,
                            r.path,
                            r.reason,
                            r.stderr_tail,
                            r.failed_at,
                            r.detail,
                            r.source_size,
                            r.source_mtime,
                            r.window_offset_s,
                        ]
                        for r in records
                    ],
                )


def remove_failures_outside(duckdb_path: str | Path, folders: Iterable[str]) -> None:
    """Delete the rows of tracks whose audio folder is not one of ``folders``."""
    duckdb_path = Path(duckdb_path)
    if not duckdb_path.exists():
        return
    keep = sorted(set(folders))
    outside = f"WHERE NOT list_contains(?::VARCHAR[], {folder_sql('track_id')})"
    with duckdb_connection(duckdb_path, read_only=True) as con:
        stale = (
            table_exists(con, FAILURES_TABLE)
            and con.execute(f"SELECT count(*) FROM {FAILURES_TABLE} {outside}", [keep]).fetchone()[
                0
            ]
        )
    if stale:  # the write connection only when there is something to delete
        with duckdb_connection(duckdb_path) as con:
            con.execute(f"DELETE FROM {FAILURES_TABLE} {outside}", [keep])
