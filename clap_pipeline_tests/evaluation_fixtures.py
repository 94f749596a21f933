"""A small synthetic setup for the evaluation tests, following the project's data contracts.

What training leaves behind, built by hand: ``prompts.parquet``, ``waveforms/NNN.parquet``
(two audio folders, small row groups), DuckDB ``tracks`` with ``track_genre_top`` and ``artist_id``,
three tiny CLAPs (the "pre-trained" model and two epoch checkpoints; epoch 2 was
not kept), ``reports/training.json`` and a finished MLflow run in a SQLite store.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from clap_pipeline import run_names, tracking
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
from clap_pipeline.metrics import recall_key
from clap_pipeline.model.tiny import save_tiny_model
from clap_pipeline.sections import Section
from clap_pipeline.storage import duckdb_connection
from clap_pipeline.windows import WindowRule, cut_windows

SR, SAMPLES = SAMPLE_RATE, CLIP_SAMPLES
GENRES = ("Rock", "Folk", "Electronic", "Hip-Hop")
BASE_HZ = {"Rock": 110.0, "Folk": 330.0, "Electronic": 1760.0, "Hip-Hop": 55.0}
MOODS = ("calm", "loud", "dark", "bright", "slow", "fast")
# 12 test, 6 validation, 6 train; ids cross 1000 so there are two waveforms files.
TEST_IDS = [3, 10, 25, 40, 58, 77, 96, 120, 999, 1001, 1004, 1010]
VALIDATION_IDS = [5, 33, 61, 150, 1002, 1020]
TRAIN_IDS = [2, 7, 12, 70, 1003, 1030]
NO_GENRE = {77, 1020}  # tracks without genre_top (skipped by genre classification)
NO_ARTIST = 40  # a test track without artist_id
WISE_FT_ALPHA = 0.5


@dataclass(frozen=True)
class EvalSetup:
    data_dir: Path
    tracking_uri: str
    run_id: str
    model_source: Path
    checkpoints: dict[int, Path | None]  # epoch -> kept checkpoint (None = not kept)
    wise_ft: Path  # WiSE-FT's weights at WISE_FT_ALPHA (what training registered)
    best_epoch: int
    genre_of: dict[int, str | None]
    artist_of: dict[int, int | None]
    prompt_of: dict[int, str]

    @property
    def manifest_path(self) -> Path:
        return self.data_dir / "reports" / "training.json"

    @property
    def duckdb_path(self) -> Path:
        return self.data_dir / "clap.duckdb"


def clip(track_id: int, genre: str | None, window: int = 0) -> np.ndarray:
    """A 5-s tone whose pitch follows the genre, with a per-track detune and noise; a later
    window of the track is a fifth higher with other noise."""
    rng = np.random.default_rng([track_id, window])
    t = np.arange(SAMPLES, dtype=np.float64) / SR
    f = BASE_HZ.get(genre or "", 700.0) * (1 + 0.05 * (track_id % 5)) * 1.5**window
    x = np.sin(2 * np.pi * f * t) + 0.1 * rng.standard_normal(SAMPLES)
    return (0.4 * x / np.abs(x).max()).astype(np.float32)


def windows_of(track_id: int) -> int:
    """Windows of a track: 1 to 3 (every window of a whole track is stored)."""
    return 1 + track_id % 3


def write_waveforms(waveforms_dir: Path, genre_of: dict[int, str | None]) -> None:
    clips = {t: [clip(t, genre_of[t], k) for k in range(windows_of(t))] for t in genre_of}
    write_window_rows(waveforms_dir, clips)


def write_window_rows(waveforms_dir: Path, clips: dict[int, list[np.ndarray]]) -> None:
    """One waveforms file per audio folder: each track's windows, 5 s apart (the folder's
    files replaced)."""
    by_folder: dict[str, list[int]] = {}
    for tid in sorted(clips):
        by_folder.setdefault(folder_of(tid), []).append(tid)
    for folder, ids in by_folder.items():
        windows = [(t, k) for t in ids for k in range(len(clips[t]))]
        rows = waveform_batch(
            [t for t, _ in windows],
            [clips[t][k] for t, k in windows],
            start_s=[5.0 * k for _, k in windows],
            source_paths=[audio_path("", t) for t, _ in windows],
            source_sizes=[10_000 + t for t, _ in windows],
            source_mtimes=[1.7e9 + t for t, _ in windows],
        )
        write_partition(partition_path(waveforms_dir, folder), rows, row_group_rows=4)


def write_sectioned_tracks(
    setup: EvalSetup, track_ids: list[int], seconds: float = 10.0
) -> list[Section]:
    """``track_ids`` become demo tracks whose halves are two genres (``demo/sections.py``,
    the synth renderer), cut into 5-s windows; returns their sections (what ``demo-data``
    writes to ``sections.csv``). The other tracks keep their windows."""
    from clap_pipeline.demo.plan import plan_dataset
    from clap_pipeline.demo.sections import sectioned_clip
    from clap_pipeline.demo.synth import SR as DEMO_SR

    ids = sorted(track_ids)
    plans = [p for p in plan_dataset(2 * len(ids), seed=5) if p.defect is None][: len(ids)]
    clips = {t: [clip(t, g, k) for k in range(windows_of(t))] for t, g in setup.genre_of.items()}
    sections: list[Section] = []
    for tid, plan in zip(ids, plans, strict=True):
        pcm, halves = sectioned_clip(plan.params, seconds, tid)
        mono = pcm.astype(np.float32).mean(axis=1) / 32768
        at = np.arange(round(len(mono) * SR / DEMO_SR)) * DEMO_SR / SR  # resampled to 48 kHz
        samples = np.interp(at, np.arange(len(mono)), mono).astype(np.float32)
        clips[tid] = cut_windows(samples, WindowRule())[1]
        sections += halves
    write_window_rows(setup.data_dir / "waveforms", clips)
    return sections


def _interpolated(zero_shot: Path, fine_tuned: Path, target: Path) -> Path:
    """WiSE-FT's theta(WISE_FT_ALPHA) of two checkpoints, as training saves it."""
    from clap_pipeline.model.clap import load_clap, save_checkpoint
    from clap_pipeline.training.wise_ft import interpolate

    tuned = load_clap(fine_tuned)
    zero = load_clap(zero_shot).model.state_dict()
    tuned.model.load_state_dict(interpolate(zero, tuned.model.state_dict(), WISE_FT_ALPHA))
    return save_checkpoint(tuned.model, tuned.processor, target)


