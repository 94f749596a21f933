"""Embed every window of the waveforms once per model: fill the window-embeddings store.

``<store_dir>/<model fingerprint>/NNN.parquet`` (``window_embeddings.py``'s contract), one
file per `waveforms` partition. :func:`embed_windows` embeds only what the store lacks:
a track whose windows are there, from the same file (size and mtime) and window rule,
is not embedded again, whichever stage asked first (the `window_embeddings` asset,
evaluation, the search index, the feedback evaluation). Rows of tracks that left the
waveforms are dropped when their folder is rewritten.

Under torchrun each rank takes its share of the folders (``rank::world_size``, each
written by one rank only) and the ranks meet at a barrier before anyone reads.
Memory: one batch of windows, one folder's embeddings (N x d floats).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from clap_pipeline.config import Settings
from clap_pipeline.dataset import SAMPLE_RATE
from clap_pipeline.knobs import DEVICE, EMBED_BATCH_SIZE
from clap_pipeline.model.clap import (
    LoadedClap,
    clip_embeddings,
    load_clap,
    model_fingerprint,
    pick_device,
)
from clap_pipeline.model.features import features_for_model
from clap_pipeline.progress import ProgressLog
from clap_pipeline.reporting import Log
from clap_pipeline.training_report import TrainingReport
from clap_pipeline.waveform_reader import WaveformIndex, ordered_window_batches
from clap_pipeline.window_embeddings import (
    store_file,
    window_embeddings_schema,
    window_rows,
    write_store_file,
)


@dataclass
class EmbedSummary:
    """What :func:`embed_windows` did for one model."""

    fingerprint: str
    embedded: int = 0  # windows embedded now
    reused: int = 0  # windows found in the store
    folders_written: int = 0
    seconds: float = 0.0

    @property
    def windows_per_s(self) -> float:
        return self.embedded / self.seconds if self.seconds > 0 else 0.0


def _sources(index: WaveformIndex, file_index: int) -> dict[int, tuple[int, float]]:
    """(source_size, source_mtime) of each track of one waveforms file."""
    table = pq.read_table(
        index.files[file_index], columns=["track_id", "source_size", "source_mtime"]
    )
    return {
        int(t): (int(size), float(mtime))
        for t, size, mtime in zip(
            table.column("track_id").to_pylist(),
            table.column("source_size").to_pylist(),
            table.column("source_mtime").to_pylist(),
            strict=True,
        )
    }


# What makes stored rows reusable: the format, the model's weights and the window rule
# (not the version label, which a model gets when it is registered).
_SAME = (b"clap.embeddings.version", b"clap.model.fingerprint", b"clap.window.")


def _stored(path: Path, schema: pa.Schema) -> pa.Table | None:
    """The store file's rows, None when absent or written for another rule or format."""
    if not path.exists():
        return None
    try:
        stored = pq.read_table(path)
    except (OSError, pa.ArrowException):
        return None

    def key(s: pa.Schema) -> dict[bytes, bytes]:
        return {k: v for k, v in (s.metadata or {}).items() if k.startswith(_SAME)}

    same = stored.schema.equals(schema) and key(stored.schema) == key(schema)
    return stored.cast(schema) if same else None


@dataclass
class _FolderPlan:
    """One store file to (re)write: its waveforms' sources, the rows it keeps, what to embed."""

    target: Path
    sources: dict[int, tuple[int, float]]
    stored: pa.Table | None
    keep_ids: set[int]
    todo: list[int]


def _plan_folders(
    index: WaveformIndex,
    store_dir: str | Path,
    schema: pa.Schema,
    wanted: set[int] | None,
    shard: tuple[int, int],
    summary: EmbedSummary,
) -> list[_FolderPlan]:
    """The store files of this rank (``shard`` = (rank, world size)) of the model
    ``summary.fingerprint`` that lack or hold stale rows; rows kept count as ``summary.reused``."""
    rank, world_size = shard
    plans = []
    for file_index in range(rank, len(index.files), world_size):
        folder = index.files[file_index].stem
        target = store_file(store_dir, summary.fingerprint, folder)
        sources = _sources(index, file_index)
        stored = _stored(target, schema)
        keep_ids: set[int] = set()
        if stored is not None:
            ids = stored.column("track_id").to_numpy()
            keys = zip(
                ids.tolist(),
                stored.column("source_size").to_pylist(),
                stored.column("source_mtime").to_pylist(),
                strict=True,
            )
            keep_ids = {t for t, size, mtime in keys if sources.get(t) == (size, mtime)}
        todo = sorted((set(sources) if wanted is None else set(sources) & wanted) - keep_ids)
        stale = stored is not None and set(stored.column("track_id").to_pylist()) - keep_ids
        if todo or stale or stored is None:
            plans.append(_FolderPlan(target, sources, stored, keep_ids, todo))
        summary.reused += (
            0
            if stored is None
            else sum(1 for t in stored.column("track_id").to_pylist() if t in keep_ids)
        )
    return plans


