"""Atomic writes and DuckDB connections (the write turn serialises writers, readers queue)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import pytest

from clap_pipeline.storage import (
    DuckDBLockTimeout,
    atomic_path,
    duckdb_connection,
    remove_orphaned_temps,
    transaction,
)


def _make_db(path: Path) -> None:
    with duckdb.connect(str(path)) as con:
        con.execute("CREATE TABLE t AS SELECT 1 AS x")


def test_connections_leave_no_turn_behind(tmp_path: Path) -> None:
    db = tmp_path / "clap.duckdb"
    _make_db(db)
    with duckdb_connection(db, read_only=True) as con:
        assert con.execute("SELECT x FROM t").fetchall() == [(1,)]
    with duckdb_connection(db) as con:
        con.execute("INSERT INTO t VALUES (2)")
    assert [p.name for p in (tmp_path / "clap.duckdb.turns").iterdir()] == ["counter"]


def test_a_killed_writer_does_not_hold_its_turn(tmp_path: Path) -> None:
    db = tmp_path / "clap.duckdb"
    _make_db(db)
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_WRITE_TURN, str(db)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "connected"
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert len(list((tmp_path / "clap.duckdb.turns").iterdir())) == 2  # counter + its entry
    with duckdb_connection(db, lock_timeout_s=5) as con:
        assert con.execute("SELECT count(*) FROM t").fetchone() == (1,)
    assert [p.name for p in (tmp_path / "clap.duckdb.turns").iterdir()] == ["counter"]


_HOLD_WRITE_TURN = """
import sys, time
from clap_pipeline.storage import duckdb_connection
with duckdb_connection(sys.argv[1]) as con:
    print("connected", flush=True)
    time.sleep(600)
"""

_WRITE_BACK_TO_BACK = """
import sys, time
from clap_pipeline.storage import duckdb_connection
stop = time.monotonic() + float(sys.argv[2])
while time.monotonic() < stop:
    with duckdb_connection(sys.argv[1], lock_timeout_s=60) as con:
        con.execute("INSERT INTO t VALUES (2)")
        time.sleep(0.05)  # a short write transaction, then straight back in line
"""


def test_readers_get_their_turn_between_writers_that_come_back_at_once(tmp_path: Path) -> None:
    """First come, first served: a reader waits for the writers ahead of it, not for all."""
    db = tmp_path / "clap.duckdb"
    _make_db(db)
    seconds = 8.0
    writers = [
        subprocess.Popen([sys.executable, "-c", _WRITE_BACK_TO_BACK, str(db), str(seconds)])
        for _ in range(2)
    ]
    try:
        time.sleep(2.0)  # both writers started and alternating
        waits = []
        stop = time.monotonic() + seconds - 3.0
        while time.monotonic() < stop:
            t0 = time.monotonic()
            with duckdb_connection(db, read_only=True, lock_timeout_s=30) as con:
                con.execute("SELECT count(*) FROM t").fetchone()
            waits.append(time.monotonic() - t0)
    finally:
        for writer in writers:
            assert writer.wait(timeout=60) == 0
    # Before the turns were fair this reader got 1 read in 30 s (one wait of 30.3 s).
    assert len(waits) >= 10, waits
    assert max(waits) < 2.0, max(waits)


def test_a_writer_holds_back_readers_and_writers_until_it_closes(tmp_path: Path) -> None:
    db = tmp_path / "clap.duckdb"
    _make_db(db)
    with duckdb_connection(db) as writer:
        writer.execute("INSERT INTO t VALUES (2)")
        # flock conflicts between separate opens of the lock file, in one process too.
        with (
            pytest.raises(DuckDBLockTimeout, match=r"clap\.duckdb: a writer has held it"),
            duckdb_connection(db, read_only=True, lock_timeout_s=0.2),
        ):
            pass
        with (
            pytest.raises(DuckDBLockTimeout, match=r"another process has been writing"),
            duckdb_connection(db, lock_timeout_s=0.2),
        ):
            pass
    with duckdb_connection(db, read_only=True, lock_timeout_s=0.2) as reader:
        assert reader.execute("SELECT sum(x) FROM t").fetchone() == (3,)


def test_a_waiting_reader_gets_in_once_the_writer_is_done(tmp_path: Path) -> None:
    db = tmp_path / "clap.duckdb"
    _make_db(db)
    seen: list[int] = []

    def read() -> None:
        with duckdb_connection(db, read_only=True, lock_timeout_s=10) as con:
            seen.append(con.execute("SELECT count(*) FROM t").fetchone()[0])

    with duckdb_connection(db) as writer:
        reader = threading.Thread(target=read)
        reader.start()
        time.sleep(0.3)
        assert seen == []  # queued behind the writer
        writer.execute("INSERT INTO t VALUES (2)")
    reader.join(timeout=10)
    assert seen == [2]  # it saw the write, whole


_CLAIMER = """
import sys, time
from pathlib import Path
from clap_pipeline.storage import atomic_path
with atomic_path(Path(sys.argv[1]), claim=True) as tmp:
    tmp.write_bytes(b"partial")
    print(tmp, flush=True)
    time.sleep(600)
"""


def test_claimed_temp_files_are_removed_only_once_their_writer_is_dead(tmp_path: Path) -> None:
    writer = subprocess.Popen(
        [sys.executable, "-c", _CLAIMER, str(tmp_path / "part.parquet")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        tmp = Path(writer.stdout.readline().strip())
        assert tmp.name.startswith(".part.parquet.") and tmp.read_bytes() == b"partial"
        assert remove_orphaned_temps(tmp_path.glob(".*.tmp")) == []  # a live writer's
        assert tmp.exists()
    finally:
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
    # Seconds old, but nobody claims it any more.
    assert remove_orphaned_temps(tmp_path.glob(".*.tmp")) == [tmp]
    assert not tmp.exists() and not (tmp_path / "part.parquet").exists()


def test_a_claimed_atomic_write_renames_and_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "x.bin"
    with atomic_path(target, claim=True) as tmp:
        assert tmp.exists()  # created, so that the claim holds from the start
        tmp.write_bytes(b"done")
    assert target.read_bytes() == b"done"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.bin"]


def test_transaction_commits_or_rolls_back_everything(tmp_path: Path) -> None:
    with duckdb_connection(tmp_path / "t.duckdb") as con:
        con.execute("CREATE TABLE t (x INTEGER)")
        with transaction(con):
            con.execute("INSERT INTO t VALUES (1)")
            con.execute("INSERT INTO t VALUES (2)")
        with pytest.raises(KeyboardInterrupt), transaction(con):
            con.execute("DELETE FROM t")
            con.execute("INSERT INTO t VALUES (3)")
            raise KeyboardInterrupt  # Ctrl-C mid-way: nothing of the block stays
        assert con.execute("SELECT x FROM t ORDER BY x").fetchall() == [(1,), (2,)]