def build_evaluation_setup(root: Path, tiny_model_dir: Path) -> EvalSetup:
    data_dir = root / "data"
    all_ids = sorted(TEST_IDS + VALIDATION_IDS + TRAIN_IDS)
    genre_of = {
        t: (None if t in NO_GENRE else GENRES[i % len(GENRES)]) for i, t in enumerate(all_ids)
    }
    # Artists of 2-3 tracks of one genre each (as a label's catalogue); one track has none.
    artist_of = {
        t: None if t == NO_ARTIST else i % 4 + 4 * (i // 10) for i, t in enumerate(all_ids)
    }
    prompt_of = {
        t: f"{MOODS[i % len(MOODS)]} {(genre_of[t] or 'experimental').lower()} track number {i}"
        for i, t in enumerate(all_ids)
    }
    data_dir.mkdir(parents=True)
    write_prompts(
        pa.table(
            {
                "track_id": all_ids,
                "prompt": [prompt_of[t] for t in all_ids],
                "template_id": [0] * len(all_ids),
                "renderings": [[prompt_of[t], None, None, None, None] for t in all_ids],
            },
            schema=PROMPTS_SCHEMA,
        ),
        data_dir / "prompts.parquet",
    )
    write_waveforms(data_dir / "waveforms", genre_of)
    split_of = {t: "test" for t in TEST_IDS} | {t: "validation" for t in VALIDATION_IDS}
    with duckdb_connection(data_dir / "clap.duckdb") as con:
        con.execute(tracks_ddl(["track_genre_top", "set_split", "artist_id"]))
        con.executemany(
            "INSERT INTO tracks VALUES (?, ?, ?, ?)",
            [[t, genre_of[t], split_of.get(t, "training"), artist_of[t]] for t in all_ids],
        )

    # The pre-trained model and what "training" kept: epoch 1, epoch 2 (deleted), epoch 3 = best.
    model_source = root / "models" / "pretrained"
    shutil.copytree(tiny_model_dir, model_source)
    tracking_uri = f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"
    client = tracking.client(tracking_uri)
    run = client.create_run(
        tracking.configure(tracking_uri, "evaluation-test"),
        tags={
            run_names.SOURCE_TAG: run_names.TRAINING_SOURCE
        },  # a training run, as training tags it
    )
    run_id = run.info.run_id
    client.log_metric(run_id, run_names.val_metric(recall_key(5)), 0.5, step=1)
    client.set_terminated(run_id)
    ckpt_root = data_dir / "checkpoints" / run_id
    checkpoints = {
        1: save_tiny_model(ckpt_root / "epoch-1", seed=1),
        2: None,
        3: save_tiny_model(ckpt_root / "epoch-3", seed=2),
    }
    wise_ft = _interpolated(model_source, checkpoints[3], ckpt_root / "wise-ft")
    manifest = {
        "mlflow_run_id": run_id,
        "model_source": str(model_source),
        "device": "cpu",
        "best_epoch": 3,
        "best_checkpoint": str(checkpoints[3]),
        "epochs": [
            {
                "epoch": e,
                "checkpoint": str(p) if p else None,
                "train_loss": 1.0 / e,
                "val_loss": 1.2 / e,
            }
            for e, p in checkpoints.items()
        ],
        "splits": {"train": TRAIN_IDS, "validation": VALIDATION_IDS, "test": TEST_IDS},
        "registered_model": {"name": "clap-fma", "version": "1", "alias": "champion"},
        "config": {"batch_size": 4},
        "wise_ft": {
            "alpha": WISE_FT_ALPHA,
            "checkpoint": str(wise_ft),
            "grid": [
                {"alpha": a, "val_loss": 1.0, "metrics": {"text_to_audio_recall_at_5": 0.5}}
                for a in (0.0, WISE_FT_ALPHA, 1.0)
            ],
        },
    }
    (data_dir / "reports").mkdir()
    (data_dir / "reports" / "training.json").write_text(json.dumps(manifest, indent=1))
    return EvalSetup(
        data_dir=data_dir,
        tracking_uri=tracking_uri,
        run_id=run_id,
        model_source=model_source,
        checkpoints=checkpoints,
        wise_ft=wise_ft,
        best_epoch=3,
        genre_of=genre_of,
        artist_of=artist_of,
        prompt_of=prompt_of,
    )
