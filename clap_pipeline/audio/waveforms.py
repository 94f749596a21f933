"""Build and update the `waveforms` Parquet dataset, one file per FMA audio folder.

``<waveforms_dir>/NNN.parquet`` holds every window (``windows.WindowRule``: 5 s, from
``window_offset_s`` every ``hop_s``, up to ``max_audio_s`` per track) of the selected
tracks of folder ``NNN`` as 16-bit PCM, one row per window sorted by (track_id,
start_s), in row groups of at most ``row_group_rows`` (64) windows; the schema and the
row writer are the data contract's (``clap_pipeline.dataset.waveforms_schema``,
``pcm_batch``, ``PartitionWriter``; docs/windows.md). A worker decodes a track's span
once and cuts it into windows (``decode.DecodedWindows``).
Failures go to the DuckDB table of ``decode_failures``; the asset checks read
``waveform_health``.

How a partition is (re)built:

- Incremental: a track whose file has the same path, size and mtime as its row in
  the current file keeps that row (streamed over from the old file); a track
  that failed before with an unchanged file keeps its failure (except timeouts and
  unreadable files, which are retried). Only new or changed files are decoded. Rows of tracks that
  left the selection are not copied, so they disappear. If nothing changed the
  file is left untouched.
- Memory is bounded by a row group: decoded rows stream into a ``ParquetWriter``
  (one row group being written by a background thread while the next is
  collected), old rows stream from the old file one row group at a time, and at
  most a few tracks per worker wait to be written (fewer when tracks are long).
  Nothing grows with the number of tracks.
- Parallel: ``workers`` (default: all cores) decode at once. The default decoder
  (``decoder="av"``, ``decode_av``) runs the FFmpeg libraries in a pool of worker
  processes (threads for fewer than ``process_pool_min_jobs`` clips, which start
  instantly; PyAV releases the GIL while decoding); a worker that dies is replaced
  and its clip judged by the ffmpeg CLI. ``decoder="cli"`` runs one ffmpeg
  process per clip from a thread pool (the reference, and the fallback for files
  the libraries cannot open). Jobs of all requested partitions form one ordered
  stream, so workers never idle at a partition boundary.
- Atomic: rows go to a hidden temp file (``.NNN.parquet.<id>.tmp``, ignored by
  ``pyarrow.dataset``) renamed over ``NNN.parquet`` when complete; a crash or
  ``kill -9`` leaves the previous file, and the next run deletes the temp file that
  no live process claims (a writer holds a lock on its own). Then the partition's rows of the DuckDB
  table ``decode_failures`` are replaced in one transaction.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from clap_pipeline.audio.decode import (
    DEFAULT_TIMEOUT_S,
    RETRIED_REASONS,
    DecodedWindows,
    DecodeFailure,
    ensure_ffmpeg,
)
from clap_pipeline.audio.decode_av import DECODERS, decode_job
from clap_pipeline.audio.decode_failures import (
    FailureRecord,
    folder_failures,
    remove_failures_outside,
    replace_failures,
)
from clap_pipeline.dataset import (
    ROW_GROUP_ROWS,
    PartitionWriter,
    folder_of,
    iter_partition_files,
    partition_path,
    pcm_batch,
    waveforms_schema,
)
from clap_pipeline.knobs import check, knob
from clap_pipeline.processes import exit_with, usable_cpus
from clap_pipeline.progress import Throttle, rate_and_eta
from clap_pipeline.selection import SelectedTrack
from clap_pipeline.storage import atomic_path, remove_orphaned_temps
from clap_pipeline.windows import DEFAULT_MAX_AUDIO_S, WindowRule

# Decoded tracks waiting to be written, in bytes of PCM at most (long songs: fewer ahead).
MAX_AHEAD_BYTES = 256 * 2**20
_PCM_BYTES_PER_S = 2 * 48_000


@dataclass(frozen=True)
class DecodeOptions:
    """Every decode setting, each a knob (knobs.py): the asset's run config is derived."""

    window_offset_s: float = knob(0.0, "start of each clip's first 5-s window (s)", ge=0.0)
    hop_s: float | None = knob(None, "seconds between window starts (none: 5, the window)", gt=0.0)
    max_audio_s: float | None = knob(
        DEFAULT_MAX_AUDIO_S, "audio decoded per track, in seconds (none: the whole file)", ge=1.0
    )
    timeout_s: float = knob(DEFAULT_TIMEOUT_S, "a clip's decode is stopped after this long", gt=0.0)
    workers: int = knob(0, "parallel decode processes (0: one per CPU core)", ge=0)
    decoder: str = knob(
        "av",
        "av: FFmpeg libraries in worker processes (PyAV); cli: one ffmpeg per clip",
        choices=DECODERS,
    )
    progress_interval_s: float = knob(
        5.0, "seconds between progress lines in the log (0: every update)", ge=0.0
    )
    row_group_rows: int = knob(
        ROW_GROUP_ROWS, "windows per Parquet row group", ge=1, le=ROW_GROUP_ROWS, run_config=False
    )
    process_pool_min_jobs: int = knob(
        64, "av: fewer clips are decoded on threads (a pool takes ~1 s)", ge=1, run_config=False
    )

    def __post_init__(self) -> None:
        check(self, "decode options")
        _ = self.rule  # the floor's WindowRule: also rejects an infinite offset, hop or span

    @property
    def n_workers(self) -> int:
        return self.workers if self.workers > 0 else usable_cpus()

    @property
    def rule(self) -> WindowRule:
        return WindowRule(
            offset_s=self.window_offset_s, hop_s=self.hop_s, max_audio_s=self.max_audio_s
        )


