"""Readers in other processes (webserver, sensors, `clap-pipeline search`) while `tracks` writes.

DuckDB lets one process write, or many read; ``duckdb_connection`` waits for the lock
instead of failing, and `tracks` swaps its tables in one transaction, so a reader sees
the old table or the new one, never an error or a half-written table.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
from pathlib import Path

from dagster import DagsterInstance, materialize

from clap_pipeline.defs.metadata import tracks
from clap_pipeline.defs.resources import ClapSettings
from clap_pipeline.demo.fma_synthetic import synthetic_tracks, write_metadata
from clap_pipeline.storage import duckdb_connection

N_READERS = 3


def _read_until_stopped(db: str, stop, results) -> None:
    counts: dict[int, int] = {}
    errors: list[str] = []
    while not stop.is_set():
        try:
            with duckdb_connection(db, read_only=True, lock_timeout_s=30) as con:
                n = con.execute("SELECT count(*) FROM tracks").fetchone()[0]
            counts[n] = counts.get(n, 0) + 1
        except Exception as exc:  # any error is what the test is looking for
            errors.append(f"{type(exc).__name__}: {exc}")
    results.put((counts, errors))


def test_readers_never_fail_while_tracks_is_rewritten(tmp_path: Path) -> None:
    frame = synthetic_tracks(8_000, seed=1)
    small, large = frame.iloc[:-500], frame
    meta = tmp_path / "fma_metadata"
    resources = {
        "clap_settings": ClapSettings(data_dir=str(tmp_path)),
    }
    instance = DagsterInstance.ephemeral()
    write_metadata(meta, small)
    assert materialize([tracks], resources=resources, instance=instance).success

    ctx = mp.get_context("spawn")  # fresh interpreters, like the webserver and the daemon
    stop, results = ctx.Event(), ctx.Queue()
    readers = [
        ctx.Process(target=_read_until_stopped, args=(str(tmp_path / "clap.duckdb"), stop, results))
        for _ in range(N_READERS)
    ]
    for reader in readers:
        reader.start()
    try:
        for version in (large, small, large):
            write_metadata(meta, version)
            result = materialize([tracks], resources=resources, instance=instance)
            assert result.success  # the writer waited for the readers' locks too
    finally:
        stop.set()
        outcomes = []
        for _ in readers:
            try:
                outcomes.append(results.get(timeout=120))
            except queue.Empty:
                outcomes.append(({}, ["reader did not report"]))
        for reader in readers:
            reader.join(timeout=30)

    errors = [e for _, errs in outcomes for e in errs]
    assert errors == []
    seen: dict[int, int] = {}
    for counts, _ in outcomes:
        for n, times in counts.items():
            seen[n] = seen.get(n, 0) + times
    # Every read saw one whole version of the table, and the readers really ran alongside.
    assert set(seen) <= {len(small), len(large)}
    assert sum(seen.values()) >= N_READERS