def _write_folder(
    plan: _FolderPlan, index: WaveformIndex, schema: pa.Schema, pos: np.ndarray, embs: np.ndarray
) -> None:
    """The store file: the kept rows, then the windows at ``pos`` with embeddings ``embs``."""
    ids = index.track_ids[pos]
    new = window_rows(
        schema,
        ids,
        index.start_s[pos],
        index.start_s[pos] + index.n_samples[pos] / SAMPLE_RATE,
        embs,
        np.array([plan.sources[int(t)][0] for t in ids], np.int64),
        np.array([plan.sources[int(t)][1] for t in ids], np.float64),
    )
    if plan.stored is not None and plan.keep_ids:
        keep = pa.array(sorted(plan.keep_ids), pa.int64())
        kept = plan.stored.filter(pc.is_in(plan.stored.column("track_id"), value_set=keep))
        new = pa.concat_tables([kept, new])
    write_store_file(plan.target, new)


def embed_windows(
    clap: LoadedClap,
    waveforms_dir: str | Path,
    store_dir: str | Path,
    *,
    model_version: str = "",
    track_ids: Iterable[int] | None = None,
    batch_size: int = EMBED_BATCH_SIZE.default,
    device: str = DEVICE.default,
    log: Log | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> EmbedSummary:
    """Make sure the store holds every window of ``track_ids`` (default: every track of the
    waveforms) embedded by ``clap``; embed what it lacks. Returns what was done."""
    started = time.perf_counter()
    index = WaveformIndex.build(Path(waveforms_dir))
    fingerprint = model_fingerprint(clap.model)
    summary = EmbedSummary(fingerprint=fingerprint)
    wanted = None if track_ids is None else {int(t) for t in track_ids}
    dev = pick_device(device)
    model = clap.model.to(dev).eval()
    features = features_for_model(clap, dev)
    dim = int(model.config.projection_dim)
    schema = window_embeddings_schema(
        dim,
        model_version=model_version,
        model_fingerprint=fingerprint,
        model_source=clap.source,
        rule=index.rule,
    )
    plans = _plan_folders(index, store_dir, schema, wanted, (rank, world_size), summary)
    total = sum(len(index.positions(plan.todo, "all")) for plan in plans)
    progress = ProgressLog(f"window embeddings ({fingerprint})", total, log, every_s=15.0)
    with torch.inference_mode():
        for plan in plans:
            positions = index.positions(plan.todo, "all")
            embs = [np.zeros((0, dim), np.float32)]
            order: list[np.ndarray] = []
            for pos, waves in ordered_window_batches(index, positions, batch_size):
                embs.append(clip_embeddings(model, features, waves, dev))
                order.append(pos)
                summary.embedded += len(pos)
                progress.update(summary.embedded)
            pos = np.concatenate(order) if order else np.zeros(0, np.int64)
            _write_folder(plan, index, schema, pos, np.concatenate(embs))
            summary.folders_written += 1
    if world_size > 1 and torch.distributed.is_initialized():
        torch.distributed.barrier()  # every folder written before anyone reads the store
    summary.seconds = time.perf_counter() - started
    return summary


def registered_weights(manifest_path: Path) -> tuple[str, str]:
    """(weights folder, registered version) of the model the last training registered
    (WiSE-FT's interpolation when it kept one, else the best epoch), from training.json."""
    report = TrainingReport.read(manifest_path)
    source = report.wise_ft.checkpoint if report.wise_ft is not None else report.best_checkpoint
    if not source:
        raise FileNotFoundError(f"{manifest_path} names no checkpoint: materialize `clap_model`")
    version = report.registered_model.version if report.registered_model else ""
    return source, version


def embed_trained_model(
    settings: Settings,
    *,
    batch_size: int = EMBED_BATCH_SIZE.default,
    device: str = DEVICE.default,
    log: Log | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> dict[str, object]:
    """The `window_embeddings` asset: every window of every track embedded once by the model
    training registered (what evaluation and, once it is the champion, search read)."""
    source, version = registered_weights(settings.training_manifest_path)
    done = embed_windows(
        load_clap(source),
        settings.waveforms_dir,
        settings.window_embeddings_dir,
        model_version=version,
        batch_size=batch_size,
        device=device,
        log=log,
        rank=rank,
        world_size=world_size,
    )
    return {
        "model_source": Path(source),
        "model_version": version,
        "model_fingerprint": done.fingerprint,
        "windows": done.embedded + done.reused,
        "embedded": done.embedded,
        "reused": done.reused,
        "folders_written": done.folders_written,
        "seconds": round(done.seconds, 2),
        "windows_per_s": round(done.windows_per_s, 2),
        "path": settings.window_embeddings_dir / done.fingerprint,
    }