@dataclass(frozen=True)
class Progress:
    done: int  # tracks written or failed, reused ones included
    total: int
    to_decode: int
    decoded: int  # decode attempts finished (successes and failures)
    failures: int
    elapsed_s: float

    @property
    def tracks_per_s(self) -> float:
        return rate_and_eta(self.decoded, self.to_decode, self.elapsed_s)[0]

    @property
    def eta_s(self) -> float | None:
        return rate_and_eta(self.decoded, self.to_decode, self.elapsed_s)[1]

    def __str__(self) -> str:
        eta = "?" if self.eta_s is None else f"{self.eta_s:.0f} s"
        speed = f"{self.tracks_per_s:.1f} tracks/s, ETA {eta}" if self.to_decode else "no changes"
        return (
            f"waveforms: {self.done}/{self.total} tracks "
            f"({self.decoded}/{self.to_decode} decoded, {self.done - self.decoded} unchanged), "
            f"{speed}, {self.failures} failures"
        )


@dataclass
class PartitionSummary:
    folder: str
    path: Path
    selected: int = 0
    rows: int = 0  # tracks with windows
    windows: int = 0
    reused: int = 0
    decoded_ids: list[int] = field(default_factory=list)
    failures: list[FailureRecord] = field(default_factory=list)
    rewritten: bool = False


@dataclass
class WaveformsSummary:
    partitions: list[PartitionSummary]
    seconds: float

    @property
    def selected(self) -> int:
        return sum(p.selected for p in self.partitions)

    @property
    def rows(self) -> int:
        return sum(p.rows for p in self.partitions)

    @property
    def windows(self) -> int:
        return sum(p.windows for p in self.partitions)

    @property
    def decoded(self) -> int:
        return sum(len(p.decoded_ids) for p in self.partitions)

    @property
    def decoded_ids(self) -> list[int]:
        return [tid for p in self.partitions for tid in p.decoded_ids]

    @property
    def reused(self) -> int:
        return sum(p.reused for p in self.partitions)

    @property
    def failures(self) -> list[FailureRecord]:
        return [f for p in self.partitions for f in p.failures]

    @property
    def new_failures(self) -> list[FailureRecord]:
        """Failures found by this run (the others were kept: their files did not change)."""
        decoded = set(self.decoded_ids)
        return [f for f in self.failures if f.track_id in decoded]

    @property
    def tracks_per_s(self) -> float:
        return self.decoded / self.seconds if self.seconds > 0 else 0.0

    def failure_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for f in self.failures:
            counts[f.reason] = counts.get(f.reason, 0) + 1
        return dict(sorted(counts.items()))


