"""Small synthetic inputs for the search tests: a `tracks` table and a waveforms dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from clap_pipeline.dataset import audio_path, folder_of
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
    with duckdb_connection(duckdb_path) as con:
        con.execute(
            """CREATE OR REPLACE TABLE tracks (
                track_id BIGINT PRIMARY KEY, track_title VARCHAR, artist_name VARCHAR,
                track_genre_top VARCHAR, track_license VARCHAR, track_duration BIGINT,
                track_bit_rate BIGINT)"""
        )
        con.executemany("INSERT INTO tracks VALUES (?, ?, ?, ?, ?, ?, ?)", track_rows(track_ids))


def unit_rows(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    m = rng.standard_normal((n, dim)).astype(np.float32)
    return m / np.linalg.norm(m, axis=1, keepdims=True)


def write_waveforms(waveforms_dir: Path, audio_dir: Path, track_ids: list[int]) -> None:
    """One Parquet file per audio folder, as the `waveforms` contract says (tones, 5 s)."""
    t = np.arange(240_000, dtype=np.float32) / 48_000
    by_folder: dict[str, list[int]] = {}
    for tid in sorted(track_ids):
        by_folder.setdefault(folder_of(tid), []).append(tid)
    waveforms_dir.mkdir(parents=True, exist_ok=True)
    for folder, ids in by_folder.items():
        waves = [
            (0.3 * np.sin(2 * np.pi * (110.0 * (1 + tid % 7)) * t)).astype(np.float32)
            for tid in ids
        ]
        table = pa.table(
            {
                "track_id": pa.array(ids, pa.int64()),
                "input_values": pa.array(waves, pa.list_(pa.float32())),
                "n_samples_decoded": pa.array([240_000] * len(ids), pa.int64()),
                "source_path": pa.array([str(audio_path(audio_dir, tid)) for tid in ids]),
                "source_size": pa.array([960_000] * len(ids), pa.int64()),
                "source_mtime": pa.array([0.0] * len(ids), pa.float64()),
            }
        )
        pq.write_table(table, waveforms_dir / f"{folder}.parquet", row_group_size=2)
