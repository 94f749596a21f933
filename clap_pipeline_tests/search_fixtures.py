"""Small synthetic inputs for the search tests: a `tracks` table and a waveforms dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from clap_pipeline.dataset import (
    CLIP_SAMPLES,
    SAMPLE_RATE,
    audio_path,
    folder_of,
    partition_path,
    tracks_ddl,
    waveform_batch,
    write_partition,
)
from clap_pipeline.storage import duckdb_connection

GENRES = ["Folk", "Rock", "Electronic", "Hip-Hop", "Jazz"]


def track_rows(track_ids: list[int]) -> list[tuple]:
    """(track_id, title, artist, genre, license, duration, bit_rate) like FMA's columns."""
    return [
        (
            tid,
            f"Song {tid}",
            f"Artist {tid % 3}",
            GENRES[i % len(GENRES)],
            "CC BY 4.0",
            180 + tid,
            256_000 if i % 2 == 0 else -1,  # FMA writes integer gaps as -1
        )
        for i, tid in enumerate(track_ids)
    ]


def write_tracks_table(duckdb_path: Path, track_ids: list[int]) -> None:
    """The `tracks` columns search reads (the real table has all 52 FMA columns)."""
    columns = ["track_title", "artist_name", "track_genre_top", "track_license"]
    with duckdb_connection(duckdb_path) as con:
        con.execute(tracks_ddl([*columns, "track_duration", "track_bit_rate"]))
        con.executemany("INSERT INTO tracks VALUES (?, ?, ?, ?, ?, ?, ?)", track_rows(track_ids))


def unit_rows(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    m = rng.standard_normal((n, dim)).astype(np.float32)
    return m / np.linalg.norm(m, axis=1, keepdims=True)


def write_waveforms(waveforms_dir: Path, audio_dir: Path, track_ids: list[int]) -> None:
    """One Parquet file per audio folder, as the `waveforms` contract says (tones, 5 s)."""
    t = np.arange(CLIP_SAMPLES, dtype=np.float32) / SAMPLE_RATE
    by_folder: dict[str, list[int]] = {}
    for tid in sorted(track_ids):
        by_folder.setdefault(folder_of(tid), []).append(tid)
    waveforms_dir.mkdir(parents=True, exist_ok=True)
    for folder, ids in by_folder.items():
        waves = [
            (0.3 * np.sin(2 * np.pi * (110.0 * (1 + tid % 7)) * t)).astype(np.float32)
            for tid in ids
        ]
        rows = waveform_batch(
            ids,
            waves,
            source_paths=[audio_path(audio_dir, tid) for tid in ids],
            source_sizes=[960_000] * len(ids),
            source_mtimes=[0.0] * len(ids),
        )
        write_partition(partition_path(waveforms_dir, folder), rows, row_group_rows=2)