def group_by_folder(tracks: Iterable[SelectedTrack]) -> dict[str, list[SelectedTrack]]:
    groups: dict[str, list[SelectedTrack]] = {}
    for track in sorted(tracks, key=lambda t: t.track_id):
        groups.setdefault(track.folder, []).append(track)
    return groups


# --------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class _Source:
    track: SelectedTrack
    size: int | None  # None when the file could not be stat-ed (decode records why)
    mtime: float | None

    @property
    def key(self) -> tuple[str, int | None, float | None]:
        return (str(self.track.path), self.size, self.mtime)


@dataclass
class _Plan:
    folder: str
    target: Path
    sources: list[_Source]
    old_file_ok: bool  # the old file exists and holds the same windows
    old_windows: int  # its rows
    old_ids: set[int]
    reuse_ids: set[int]
    carried_failures: dict[int, FailureRecord]
    old_failure_ids: set[int]

    @property
    def to_decode(self) -> list[_Source]:
        return [
            s
            for s in self.sources
            if s.track.track_id not in self.reuse_ids
            and s.track.track_id not in self.carried_failures
        ]

    @property
    def file_unchanged(self) -> bool:
        return self.old_file_ok and not self.to_decode and self.old_ids == self.reuse_ids

    @property
    def failures_unchanged(self) -> bool:
        return not self.to_decode and self.old_failure_ids == set(self.carried_failures)


def _stat(track: SelectedTrack) -> _Source:
    try:
        st = track.path.stat()
    except OSError:
        return _Source(track, None, None)
    return _Source(track, st.st_size, st.st_mtime)


def _old_index(
    path: Path, rule: WindowRule
) -> dict[int, tuple[tuple[str, int, float], int]] | None:
    """Per track of the current file: its source fingerprint and its number of windows; None
    if the file is absent or incompatible."""
    if not path.exists():
        return None
    try:
        pf = pq.ParquetFile(path)
        if not pf.schema_arrow.equals(waveforms_schema(rule), check_metadata=True):
            return None  # another window rule or format version: decode everything again
        table = pf.read(columns=["track_id", "source_path", "source_size", "source_mtime"])
    except (OSError, pa.ArrowException):
        return None  # unreadable: rebuilt from scratch
    index: dict[int, tuple[tuple[str, int, float], int]] = {}
    for tid, sp, size, mtime in zip(
        table.column("track_id").to_pylist(),
        table.column("source_path").to_pylist(),
        table.column("source_size").to_pylist(),
        table.column("source_mtime").to_pylist(),
        strict=True,
    ):
        key, count = index.get(tid, ((sp, size, mtime), 0))
        index[tid] = (key, count + 1)
    return index


def _plan(
    folder: str,
    tracks: Sequence[SelectedTrack],
    waveforms_dir: Path,
    duckdb_path: Path,
    rule: WindowRule,
) -> _Plan:
    target = partition_path(waveforms_dir, folder)
    sources = [_stat(t) for t in tracks]
    old = _old_index(target, rule)
    old_failures = folder_failures(duckdb_path, folder)
    reuse: set[int] = set()
    carried: dict[int, FailureRecord] = {}
    for s in sources:
        tid = s.track.track_id
        if s.size is None:
            continue  # vanished since selection: decode records it as missing
        if old is not None and tid in old and old[tid][0] == s.key:
            reuse.add(tid)
            continue
        failure = old_failures.get(tid)
        if (
            failure is not None
            and failure.reason not in RETRIED_REASONS
            and (failure.path, failure.source_size, failure.source_mtime) == s.key
            and failure.window_offset_s == rule.offset_s
        ):
            carried[tid] = failure
    return _Plan(
        folder=folder,
        target=target,
        sources=sources,
        old_file_ok=old is not None,
        old_windows=sum(count for _, count in (old or {}).values()),
        old_ids=set(old or {}),
        reuse_ids=reuse,
        carried_failures=carried,
        old_failure_ids=set(old_failures),
    )


# --------------------------------------------------------------------------- decoding


MAX_POOL_RESTARTS = 3


