"""A small synthetic training set whose audio depends on its text (for the training tests).

Four "genres" with very different sounds (low drone, high whistle, noise bursts,
click track); prompts name the genre. A short fine-tune can learn the pairing,
an untrained model cannot, so tests can check that training really helps.
Files follow the project's contracts: ``prompts.parquet``, ``waveforms/NNN.parquet``
(row groups <= 64 rows) and DuckDB ``tracks`` with ``set_split``.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from clap_pipeline.dataset import (
    PROMPTS_SCHEMA,
    audio_path,
    folder_of,
    partition_path,
    tracks_ddl,
    waveform_batch,
    write_partition,
    write_prompts,
)
from clap_pipeline.storage import duckdb_connection
from clap_pipeline.training.loop import TrainInputs

SR = 48_000
SAMPLES = 240_000
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


def write_waveforms_file(
    path: Path, track_ids: list[int], waves: list[np.ndarray], row_group_size: int = 16
) -> None:
    """One `waveforms/NNN.parquet` file following the contract (lengths are not checked here)."""
    rows = waveform_batch(
        track_ids,
        waves,
        source_paths=[audio_path("", t) for t in track_ids],
        source_sizes=[1000 + t for t in track_ids],
        source_mtimes=[1.0e9 + t for t in track_ids],
    )
    write_partition(path, rows, row_group_rows=row_group_size)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny-model steps run 3-6x faster on one thread on a shared 2-core machine
    (measured: 6.6 s vs 23-41 s for the same 3-epoch fine-tune); restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


_EMPTY_STORE: Path | None = None


def training_inputs(
    data_dir: Path, model_dir: Path, store: str, out: Path, experiment: str = "training-tests"
) -> TrainInputs:
    """Where a test training reads (a written dataset) and writes (``out``)."""
    return TrainInputs(
        model_source=str(model_dir),
        prompts_path=data_dir / "prompts.parquet",
        waveforms_dir=data_dir / "waveforms",
        duckdb_path=data_dir / "clap.duckdb",
        checkpoints_dir=out / "checkpoints",
        manifest_path=out / "reports" / "training.json",
        tracking_uri=store,
        experiment=experiment,
    )


def mlflow_store(directory: Path) -> str:
    """A fresh MLflow SQLite store in ``directory``; returns its tracking URI.

    Creating the schema takes seconds (migrations), so it is done once per test
    process and the empty database file is copied for each store.
    """
    global _EMPTY_STORE
    if _EMPTY_STORE is None:
        from mlflow import MlflowClient

        folder = Path(tempfile.mkdtemp(prefix="mlflow-template-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        template = folder / "mlflow.db"
        MlflowClient(tracking_uri=f"sqlite:///{template}").search_experiments()
        _EMPTY_STORE = template
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_EMPTY_STORE, directory / "mlflow.db")
    return f"sqlite:///{directory / 'mlflow.db'}"


@dataclass(frozen=True)
class SyntheticData:
    data_dir: Path
    genre_of: dict[int, str]
    split_of: dict[int, str]

    def ids(self, split: str) -> list[int]:
        return sorted(t for t, s in self.split_of.items() if s == split)


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
        data_dir / "prompts.parquet",
    )

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
