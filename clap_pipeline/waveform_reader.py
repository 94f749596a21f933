"""The one reader of the `waveforms/` dataset: its windows back as float32, where each lives.

- :class:`WaveformRows`: the ``pcm`` column of some rows (16-bit PCM, one window per row,
  ``windows.py``) as float32 windows zero-padded to ``CLIP_SAMPLES``;
- :class:`WaveformIndex`: where each window of each track lives (file, row group, row),
  read a row group at a time;
- :func:`ordered_window_batches` (some windows in dataset order) and
  :func:`ordered_batches` (the first window of some tracks), for training's validation,
  evaluation and the embeddings.

Errors name the file and track (:class:`dataset.TrainingDataError`,
:class:`WaveformContractError`). Imports no torch.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from clap_pipeline.dataset import (
    CLIP_SAMPLES,
    READ_COLUMNS,
    WAVEFORMS_FORMAT_VERSION,
    TrainingDataError,
)
from clap_pipeline.pcm_offsets import PcmChunk, locate, read_pcm
from clap_pipeline.windows import PCM_SCALE, WindowRule, from_pcm16


class WaveformContractError(ValueError):
    """A waveforms row breaks the contract (not 1..CLIP_SAMPLES 16-bit samples); names the file."""


class WaveformRows:
    """The ``track_id``, ``start_s`` and ``pcm`` columns of some waveforms rows, as numpy.

    The one reader of the PCM column: the dataset build's health scan, training and the
    embedding of the collection all go through it. The PCM bytes are not copied until a
    window is asked for.
    """

    def __init__(self, rows: pa.Table | pa.RecordBatch, origin: str | Path) -> None:
        self.origin = str(origin)
        column = rows.column("pcm")
        if isinstance(column, pa.ChunkedArray):
            column = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
        # A sliced binary array keeps its offsets into the unsliced data buffer.
        offsets = np.frombuffer(column.buffers()[1], dtype=np.int32)
        self._offsets = offsets[column.offset : column.offset + len(column) + 1].astype(np.int64)
        data = column.buffers()[2]
        self._bytes = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, "u1")
        self.track_ids = np.asarray(rows.column("track_id").to_numpy(), dtype=np.int64)
        self.start_s = np.asarray(rows.column("start_s").to_numpy(), dtype=np.float64)
        self.lengths = np.diff(self._offsets) // 2  # samples

    def __len__(self) -> int:
        return len(self.track_ids)

    def samples(self, row: int) -> np.ndarray:
        """Row ``row``'s real samples as float32 (not padded)."""
        lo, hi = int(self._offsets[row]), int(self._offsets[row + 1])
        pcm = self._bytes[lo : lo + (hi - lo) // 2 * 2].view("<i2")
        return pcm.astype(np.float32) * np.float32(1 / PCM_SCALE)

    def bad_length_rows(self) -> np.ndarray:
        """Positions of the rows without 1 to ``CLIP_SAMPLES`` whole 16-bit samples."""
        n_bytes = np.diff(self._offsets)
        return np.flatnonzero((n_bytes % 2 != 0) | (n_bytes == 0) | (n_bytes > 2 * CLIP_SAMPLES))

    def clips(self, rows: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """A writable float32 array (n, CLIP_SAMPLES) of ``rows`` (default: all, in order),
        each window zero-padded after its real samples.

        Raises :class:`WaveformContractError` naming the file and track when a requested
        row does not hold 1 to ``CLIP_SAMPLES`` 16-bit samples.
        """
        picked = np.arange(len(self)) if rows is None else np.asarray(rows, dtype=np.int64)
        bad = np.intersect1d(picked, self.bad_length_rows())
        if bad.size:
            i = int(bad[0])
            raise WaveformContractError(
                f"{self.origin}: track_id {self.track_ids[i]} window at {self.start_s[i]:g} s has "
                f"{np.diff(self._offsets)[i]} bytes in `pcm`, expected an even number up to "
                f"{2 * CLIP_SAMPLES} (16-bit samples, 48 kHz x 5 s); re-materialize `waveforms`"
            )
        out = np.empty((picked.size, CLIP_SAMPLES), dtype=np.float32)
        for k, row in enumerate(picked.tolist()):
            self.window(row, out=out[k])
        return out

    def window(self, row: int, out: np.ndarray | None = None) -> np.ndarray:
        """Row ``row`` as CLIP_SAMPLES float32, zero-padded (unchecked: see :meth:`clips`)."""
        lo, hi = int(self._offsets[row]), int(self._offsets[row + 1])
        return from_pcm16(self._bytes[lo:hi].view("<i2"), out=out)

    def first_windows(self, previous_track: int | None = None) -> np.ndarray:
        """Positions of the rows that are a track's first window (rows in dataset order;
        ``previous_track``: the track of the row just before these, from an earlier read)."""
        before = np.r_[-1 if previous_track is None else previous_track, self.track_ids[:-1]]
        return np.flatnonzero(self.track_ids != before)


def _checked_rule(
    path: Path, pf: pq.ParquetFile, rule: WindowRule | None, first_file: Path
) -> WindowRule:
    """The window rule of one waveforms file: TrainingDataError when the file lacks the
    window columns or was cut by another rule than ``rule`` (that of ``first_file``)."""
    if not {"track_id", "start_s", "pcm", "n_samples_decoded"} <= set(pf.schema_arrow.names):
        raise TrainingDataError(
            f"{path} lacks track_id/start_s/pcm columns (written by an older version: "
            "re-materialize `waveforms`)"
        )
    try:
        file_rule = WindowRule.from_metadata(pf.schema_arrow.metadata)
    except ValueError as exc:
        raise TrainingDataError(f"{path}: {exc}") from None
    if rule is not None and file_rule != rule:
        raise TrainingDataError(
            f"{path} holds windows of {file_rule}, {first_file} of {rule}: "
            "re-materialize `waveforms` with one window rule"
        )
    return file_rule


def _track_locations(
    ids: np.ndarray, starts: np.ndarray, file_of: np.ndarray, files: list[Path]
) -> dict[int, tuple[int, int]]:
    """track -> (first position, number of windows); TrainingDataError when a track's
    windows are split between files or not sorted by start_s."""
    new_track = (ids[1:] != ids[:-1]) | (file_of[1:] != file_of[:-1])  # a file starts anew
    firsts = np.flatnonzero(np.r_[True, new_track]) if len(ids) else ids[:0]
    counts = np.diff(np.r_[firsts, len(ids)])
    locations: dict[int, tuple[int, int]] = {}
    for first, count in zip(firsts.tolist(), counts.tolist(), strict=True):
        tid = int(ids[first])
        if tid in locations:
            other = files[int(file_of[locations[tid][0]])]
            raise TrainingDataError(
                f"track_id {tid} appears twice in the waveforms: {other} and "
                f"{files[int(file_of[first])]}"
            )
        window_starts = starts[first : first + count]
        if (np.diff(window_starts) <= 0).any():
            raise TrainingDataError(
                f"{files[int(file_of[first])]}: the windows of track_id {tid} are not "
                "sorted by start_s"
            )
        locations[tid] = (first, count)
    return locations


@dataclass
class WaveformIndex:
    """Where each window lives in the Parquet dataset (file, row group, row), track by track.

    Window ``p`` (a *position*: 0 .. n_windows-1, in dataset order) is row
    ``rows[p]`` of row group ``groups[p]`` of ``files[files_of[p]]``; ``locations`` maps a
    track to (its first position, its number of windows): a track's windows are
    consecutive, first window first.

    Windows are read by offset, only their own bytes (``pcm_offsets.py``), where a row
    group's layout allows it (``direct_reads``), else by reading their row group.
    """

    root: Path
    files: list[Path]
    track_ids: np.ndarray  # int64 per position
    start_s: np.ndarray  # float64 per position
    file_of: np.ndarray  # int32 per position
    group_of: np.ndarray  # int32 per position
    row_of: np.ndarray  # int32 per position
    n_samples: np.ndarray  # int32 per position: the window's real samples (<= CLIP_SAMPLES)
    locations: dict[int, tuple[int, int]]
    data_version: str
    rule: WindowRule
    pcm_chunks: dict[tuple[int, int], PcmChunk] = field(default_factory=dict, repr=False)
    direct_reads: bool = True  # False: always read whole row groups (the benchmark's before)
    # (file, row group) -> each row's PCM offset, None where the layout is not one PLAIN page
    _offsets: dict[tuple[int, int], np.ndarray | None] = field(
        default_factory=dict, repr=False, compare=False
    )

    @classmethod
    def build(cls, root: Path) -> WaveformIndex:
        root = Path(root)
        if not root.is_dir():
            raise TrainingDataError(
                f"{root} does not exist: materialize the `waveforms` asset first"
            )
        # pyarrow's discovery skips hidden ("."/"_") temp files of in-flight writes.
        files = sorted(Path(f) for f in ds.dataset(root, format="parquet").files)
        columns: dict[str, list[np.ndarray]] = {k: [] for k in ("id", "start", "n", "f", "g", "r")}
        version = hashlib.sha256(WAVEFORMS_FORMAT_VERSION.encode())
        rule: WindowRule | None = None
        chunks: dict[tuple[int, int], PcmChunk] = {}
        for file_index, path in enumerate(files):
            pf = pq.ParquetFile(path)
            rule = _checked_rule(path, pf, rule, files[0])
            names = set(pf.schema_arrow.names)
            provenance = [c for c in ("source_size", "source_mtime") if c in names]
            version.update(f"{path.name}:{path.stat().st_size}".encode())
            pcm_column = pf.schema_arrow.get_field_index("pcm")
            for rg in range(pf.num_row_groups):
                chunks[file_index, rg] = PcmChunk.of(pf.metadata, rg, pcm_column)
                small = pf.read_row_group(
                    rg, columns=["track_id", "start_s", "n_samples_decoded", *provenance]
                )
                n = small.num_rows
                columns["id"].append(small.column("track_id").to_numpy().astype(np.int64))
                columns["start"].append(small.column("start_s").to_numpy().astype(np.float64))
                columns["n"].append(small.column("n_samples_decoded").to_numpy().astype(np.int32))
                columns["f"].append(np.full(n, file_index, np.int32))
                columns["g"].append(np.full(n, rg, np.int32))
                columns["r"].append(np.arange(n, dtype=np.int32))
                for name in ("track_id", "start_s", *provenance):
                    version.update(small.column(name).to_numpy().tobytes())
        cat = {k: np.concatenate(v) if v else np.zeros(0) for k, v in columns.items()}
        ids, starts = cat["id"].astype(np.int64), cat["start"].astype(np.float64)
        locations = _track_locations(ids, starts, cat["f"], files)
        return cls(
            root=root,
            files=files,
            track_ids=ids,
            start_s=starts,
            file_of=cat["f"].astype(np.int32),
            group_of=cat["g"].astype(np.int32),
            row_of=cat["r"].astype(np.int32),
            n_samples=cat["n"].astype(np.int32),
            locations=locations,
            data_version=version.hexdigest()[:16],
            rule=rule or WindowRule(),
            pcm_chunks=chunks,
        )

    @property
    def n_windows(self) -> int:
        return len(self.track_ids)

    def positions(
        self, track_ids: Iterable[int], windows: str | np.ndarray = "first"
    ) -> np.ndarray:
        """Positions of some windows of ``track_ids``: ``"first"``, ``"all"``, or one window
        index per track (clipped to the track's last window), in the tracks' order."""
        tracks = [int(t) for t in track_ids]
        if isinstance(windows, str) and windows not in ("first", "all"):
            raise ValueError(f"windows must be 'first', 'all' or indices, got {windows!r}")
        if isinstance(windows, str) and windows == "all":
            spans = [self.locations[t] for t in tracks]
            return np.concatenate(
                [np.arange(s, s + c) for s, c in spans] or [np.zeros(0, np.int64)]
            ).astype(np.int64)
        firsts = np.array([self.locations[t][0] for t in tracks], dtype=np.int64)
        if isinstance(windows, str):
            return firsts
        counts = np.array([self.locations[t][1] for t in tracks], dtype=np.int64)
        return firsts + np.minimum(np.asarray(windows, dtype=np.int64), counts - 1)

    def windows_per_track(self, track_ids: Iterable[int]) -> np.ndarray:
        return np.array([self.locations[int(t)][1] for t in track_ids], dtype=np.int64)

    def read_rows(
        self, file_index: int, row_group: int, rows: Sequence[int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """(track_ids, float32 windows (n, 240000)) of the given rows of one row group."""
        path = self.files[file_index]
        table = pq.ParquetFile(path).read_row_group(row_group, columns=READ_COLUMNS)
        rows_arr = np.asarray(rows, dtype=np.int64)
        waveforms = WaveformRows(table, path)
        try:
            return waveforms.track_ids[rows_arr], waveforms.clips(rows_arr)
        except WaveformContractError as exc:
            raise TrainingDataError(str(exc)) from exc

    def groups_of(self, positions: Iterable[int]) -> dict[tuple[int, int], np.ndarray]:
        """The positions to read per (file, row group), in dataset order."""
        pos = np.unique(np.asarray(list(positions), dtype=np.int64))
        groups: dict[tuple[int, int], np.ndarray] = {}
        if not pos.size:
            return groups
        keys = self.file_of[pos].astype(np.int64) << 32 | self.group_of[pos].astype(np.int64)
        cuts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1], True])
        for lo, hi in itertools.pairwise(cuts.tolist()):
            groups[int(self.file_of[pos[lo]]), int(self.group_of[pos[lo]])] = pos[lo:hi]
        return groups

    def _pcm(
        self, file_index: int, row_group: int, positions: np.ndarray
    ) -> list[np.ndarray] | None:
        """The int16 samples at ``positions`` (all in that row group) read by offset, only
        their bytes; ``None`` where the row group must be read whole."""
        key = (file_index, row_group)
        if not self.direct_reads or key not in self.pcm_chunks or not len(positions):
            return None
        positions = np.asarray(positions, dtype=np.int64)
        first = int(positions[0] - self.row_of[positions[0]])
        n_samples = self.n_samples[first : first + self.pcm_chunks[key].rows]
        if key not in self._offsets:
            contract = bool(((n_samples > 0) & (n_samples <= CLIP_SAMPLES)).all())
            path, chunk = self.files[file_index], self.pcm_chunks[key]
            self._offsets[key] = locate(path, chunk, n_samples) if contract else None
        offsets = self._offsets[key]
        if offsets is None:
            return None
        rows = self.row_of[positions].astype(np.int64)
        order = np.argsort(rows, kind="stable")
        pcm = read_pcm(self.files[file_index], offsets, n_samples, rows[order])
        if pcm is None:
            return None
        back = np.empty_like(order)
        back[order] = np.arange(len(order))
        return [pcm[k] for k in back.tolist()]

    def read_positions(self, file_index: int, row_group: int, positions: np.ndarray) -> np.ndarray:
        """Float32 windows (n, 240000) at ``positions`` (all in that file's row group)."""
        pcm = self._pcm(file_index, row_group, positions)
        if pcm is None:
            return self.read_rows(file_index, row_group, self.row_of[positions])[1]
        out = np.empty((len(pcm), CLIP_SAMPLES), dtype=np.float32)
        for k, samples in enumerate(pcm):
            from_pcm16(samples, out=out[k])
        return out

    def read_windows(
        self, file_index: int, row_group: int, positions: np.ndarray
    ) -> list[np.ndarray]:
        """The windows at ``positions`` as separate float32 arrays (a shuffle buffer frees
        each on its own)."""
        pcm = self._pcm(file_index, row_group, positions)
        if pcm is not None:
            return [from_pcm16(samples) for samples in pcm]
        path = self.files[file_index]
        table = pq.ParquetFile(path).read_row_group(row_group, columns=READ_COLUMNS)
        rows = WaveformRows(table, path)
        wanted = self.row_of[positions].astype(np.int64)
        bad = np.intersect1d(wanted, rows.bad_length_rows())
        if bad.size:
            try:
                rows.clips(bad[:1])
            except WaveformContractError as exc:
                raise TrainingDataError(str(exc)) from exc
        return [rows.window(int(r)) for r in wanted]


def ordered_window_batches(
    index: WaveformIndex, positions: Iterable[int], batch_size: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(positions, windows) of ``positions`` in dataset order, ``batch_size`` at a time."""
    buf_pos: list[np.ndarray] = []
    buf_waves: list[np.ndarray] = []
    n = 0
    for (file_index, row_group), pos in index.groups_of(positions).items():
        buf_pos.append(pos)
        buf_waves.append(index.read_positions(file_index, row_group, pos))
        n += len(pos)
        while n >= batch_size:
            all_pos, all_waves = np.concatenate(buf_pos), np.concatenate(buf_waves)
            yield all_pos[:batch_size], all_waves[:batch_size]
            buf_pos, buf_waves = [all_pos[batch_size:]], [all_waves[batch_size:]]
            n -= batch_size
    if n:
        yield np.concatenate(buf_pos), np.concatenate(buf_waves)


def ordered_batches(
    index: WaveformIndex, track_ids: Sequence[int], batch_size: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The first window of each of ``track_ids`` in dataset order (= track_id order), last
    batch partial: (track_ids, windows)."""
    for pos, waves in ordered_window_batches(index, index.positions(sorted(track_ids)), batch_size):
        yield index.track_ids[pos], waves


def count_tracks(waveforms_dir: str | Path) -> int:
    """Tracks with windows in the waveforms dataset (FileNotFoundError naming the asset)."""
    waveforms_dir = Path(waveforms_dir)
    if not waveforms_dir.is_dir() or not any(waveforms_dir.glob("*.parquet")):
        raise FileNotFoundError(
            f"no waveforms dataset at {waveforms_dir}: materialize the `waveforms` asset first"
        )
    table = ds.dataset(waveforms_dir, format="parquet").to_table(columns=["track_id"])
    return len(np.unique(table.column("track_id").to_numpy()))