def _new_executor(options: DecodeOptions, n_jobs: int) -> Executor:
    workers = options.n_workers
    if options.decoder == "av" and n_jobs >= options.process_pool_min_jobs:
        # Workers fork from a clean single-threaded server (a fork of the multithreaded run
        # worker could inherit a held lock) that imported the decoder once: starting a
        # worker costs no imports (spawn re-imports __main__, e.g. all of dagster, in each).
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["__main__", decode_job.__module__])
        return ProcessPoolExecutor(
            max_workers=workers,
            mp_context=ctx,
            # Workers end with this process (no orphans after a kill -9 of the run); then
            # the fork server, which lives as long as any worker, ends too.
            initializer=exit_with,
            initargs=(os.getpid(),),
        )
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode")


class _OrderedDecoder:
    """Decodes jobs on a worker pool ahead of the consumer, handing results back in order.

    At most ``max_ahead`` results exist at once, which bounds memory. When a worker
    process dies (a crash inside the FFmpeg libraries), the clip being waited for is
    decoded by the ffmpeg CLI (its verdict is recorded) and a fresh pool takes the rest;
    after ``MAX_POOL_RESTARTS`` (workers that cannot even start, e.g. under a ``__main__``
    read from stdin) threads do.
    """

    def __init__(self, jobs: Sequence[_Source], options: DecodeOptions, exe: str) -> None:
        self._n_jobs = len(jobs)
        self._jobs = iter(jobs)
        self._options = options
        self._exe = exe
        self._executor = _new_executor(options, self._n_jobs)
        self._restarts = 0
        # Enough decodes ahead to keep every worker busy while a row group is written,
        # within MAX_AHEAD_BYTES of PCM (a track of max_audio_s; 10 min without one).
        track_bytes = (options.max_audio_s or 600.0) * _PCM_BYTES_PER_S
        within = int(MAX_AHEAD_BYTES // track_bytes)
        self._max_ahead = max(2 * options.n_workers, min(max(16, 4 * options.n_workers), within))
        self._pending: deque[tuple[_Source, Future[DecodedWindows | DecodeFailure]]] = deque()
        self._top_up()

    def _submit(self, src: _Source) -> Future[DecodedWindows | DecodeFailure]:
        o = self._options
        return self._executor.submit(
            decode_job, o.decoder, src.track.path, o.rule, o.timeout_s, self._exe
        )

    def _top_up(self) -> None:
        while len(self._pending) < self._max_ahead:
            src = next(self._jobs, None)
            if src is None:
                return
            self._pending.append((src, self._submit(src)))

    def next(self, track_id: int) -> tuple[_Source, DecodedWindows | DecodeFailure]:
        src, fut = self._pending.popleft()
        assert src.track.track_id == track_id, (src.track.track_id, track_id)
        try:
            result = fut.result()
        except BrokenProcessPool:
            o = self._options
            result = decode_job("cli", src.track.path, o.rule, o.timeout_s, self._exe)
            self._restart()
        self._top_up()
        return src, result

    def _restart(self) -> None:
        """A fresh pool (threads after ``MAX_POOL_RESTARTS``) for the pending jobs."""
        while True:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._restarts += 1
            n_jobs = self._n_jobs if self._restarts <= MAX_POOL_RESTARTS else 0  # 0: threads
            self._executor = _new_executor(self._options, n_jobs)
            try:
                self._pending = deque((s, self._submit(s)) for s, _ in self._pending)
                return
            except BrokenProcessPool:
                continue

    def close(self) -> None:
        for _, fut in self._pending:
            fut.cancel()
        self._pending.clear()
        self._executor.shutdown(wait=True, cancel_futures=True)


class _OldRows:
    """Streams the rows (windows) of one track at a time out of the previous partition file,
    in track_id order."""

    def __init__(self, path: Path, batch_rows: int) -> None:
        self._path = path
        self._file = pq.ParquetFile(path)
        self._batches = self._file.iter_batches(batch_size=batch_rows)
        self._batch: pa.RecordBatch | None = None
        self._ids: list[int] = []
        self._pos = 0

    def _next_row_id(self) -> int | None:
        """The track of the next unread row (None at the end of the file)."""
        while self._pos >= len(self._ids):
            batch = next(self._batches, None)
            if batch is None:
                return None
            self._batch, self._ids, self._pos = batch, batch.column("track_id").to_pylist(), 0
        return self._ids[self._pos]

    def take(self, track_id: int) -> list[pa.RecordBatch]:
        """Every row of ``track_id`` (slices that may span the file's batches)."""
        out: list[pa.RecordBatch] = []
        while True:
            tid = self._next_row_id()
            if tid is None or (out and tid != track_id):
                break
            end = self._pos
            while end < len(self._ids) and self._ids[end] == tid:
                end += 1
            if tid == track_id:
                assert self._batch is not None
                out.append(self._batch.slice(self._pos, end - self._pos))
            self._pos = end
        if not out:
            raise RuntimeError(f"track {track_id} vanished from {self._path} while reading it")
        return out

    def close(self) -> None:
        self._file.close()


def _rows(schema: pa.Schema, src: _Source, windows: DecodedWindows) -> pa.RecordBatch:
    n = len(windows)
    return pcm_batch(
        [src.track.track_id] * n,
        windows.start_s,
        windows.pcm,
        [src.track.path] * n,
        [src.size] * n,
        [src.mtime] * n,
        schema=schema,
    )


def _failure(src: _Source, failure: DecodeFailure, window_offset_s: float) -> FailureRecord:
    return FailureRecord(
        track_id=src.track.track_id,
        path=str(src.track.path),
        reason=failure.reason,
        stderr_tail=failure.stderr_tail,
        failed_at=datetime.now(UTC).replace(tzinfo=None),
        detail=failure.detail,
        source_size=src.size,
        source_mtime=src.mtime,
        window_offset_s=window_offset_s,
    )


class _ProgressReporter:
    def __init__(
        self, total: int, to_decode: int, interval_s: float, callback: Callable[[Progress], None]
    ) -> None:
        self.total, self.to_decode = total, to_decode
        self.done = self.decoded = self.failures = 0
        self._throttle = Throttle(interval_s)
        self._callback = callback

    def step(self, *, decoded: bool, failed: bool) -> None:
        self.done += 1
        self.decoded += int(decoded)
        self.failures += int(failed)
        if self._throttle.due():
            self._callback(self.snapshot())

    def snapshot(self) -> Progress:
        return Progress(
            done=self.done,
            total=self.total,
            to_decode=self.to_decode,
            decoded=self.decoded,
            failures=self.failures,
            elapsed_s=self._throttle.elapsed_s,
        )


def _write_partition(
    plan: _Plan,
    decoder: _OrderedDecoder,
    options: DecodeOptions,
    progress: _ProgressReporter,
) -> PartitionSummary:
    schema = waveforms_schema(options.rule)
    summary = PartitionSummary(folder=plan.folder, path=plan.target, selected=len(plan.sources))
    old_rows = _OldRows(plan.target, options.row_group_rows) if plan.reuse_ids else None
    try:
        with atomic_path(plan.target, claim=True) as tmp:
            writer = PartitionWriter(tmp, schema, options.row_group_rows)
            try:
                for src in plan.sources:
                    tid = src.track.track_id
                    if tid in plan.reuse_ids:
                        assert old_rows is not None
                        rows = old_rows.take(tid)
                        summary.reused += 1
                        progress.step(decoded=False, failed=False)
                    elif tid in plan.carried_failures:
                        summary.failures.append(plan.carried_failures[tid])
                        progress.step(decoded=False, failed=True)
                        continue
                    else:
                        src, result = decoder.next(tid)
                        summary.decoded_ids.append(tid)
                        if isinstance(result, DecodeFailure):
                            summary.failures.append(_failure(src, result, options.window_offset_s))
                            progress.step(decoded=True, failed=True)
                            continue
                        rows = [_rows(schema, src, result)]
                        progress.step(decoded=True, failed=False)
                    summary.rows += 1
                    summary.windows += sum(r.num_rows for r in rows)
                    writer.add(rows)
            finally:
                writer.close()
            if old_rows is not None:
                old_rows.close()
                old_rows = None
    finally:
        if old_rows is not None:
            old_rows.close()
    summary.rewritten = True
    return summary


def _skip_partition(plan: _Plan, progress: _ProgressReporter) -> PartitionSummary:
    for _ in plan.sources:
        progress.step(decoded=False, failed=False)
    failures = sorted(plan.carried_failures.values(), key=lambda f: f.track_id)
    progress.failures += len(failures)
    return PartitionSummary(
        folder=plan.folder,
        path=plan.target,
        selected=len(plan.sources),
        rows=len(plan.reuse_ids),
        windows=plan.old_windows,
        reused=len(plan.reuse_ids),
        failures=failures,
    )


def _remove_stale_temps(waveforms_dir: Path, folder: str) -> None:
    """Temp files of runs killed mid-write (invisible to readers, but they take disk).

    A running writer claims its temp file (``atomic_path(claim=True)``): only files that
    no live process claims are removed, however young.
    """
    remove_orphaned_temps(waveforms_dir.glob(f".{folder}.parquet.*.tmp"))


def _check_folders(tracks_by_folder: Mapping[str, Sequence[SelectedTrack]]) -> None:
    """ValueError unless every key is a folder like '000' holding only its own tracks."""
    for folder, tracks in tracks_by_folder.items():
        if not folder.isdigit():
            raise ValueError(f"audio folder partition keys are digits like '000', got {folder!r}")
        wrong = [t.track_id for t in tracks if folder_of(t.track_id) != folder]
        if wrong:
            raise ValueError(f"tracks {wrong[:5]} do not belong to audio folder {folder!r}")


def build_waveforms(
    tracks_by_folder: Mapping[str, Sequence[SelectedTrack]],
    waveforms_dir: str | Path,
    duckdb_path: str | Path,
    options: DecodeOptions | None = None,
    progress: Callable[[Progress], None] | None = None,
) -> WaveformsSummary:
    """(Re)build the partition file of every folder in ``tracks_by_folder``.

    ``tracks_by_folder[folder]`` is that folder's part of the selection (possibly
    empty: the file then holds no rows). Failures are recorded, never raised;
    ffmpeg missing raises ``FfmpegNotFoundError`` before anything is touched.
    """
    options = options or DecodeOptions()
    started = time.monotonic()
    exe = ensure_ffmpeg()
    waveforms_dir = Path(waveforms_dir)
    duckdb_path = Path(duckdb_path)
    waveforms_dir.mkdir(parents=True, exist_ok=True)
    _check_folders(tracks_by_folder)
    plans = [
        _plan(
            folder,
            sorted(tracks, key=lambda t: t.track_id),
            waveforms_dir,
            duckdb_path,
            options.rule,
        )
        for folder, tracks in sorted(tracks_by_folder.items())
    ]
    jobs = [src for plan in plans if not plan.file_unchanged for src in plan.to_decode]
    reporter = _ProgressReporter(
        total=sum(len(p.sources) for p in plans),
        to_decode=len(jobs),
        interval_s=options.progress_interval_s,
        callback=progress or (lambda _: None),
    )
    summaries: list[PartitionSummary] = []
    decoder = _OrderedDecoder(jobs, options, exe)
    try:
        for plan in plans:
            _remove_stale_temps(waveforms_dir, plan.folder)
            if plan.file_unchanged:
                summary = _skip_partition(plan, reporter)
            else:
                summary = _write_partition(plan, decoder, options, reporter)
            failures_changed = not (plan.file_unchanged and plan.failures_unchanged)
            if failures_changed and (summary.failures or plan.old_failure_ids):
                replace_failures(duckdb_path, plan.folder, summary.failures)
            summaries.append(summary)
    finally:
        decoder.close()
    if progress is not None:
        progress(reporter.snapshot())
    return WaveformsSummary(partitions=summaries, seconds=time.monotonic() - started)


def remove_unselected_partitions(
    waveforms_dir: str | Path, duckdb_path: str | Path, selected_folders: Iterable[str]
) -> list[str]:
    """Delete partition files and failure rows of folders without any selected track.

    These hold only tracks that left the selection (for instance after lowering
    ``CLAP_MAX_TRACKS``). Returns the folders removed.
    """
    keep = set(selected_folders)
    removed: list[str] = []
    for folder, path in iter_partition_files(waveforms_dir):
        if folder not in keep:
            path.unlink(missing_ok=True)
            removed.append(folder)
    remove_failures_outside(duckdb_path, keep)
    return removed
