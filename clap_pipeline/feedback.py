"""Listeners' verdicts on search results: the DuckDB table ``search_feedback``.

One row per click on thumbs up/down: the query text, the track, the verdict, the model
version that ranked it and when. Each write opens a short write connection (the
file's write turn, see storage.py) and closes it, so the DuckDB file stays readable by
other processes while the search server runs.

One row per (client, query, track): a client that posts the same verdict again adds no
row, a changed verdict replaces its row (``client`` is the service's pseudonym of the
address, ``search/write_guard.py``; rows written without one share the client "").

Into training: every (query, track) pair is assigned by a hash to the *training* part
(80 %) or the *held-out* part (20 %), once and for all. The latest verdict per pair counts.
Liked pairs of the training part become extra texts of their tracks in the next
``retrain`` (``TrainConfig.feedback_weight``, see dataset.py); the held-out part,
liked and disliked, is kept for evaluation. Bounds (``feedback_sets``): one client's
``MAX_LIKED_PER_CLIENT`` most recent liked pairs count, and a track keeps its
``MAX_QUERIES_PER_TRACK`` most recently liked queries.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from pathlib import Path

from clap_pipeline.storage import duckdb_connection, table_exists, transaction

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
MAX_LIKED_PER_CLIENT = 50  # liked training pairs one client adds to a retrain
MAX_QUERIES_PER_TRACK = 10  # liked queries a track may be paired with
WRITE_TIMEOUT_S = 15.0  # a request waits this long for another writer, then fails with 503

_SCHEMA = f"""CREATE TABLE IF NOT EXISTS {TABLE} (
    query VARCHAR NOT NULL,
    track_id BIGINT NOT NULL,
    relevant BOOLEAN NOT NULL,
    model_version VARCHAR,
    created_at TIMESTAMPTZ NOT NULL,
    client VARCHAR)"""
# Tables written before the client column existed get it (NULL: the client "").
_ADD_CLIENT = f"ALTER TABLE {TABLE} ADD COLUMN IF NOT EXISTS client VARCHAR"


@dataclass(frozen=True)
class Feedback:
    query: str
    track_id: int
    relevant: bool
    model_version: str | None
    created_at: dt.datetime
    client: str = ""


@dataclass(frozen=True)
class Recorded:
    row: Feedback  # as stored now
    change: str  # "added", "replaced" (the client changed its verdict) or "unchanged"


def record_feedback(
    duckdb_path: str | Path,
    *,
    query: str,
    track_id: int,
    relevant: bool,
    model_version: str | None,
    client: str = "",
    created_at: dt.datetime | None = None,
    lock_timeout_s: float = WRITE_TIMEOUT_S,
) -> Recorded:
    """Store a client's verdict on (query, track) in a short write transaction.

    One row per (client, query, track) (the query compared as ``pair_key`` does): the
    same verdict again changes nothing, another verdict replaces the row.
    """
    row = Feedback(
        validate_query(query),
        int(track_id),
        bool(relevant),
        model_version,
        created_at or dt.datetime.now(dt.UTC),
        client,
    )
    key = pair_key(row.query, row.track_id)
    with duckdb_connection(duckdb_path, lock_timeout_s=lock_timeout_s) as con:
        con.execute(_SCHEMA)
        con.execute(_ADD_CLIENT)
        with transaction(con):
            earlier = con.execute(
                f"""SELECT rowid, query, relevant, model_version, created_at FROM {TABLE}
                    WHERE coalesce(client, '') = ? AND track_id = ?""",
                [client, row.track_id],
            ).fetchall()
            same = [r for r in earlier if pair_key(r[1], row.track_id) == key]
            if same and same[-1][2] == row.relevant:
                _, text, relevant, version, at = same[-1]
                return Recorded(
                    Feedback(text, row.track_id, relevant, version, at, client), "unchanged"
                )
            if same:
                con.execute(
                    f"DELETE FROM {TABLE} WHERE rowid IN (SELECT unnest(?::BIGINT[]))",
                    [[r[0] for r in same]],
                )
            con.execute(
                f"INSERT INTO {TABLE} VALUES (?, ?, ?, ?, ?, ?)",
                [row.query, row.track_id, row.relevant, row.model_version, row.created_at, client],
            )
    return Recorded(row, "replaced" if same else "added")


def read_feedback(duckdb_path: str | Path) -> list[Feedback]:
    """Every row, oldest first (empty when nobody has given feedback yet)."""
    with duckdb_connection(duckdb_path, read_only=True) as con:
        if not table_exists(con, TABLE):
            return []
        present = {row[0] for row in con.execute(f"DESCRIBE {TABLE}").fetchall()}
        client = "coalesce(client, '')" if "client" in present else "''"
        rows = con.execute(
            f"SELECT query, track_id, relevant, model_version, created_at, {client} "
            f"FROM {TABLE} ORDER BY created_at, rowid"
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
    per_client: dict[str, int] = {}
    # Newest first, so that the bounds keep the most recent verdicts.
    for row in reversed(latest_verdicts(read_feedback(duckdb_path))):
        if is_heldout(row.query, row.track_id):
            heldout.append(row)
        elif row.relevant:
            if per_client.get(row.client, 0) >= MAX_LIKED_PER_CLIENT:
                continue
            queries = liked.setdefault(row.track_id, [])
            if len(queries) < MAX_QUERIES_PER_TRACK:
                queries.append(row.query)
                per_client[row.client] = per_client.get(row.client, 0) + 1
    heldout.reverse()
    return FeedbackSets({t: tuple(sorted(q)) for t, q in sorted(liked.items())}, heldout)


def count_feedback(duckdb_path: str | Path, lock_timeout_s: float = 5.0) -> int:
    """Rows in ``search_feedback`` (0 without a file or table): what the sensor watches."""
    if not Path(duckdb_path).exists():
        return 0
    with duckdb_connection(duckdb_path, read_only=True, lock_timeout_s=lock_timeout_s) as con:
        if not table_exists(con, TABLE):
            return 0
        return int(con.execute(f"SELECT count(*) FROM {TABLE}").fetchall()[0][0])
