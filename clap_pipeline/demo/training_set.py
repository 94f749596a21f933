"""A small synthetic training set whose audio depends on its text (tests, benchmarks).

Four "genres" with very different sounds (low drone, high whistle, noise bursts,
click track); prompts name the genre. A short fine-tune can learn the pairing,
an untrained model cannot, so tests can check that training really helps.
Files follow the data contract (``clap_pipeline.dataset``): ``prompts.parquet``,
``waveforms/NNN.parquet`` and DuckDB ``tracks`` with ``set_split``; no MP3 is made.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from clap_pipeline.dataset import (
    CLIP_SAMPLES,
    PROMPTS_SCHEMA,
    SAMPLE_RATE,
    audio_path,
    folder_of,
    partition_path,
    tracks_ddl,
    waveform_batch,
    write_partition,
    write_prompts,
)
from clap_pipeline.storage import duckdb_connection

SR, SAMPLES = SAMPLE_RATE, CLIP_SAMPLES
GENRES = ("drone", "whistle", "noise", "clicks")
# Short prompts where the genre word dominates: the tiny text tower starts collapsed
# (all texts ~ the same embedding) and must separate them within a few steps.
TEMPLATES = (
    "{g}",
    "{g} music",
    "{g}, {g}",
    None,  # a template that does not apply to the track (null rendering)
    "pure {g}",
)


def genre_audio(genre: str, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(SAMPLES, dtype=np.float64) / SR
    if genre == "drone":
        f = rng.uniform(60, 90)
        x = sum(np.sin(2 * np.pi * f * h * t) / h for h in (1, 2, 3))
    elif genre == "whistle":
        f = rng.uniform(5000, 7000)
        x = np.sin(2 * np.pi * f * t + 3 * np.sin(2 * np.pi * rng.uniform(3, 6) * t))
    elif genre == "noise":
        gate = (np.sin(2 * np.pi * rng.uniform(1, 2) * t) > 0).astype(np.float64)
        x = rng.standard_normal(SAMPLES) * gate
    else:  # clicks
        x = np.zeros(SAMPLES)
        period = int(SR / rng.uniform(4, 8))
        x[::period] = 1.0
        x = np.convolve(x, np.hanning(64), mode="same")
    x = x / (np.abs(x).max() + 1e-9) * rng.uniform(0.3, 0.6)
    return x.astype(np.float32)


@dataclass(frozen=True)
class SyntheticData:
    data_dir: Path
    genre_of: dict[int, str]
    split_of: dict[int, str]

    def ids(self, split: str) -> list[int]:
        return sorted(t for t, s in self.split_of.items() if s == split)


def write_waveforms_file(
    path: Path,
    track_ids: list[int],
    waves: list[np.ndarray],
    row_group_rows: int = 16,
    start_s: list[float] | None = None,
) -> None:
    """One `waveforms/NNN.parquet` file of synthetic windows (lengths are not checked here):
    one per track, or those at ``start_s`` (``track_ids`` repeated, one entry per window)."""
    rows = waveform_batch(
        track_ids,
        waves,
        start_s=start_s,
        source_paths=[audio_path("", t) for t in track_ids],
        source_sizes=[1000 + t for t in track_ids],
        source_mtimes=[1.0e9 + t for t in track_ids],
    )
    write_partition(path, rows, row_group_rows=row_group_rows)


def write_training_dataset(
    data_dir: Path,
    *,
    per_genre: dict[str, int] | None = None,
    seed: int = 0,
) -> SyntheticData:
    """Write prompts.parquet, waveforms/ and clap.duckdb under ``data_dir``.

    ``per_genre`` = clips per genre in each FMA split (default 8 train, 4 validation,
    1 test: 52 clips). Track ids span two audio folders (two Parquet files).
    """
    per_genre = per_genre or {"training": 8, "validation": 4, "test": 1}
    rng = np.random.default_rng(seed)
    rows = []
    for split, n in per_genre.items():
        for genre in GENRES:
            rows.extend((split, genre) for _ in range(n))
    order = rng.permutation(len(rows))
    # ids 2, 5, 8, ... crossing 1000 so there are two folders "000" and "001"
    ids = [2 + 37 * i for i in range(len(rows))]
    genre_of, split_of = {}, {}
    for tid, k in zip(ids, order.tolist(), strict=True):
        split_of[tid], genre_of[tid] = rows[k]

    data_dir.mkdir(parents=True, exist_ok=True)
    _write_genre_prompts(data_dir / "prompts.parquet", ids, genre_of)
    wave_dir = data_dir / "waveforms"
    wave_dir.mkdir(exist_ok=True)
    for folder in sorted({folder_of(tid) for tid in ids}):
        folder_ids = [t for t in ids if folder_of(t) == folder]
        waves = [genre_audio(genre_of[t], np.random.default_rng([seed, t])) for t in folder_ids]
        write_waveforms_file(partition_path(wave_dir, folder), folder_ids, waves)

    with duckdb_connection(data_dir / "clap.duckdb") as con:
        con.execute(tracks_ddl(["set_split"]))
        con.executemany("INSERT INTO tracks VALUES (?, ?)", [[t, split_of[t]] for t in ids])
    fma_to_ours = {"training": "train", "validation": "validation", "test": "test"}
    return SyntheticData(
        data_dir=data_dir,
        genre_of=genre_of,
        split_of={t: fma_to_ours[s] for t, s in split_of.items()},
    )


def _write_genre_prompts(path: Path, ids: list[int], genre_of: dict[int, str]) -> None:
    """prompts.parquet: each track's genre in every template, one of them its prompt."""
    template_ids, prompts, renderings = [], [], []
    for tid in ids:
        rendered = [t.format(g=genre_of[tid]) if t else None for t in TEMPLATES]
        template = [0, 1, 2, 4][tid % 4]
        template_ids.append(template)
        prompts.append(rendered[template])
        renderings.append(rendered)
    write_prompts(
        pa.table(
            {
                "track_id": ids,
                "prompt": prompts,
                "template_id": template_ids,
                "renderings": renderings,
            },
            schema=PROMPTS_SCHEMA,
        ),
        path,
    )
