"""Listeners' verdicts on search results: the DuckDB table ``search_feedback``.

One row per click on thumbs up/down: the query text, the track, the verdict, the model
version that ranked it and when. Each write opens a short write connection (the
file's write turn, see storage.py) and closes it, so the DuckDB file stays readable by
other processes while the search server runs.

Into training: every (query, track) pair is assigned by a hash to the *training* part
(80 %) or the *held-out* part (20 %), once and for all. The latest verdict per pair counts.
Liked pairs of the training part become extra texts of their tracks in the next
``retrain`` (``TrainConfig.feedback_weight``, see training_data.py); the held-out part,
liked and disliked, is kept for evaluation.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from pathlib import Path

from clap_pipeline.storage import duckdb_connection, table_exists

MAX_QUERY_CHARS = 1000  # CLAP reads 77 tokens anyway; longer text is a mistake or abuse


def validate_query(query: str) -> str:
    """The query as searched and stored: stripped, 1..MAX_QUERY_CHARS characters."""
    text = (query or "").strip()
    if not text:
        raise ValueError('empty query: describe the music, e.g. "folk country music"')
    if len(text) > MAX_QUERY_CHARS:
        raise ValueError(f"query has {len(text)} characters, at most {MAX_QUERY_CHARS} allowed")
    return text


TABLE = "search_feedback"
HELDOUT_SHARE = 0.2
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


def pair_key(query: str, track_id: int) -> str:
    return f"{' '.join(query.casefold().split())}\x00{int(track_id)}"


def is_heldout(query: str, track_id: int) -> bool:
    """Whether a (query, track) pair belongs to the held-out part (stable, ~HELDOUT_SHARE)."""
    digest = hashlib.sha256(pair_key(query, track_id).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < HELDOUT_SHARE


def latest_verdicts(rows: list[Feedback]) -> list[Feedback]:
    """One row per (query, track): the latest verdict (rows oldest first, as read_feedback)."""
    latest: dict[str, Feedback] = {}
    for row in rows:
        latest[pair_key(row.query, row.track_id)] = row
    return list(latest.values())


@dataclass(frozen=True)
class FeedbackSets:
    liked: dict[int, tuple[str, ...]]  # training part: track -> the queries it was liked for
    heldout: list[Feedback]  # held-out part, liked and disliked

    @property
    def n_liked_pairs(self) -> int:
        return sum(len(v) for v in self.liked.values())


def feedback_sets(duckdb_path: str | Path) -> FeedbackSets:
    """The training and held-out parts of the feedback (empty without a table or file)."""
    if not Path(duckdb_path).exists():
        return FeedbackSets({}, [])
    liked: dict[int, list[str]] = {}
    heldout: list[Feedback] = []
    for row in latest_verdicts(read_feedback(duckdb_path)):
        if is_heldout(row.query, row.track_id):
            heldout.append(row)
        elif row.relevant:
            liked.setdefault(row.track_id, []).append(row.query)
    return FeedbackSets({t: tuple(sorted(q)) for t, q in sorted(liked.items())}, heldout)


def count_feedback(duckdb_path: str | Path, lock_timeout_s: float = 5.0) -> int:
    """Rows in ``search_feedback`` (0 without a file or table): what the sensor watches."""
    if not Path(duckdb_path).exists():
        return 0
    with duckdb_connection(duckdb_path, read_only=True, lock_timeout_s=lock_timeout_s) as con:
        if not table_exists(con, TABLE):
            return 0
        return int(con.execute(f"SELECT count(*) FROM {TABLE}").fetchall()[0][0])
