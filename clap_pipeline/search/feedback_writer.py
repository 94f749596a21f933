"""The service's one feedback writer: verdicts queued by requests, committed in batches.

Each ``POST /api/feedback`` used to open its own DuckDB write connection and wait for the
file's write turn; under load the posts queued behind each other (p50 8-15 s in the soak,
docs/search.md). Here requests ``submit`` their validated verdict and wait; ONE thread
takes everything waiting (up to ``max_batch`` rows) and stores it with
``feedback.record_feedback_batch``: one short write connection, one transaction, the
rows deduplicated per (client, query, track) in arrival order. A request is answered
only after the transaction that holds its row committed (acknowledged = written; a
crash loses no acknowledged row); if the batch fails, every request in it gets the error
and nothing of it was stored.

Bounds: at most ``max_queued`` verdicts wait (``submit`` raises :class:`FeedbackBusy`
beyond: the service answers 503 with ``Retry-After``), and a verdict still queued
``wait_s`` after it arrived is refused the same way instead of written late. ``close``
refuses new verdicts, writes every queued one, then stops the thread.
"""

from __future__ import annotations

import concurrent.futures
import queue
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from clap_pipeline.config import FEEDBACK_QUEUE
from clap_pipeline.feedback import WRITE_TIMEOUT_S, Feedback, Recorded, record_feedback_batch

MAX_BATCH = 200  # rows in one transaction
RETRY_AFTER_S = 2  # what a refused client is told to wait


class FeedbackBusy(RuntimeError):
    """The writer cannot take or keep this verdict now (queue full, closing, waited too long)."""

    retry_after_s = RETRY_AFTER_S


@dataclass
class _Pending:
    row: Feedback
    done: concurrent.futures.Future
    deadline: float


@dataclass
class WriterStats:
    batches: int = 0  # committed
    rows: int = 0  # posts answered from a committed batch
    largest_batch: int = 0
    write_s: float = 0.0  # time spent writing committed batches (connection included)
    writing: int = 0  # posts in the batch being written now


class FeedbackWriter:
    """Queues verdicts and commits them from one thread, a transaction per batch."""

    def __init__(
        self,
        duckdb_path: str | Path,
        *,
        db_lock: threading.Lock | None = None,
        max_queued: int = FEEDBACK_QUEUE,
        max_batch: int = MAX_BATCH,
        wait_s: float = WRITE_TIMEOUT_S,
    ) -> None:
        self.duckdb_path = Path(duckdb_path)
        # The service's in-process turn between its DuckDB reads and these writes.
        self._db_lock = db_lock or threading.Lock()
        self.max_batch = max_batch
        self.wait_s = wait_s
        self.stats = WriterStats()
        self._queue: queue.Queue[_Pending | None] = queue.Queue(max_queued)
        self._closing = threading.Lock()  # submit and close do not interleave
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="feedback-writer", daemon=True)
        self._thread.start()

    def submit(self, row: Feedback) -> concurrent.futures.Future:
        """Queue ``row``; the future gives its ``Recorded`` once committed (or the error)."""
        pending = _Pending(row, concurrent.futures.Future(), time.monotonic() + self.wait_s)
        with self._closing:
            if self._closed:
                raise FeedbackBusy("the service is shutting down: feedback is not taken")
            try:
                self._queue.put_nowait(pending)
            except queue.Full:
                raise FeedbackBusy(
                    f"{self._queue.maxsize} feedback posts are waiting to be written"
                ) from None
        return pending.done

    @property
    def queued(self) -> int:
        """Verdicts waiting for the writer (the batch being written not counted)."""
        return self._queue.qsize()

    def describe(self) -> dict[str, int]:
        return {"queued": self.queued, **asdict(self.stats)}

    def record(self, row: Feedback) -> Recorded:
        """Queue ``row`` and wait until it is committed."""
        return self.submit(row).result()

    def close(self, timeout_s: float | None = None) -> None:
        """Refuse new verdicts, write every queued one, stop the thread."""
        with self._closing:
            if self._closed:
                return
            self._closed = True
        self._queue.put(None)  # after every accepted verdict: the writer drains, then stops
        self._thread.join(timeout_s)

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            self._write(batch)

    def _write(self, batch: list[_Pending]) -> None:
        now = time.monotonic()
        live = []
        for pending in batch:
            if not pending.done.set_running_or_notify_cancel():
                continue  # the request went away before its turn: not written, not answered
            if pending.deadline < now:
                late = FeedbackBusy(f"the feedback writer was busy for {self.wait_s:g} s")
                pending.done.set_exception(late)
            else:
                live.append(pending)
        if not live:
            return
        lock_timeout_s = max(1.0, min(p.deadline for p in live) - now)
        self.stats.writing = len(live)
        started = time.monotonic()
        try:
            with self._db_lock:
                recorded = record_feedback_batch(
                    self.duckdb_path, [p.row for p in live], lock_timeout_s=lock_timeout_s
                )
        except BaseException as exc:  # nothing of the batch was stored: each request hears why
            self.stats.writing = 0
            for pending in live:
                pending.done.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        self.stats.writing = 0
        self.stats.write_s += time.monotonic() - started
        self.stats.batches += 1
        self.stats.rows += len(live)
        self.stats.largest_batch = max(self.stats.largest_batch, len(live))
        for pending, result in zip(live, recorded, strict=True):
            pending.done.set_result(result)
