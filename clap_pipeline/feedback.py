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
from collections.abc import Sequence
from dataclasses import dataclass, fields
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


def new_feedback(
    query: str,
    track_id: int,
    relevant: bool,
    model_version: str | None,
    client: str = "",
    created_at: dt.datetime | None = None,
) -> Feedback:
    """A verdict as it will be stored: the query validated, the time now unless given."""
    return Feedback(
        validate_query(query),
        int(track_id),
        bool(relevant),
        model_version,
        created_at or dt.datetime.now(dt.UTC),
        client,
    )


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
    row = new_feedback(query, track_id, relevant, model_version, client, created_at)
    (recorded,) = record_feedback_batch(duckdb_path, [row], lock_timeout_s=lock_timeout_s)
    return recorded


def record_feedback_batch(
    duckdb_path: str | Path, rows: Sequence[Feedback], *, lock_timeout_s: float = WRITE_TIMEOUT_S
) -> list[Recorded]:
    """Store verdicts in ONE write transaction, as if recorded one after the other.

    Each row is deduplicated per (client, query, track) against the table and the rows
    before it in ``rows``. Returns what happened to each, in order; all or nothing is
    stored (an exception leaves the table as it was).
    """
    if not rows:
        return []
    clients = [row.client for row in rows]
    tracks = [row.track_id for row in rows]
    with duckdb_connection(duckdb_path, lock_timeout_s=lock_timeout_s) as con:
        con.execute(_SCHEMA)
        con.execute(_ADD_CLIENT)
        with transaction(con):
            stored = con.execute(
                f"""SELECT DISTINCT t.rowid, coalesce(t.client, ''), t.query, t.track_id,
                           t.relevant, t.model_version, t.created_at
                    FROM {TABLE} t
                    JOIN (SELECT unnest(?::VARCHAR[]) AS client,
                                 unnest(?::BIGINT[]) AS track_id) k
                      ON coalesce(t.client, '') = k.client AND t.track_id = k.track_id
                    ORDER BY t.rowid""",
                [clients, tracks],
            ).fetchall()
            plan = _DedupePlan(stored)
            recorded = [plan.add(row) for row in rows]
            if plan.deleted:
                con.execute(
                    f"DELETE FROM {TABLE} WHERE rowid IN (SELECT unnest(?::BIGINT[]))",
                    [plan.deleted],
                )
            if plan.inserted:
                new = list(plan.inserted.values())
                con.execute(
                    f"""INSERT INTO {TABLE} SELECT unnest(?::VARCHAR[]), unnest(?::BIGINT[]),
                        unnest(?::BOOLEAN[]), unnest(?::VARCHAR[]), unnest(?::TIMESTAMPTZ[]),
                        unnest(?::VARCHAR[])""",
                    [[getattr(r, f.name) for r in new] for f in fields(Feedback)],
                )
    return recorded


class _DedupePlan:
    """What a batch does to the table: the rows it deletes and inserts, per (client, pair)."""

    def __init__(self, stored: list[tuple]) -> None:
        # (client, pair key) -> (rowids stored, the row as it stands)
        self.current: dict[tuple[str, str], tuple[list[int], Feedback]] = {}
        for rowid, client, query, track_id, relevant, version, at in stored:
            key = (client, pair_key(query, track_id))
            ids = self.current[key][0] if key in self.current else []
            row = Feedback(query, track_id, relevant, version, at, client)
            self.current[key] = ([*ids, rowid], row)  # the last stored row stands
        self.deleted: list[int] = []
        self.inserted: dict[tuple[str, str], Feedback] = {}

    def add(self, row: Feedback) -> Recorded:
        key = (row.client, pair_key(row.query, row.track_id))
        if key not in self.current:
            self.current[key] = ([], row)
            self.inserted[key] = row
            return Recorded(row, "added")
        ids, standing = self.current[key]
        if standing.relevant == row.relevant:
            return Recorded(standing, "unchanged")
        self.deleted.extend(ids)
        self.current[key] = ([], row)
        self.inserted[key] = row  # replaces a row this batch would have inserted, if any
        return Recorded(row, "replaced")


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
