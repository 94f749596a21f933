"""The service's one feedback writer: batches under concurrency, answers after commit, drains."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from clap_pipeline.feedback import (
    Feedback,
    count_feedback,
    new_feedback,
    pair_key,
    read_feedback,
)
from clap_pipeline.search.feedback_writer import FeedbackBusy, FeedbackWriter
from clap_pipeline.storage import DuckDBLockTimeout, duckdb_connection


def verdict(query: str, track_id: int, relevant: bool = True, client: str = "a") -> Feedback:
    return new_feedback(query, track_id, relevant, "1", client)


def stored(db: Path) -> set[tuple[str, str, int, bool]]:
    return {(r.client, r.query, r.track_id, r.relevant) for r in read_feedback(db)}


def test_concurrent_posts_are_batched_one_row_per_client_query_and_track(tmp_path: Path) -> None:
    db = tmp_path / "clap.duckdb"
    writer = FeedbackWriter(db)
    threads, posts = 12, 15
    start = threading.Barrier(threads)

    def client(i: int) -> list[str]:
        start.wait()
        changes = []
        for j in range(posts):
            # Every thread also judges the same shared pairs, spelled differently.
            shared = writer.record(verdict(f" Shared {j % 3} ", 7, client="all"))
            own = writer.record(verdict(f"user {i} post {j}", j % 5, client=f"c{i}"))
            flip = writer.record(verdict(f"user {i} flip", 9, relevant=j % 2 == 0, client=f"c{i}"))
            changes += [shared.change, own.change, flip.change]
        return changes

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(client, range(threads)))
    writer.close()

    shared = [c for changes in results for c in changes[0::3]]
    assert shared.count("added") == 3 and set(shared) == {"added", "unchanged"}
    for changes in results:
        assert changes[1::3] == ["added"] * posts
        assert changes[2::3] == ["added"] + ["replaced"] * (posts - 1)
    rows = read_feedback(db)
    keys = [(r.client, pair_key(r.query, r.track_id)) for r in rows]
    assert len(keys) == len(set(keys)) == 3 + threads * (posts + 1)  # one row per key
    assert {(r.query, r.relevant) for r in rows if r.track_id == 9} == {
        (f"user {i} flip", (posts - 1) % 2 == 0) for i in range(threads)
    }
    # Batched: fewer transactions than posts.
    assert writer.stats.rows == threads * posts * 3
    assert writer.stats.batches < writer.stats.rows and writer.stats.largest_batch > 1


def test_a_post_is_answered_only_after_its_row_is_committed(tmp_path: Path) -> None:
    db = tmp_path / "clap.duckdb"
    writer = FeedbackWriter(db)
    writer.record(verdict("first", 1))
    # Another writer holds the file's write turn (as another process would).
    with duckdb_connection(db) as con:
        pending = writer.submit(verdict("second", 2))
        with pytest.raises(concurrent.futures.TimeoutError):
            pending.result(timeout=1.0)  # waiting for the turn: not answered yet
        assert con.execute("SELECT count(*) FROM search_feedback").fetchall() == [(1,)]
    recorded = pending.result(timeout=30)
    assert recorded.change == "added"
    assert ("a", "second", 2, True) in stored(db)  # once answered, it is in the file
    writer.close()


def test_a_batch_that_cannot_be_written_fails_every_post_in_it(tmp_path: Path) -> None:
    db = tmp_path / "clap.duckdb"
    writer = FeedbackWriter(db, wait_s=1.0)
    with duckdb_connection(db):
        late = [writer.submit(verdict(f"q {i}", i)) for i in range(5)]
        for future in late:
            with pytest.raises((DuckDBLockTimeout, FeedbackBusy)):
                future.result(timeout=30)
    assert count_feedback(db) == 0  # refused and not written
    assert writer.record(verdict("after", 1)).change == "added"
    writer.close()


def test_a_full_queue_refuses_at_once(tmp_path: Path) -> None:
    db = tmp_path / "clap.duckdb"
    lock = threading.Lock()
    writer = FeedbackWriter(db, db_lock=lock, max_queued=3)
    with lock:  # the writer takes the first post, then waits for the lock
        taken = writer.submit(verdict("taken", 1))
        deadline = time.monotonic() + 10
        while writer.queued and time.monotonic() < deadline:
            time.sleep(0.01)
        queued = [writer.submit(verdict(f"queued {i}", i)) for i in range(3)]
        with pytest.raises(FeedbackBusy, match="3 feedback posts are waiting"):
            writer.submit(verdict("one too many", 9))
    assert [f.result(timeout=30).change for f in [taken, *queued]] == ["added"] * 4
    writer.close()
    assert count_feedback(db) == 4


def test_close_writes_every_queued_post_then_refuses(tmp_path: Path) -> None:
    db = tmp_path / "clap.duckdb"
    lock = threading.Lock()
    writer = FeedbackWriter(db, db_lock=lock)
    with lock:
        futures = [writer.submit(verdict(f"q {i}", i)) for i in range(50)]
        closing = threading.Thread(target=writer.close)
        closing.start()
        time.sleep(0.2)
        assert closing.is_alive()  # close waits for the queue to be written
        with pytest.raises(FeedbackBusy, match="shutting down"):
            writer.submit(verdict("too late", 1))
    closing.join(timeout=30)
    assert not closing.is_alive()
    assert all(f.result(timeout=0).change == "added" for f in futures)
    assert count_feedback(db) == 50


CRASHING_SERVICE = """
import sys, threading
from clap_pipeline.feedback import new_feedback
from clap_pipeline.search.feedback_writer import FeedbackWriter

writer = FeedbackWriter(sys.argv[1])
out = threading.Lock()

def post(i):
    for j in range(10_000):
        recorded = writer.record(new_feedback(f"user {i} post {j}", j % 7, True, "1", f"c{i}"))
        with out:  # acknowledged
            sys.stdout.write(recorded.row.query + "\\n")
            sys.stdout.flush()

for i in range(8):
    threading.Thread(target=post, args=(i,)).start()
"""


def test_a_killed_service_loses_no_acknowledged_post(tmp_path: Path) -> None:
    db = tmp_path / "clap.duckdb"
    service = subprocess.Popen(
        [sys.executable, "-c", CRASHING_SERVICE, str(db)], stdout=subprocess.PIPE, text=True
    )
    assert service.stdout is not None
    acknowledged = [service.stdout.readline().strip() for _ in range(200)]
    os.kill(service.pid, signal.SIGKILL)  # mid-batch, most likely
    service.wait(timeout=30)
    acknowledged += service.stdout.read().split("\n")[:-1]  # whole lines only
    queries = {r.query for r in read_feedback(db)}
    assert set(acknowledged) <= queries and len(acknowledged) >= 200
