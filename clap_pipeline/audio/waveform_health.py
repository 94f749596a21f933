"""Does the `waveforms` dataset match the selection and ``decode_failures``? (the asset checks)

Reads partition files one row group at a time, so memory does not grow with the dataset.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from clap_pipeline.audio.decode_failures import read_failures
from clap_pipeline.dataset import (
    CLIP_SAMPLES,
    READ_COLUMNS,
    ROW_GROUP_ROWS,
    iter_partition_files,
    sorted_windows,
)
from clap_pipeline.selection import SelectedTrack
from clap_pipeline.waveform_reader import WaveformRows


@dataclass
class DatasetHealth:
    """What the asset checks look at, over some partitions (memory: one row group)."""

    folders: list[str]
    selected: int = 0
    failures: int = 0  # recorded failures of selected tracks
    failure_reasons: dict[str, int] = field(default_factory=dict)
    rows: int = 0  # tracks with windows
    windows: int = 0
    missing_partitions: list[str] = field(default_factory=list)
    absent_ids: list[int] = field(default_factory=list)  # selected, not failed, no row
    unexpected_ids: list[int] = field(default_factory=list)  # rows that should not be there
    # not sorted by (track_id, start_s), a window twice or a track's windows apart
    unsorted_partitions: list[str] = field(default_factory=list)
    bad_length_ids: list[int] = field(default_factory=list)
    max_row_group_rows: int = 0

    def row_problems(self) -> list[str]:
        problems = []
        if self.missing_partitions:
            problems.append(f"partitions not materialized: {_ids(self.missing_partitions)}")
        if self.rows != self.selected - self.failures:
            problems.append(
                f"{self.rows} rows != {self.selected} selected - {self.failures} failures"
            )
        if self.absent_ids:
            problems.append(f"selected tracks without row or failure: {_ids(self.absent_ids)}")
        if self.unexpected_ids:
            problems.append(f"rows of unselected or failed tracks: {_ids(self.unexpected_ids)}")
        return problems

    def sample_problems(self) -> list[str]:
        problems = []
        if self.bad_length_ids:
            problems.append(
                f"windows without 1 to {CLIP_SAMPLES} 16-bit samples (tracks): "
                f"{_ids(self.bad_length_ids)}"
            )
        if self.unsorted_partitions:
            problems.append(
                "partitions not sorted by (track_id, start_s) with each window once: "
                f"{_ids(self.unsorted_partitions)}"
            )
        if self.max_row_group_rows > ROW_GROUP_ROWS:
            problems.append(f"row groups of {self.max_row_group_rows} rows (> {ROW_GROUP_ROWS})")
        return problems


def _ids(values: Sequence[object], limit: int = 10) -> str:
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (f" ... ({len(values)} in all)" if len(values) > limit else "")


def dataset_health(
    waveforms_dir: str | Path,
    duckdb_path: str | Path,
    selected_by_folder: Mapping[str, Sequence[SelectedTrack]],
    folders: Sequence[str] | None = None,
    scan_samples: bool = False,
) -> DatasetHealth:
    """Compare partition files with the selection and ``decode_failures``.

    ``folders`` None means the whole dataset: every folder with selected tracks
    or a partition file. ``scan_samples`` also reads every window (row group by
    row group) to check its length.
    """
    present = dict(iter_partition_files(waveforms_dir))
    if folders is None:
        folders = sorted(set(selected_by_folder) | set(present))
    failed: dict[int, str] = {f.track_id: f.reason for f in read_failures(duckdb_path)}
    health = DatasetHealth(folders=list(folders))
    for folder in health.folders:
        tracks = selected_by_folder.get(folder, [])
        selected_ids = {t.track_id for t in tracks}
        failed_ids = {tid for tid in selected_ids if tid in failed}
        health.selected += len(selected_ids)
        health.failures += len(failed_ids)
        for tid in sorted(failed_ids):
            health.failure_reasons[failed[tid]] = health.failure_reasons.get(failed[tid], 0) + 1
        path = present.get(folder)
        if path is None:
            if selected_ids:
                health.missing_partitions.append(folder)
            continue
        if scan_samples:
            _scan_partition(path, health)
        table = pq.read_table(path, columns=["track_id", "start_s"])
        window_ids = table.column("track_id").to_numpy()
        if not sorted_windows(window_ids, table.column("start_s").to_numpy()):
            health.unsorted_partitions.append(folder)
        ids = np.unique(window_ids).tolist()
        health.rows += len(ids)
        health.windows += len(window_ids)
        expected = selected_ids - failed_ids
        health.absent_ids += sorted(expected - set(ids))
        health.unexpected_ids += sorted(set(ids) - expected)
    health.failure_reasons = dict(sorted(health.failure_reasons.items()))
    return health


def _scan_partition(path: Path, health: DatasetHealth) -> None:
    with pq.ParquetFile(path) as pf:
        for i in range(pf.num_row_groups):
            rows = WaveformRows(pf.read_row_group(i, columns=READ_COLUMNS), path)
            health.max_row_group_rows = max(health.max_row_group_rows, len(rows))
            bad = rows.track_ids[rows.bad_length_rows()].tolist()
            health.bad_length_ids += [t for t in bad if t not in health.bad_length_ids]
