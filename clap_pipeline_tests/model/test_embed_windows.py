"""The window-embeddings store: every window embedded once per model, incrementally."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from clap_pipeline.demo.training_set import write_waveforms_file
from clap_pipeline.model.clap import clip_embeddings, load_clap, model_fingerprint
from clap_pipeline.model.embed_windows import embed_windows
from clap_pipeline.model.features import features_for_model
from clap_pipeline.waveform_reader import WaveformIndex
from clap_pipeline.window_embeddings import read_store, store_file
from clap_pipeline.windows import CLIP_SAMPLES, WindowRule


def _waves(ids: list[int], seed: int = 0) -> tuple[list[int], list[float], list[np.ndarray]]:
    """1 + t % 3 windows per track; the last of each track 3 s long (padded when read)."""
    rng = np.random.default_rng(seed)
    rows: tuple[list[int], list[float], list[np.ndarray]] = ([], [], [])
    for t in ids:
        n = 1 + t % 3
        for k in range(n):
            length = 3 * 48_000 if k == n - 1 and n > 1 else CLIP_SAMPLES
            rows[0].append(t)
            rows[1].append(5.0 * k)
            rows[2].append((0.3 * rng.standard_normal(length)).astype(np.float32))
    return rows


def _write(root: Path, folder: str, ids: list[int], seed: int = 0) -> None:
    track_ids, starts, waves = _waves(ids, seed)
    write_waveforms_file(root / f"{folder}.parquet", track_ids, waves, row_group_rows=4,
                         start_s=starts)  # fmt: skip


@pytest.fixture
def waveforms(tmp_path: Path) -> Path:
    root = tmp_path / "waveforms"
    root.mkdir()
    _write(root, "000", [2, 3, 4, 5])
    _write(root, "001", [1000, 1001])
    return root


def test_every_window_once_then_only_what_changed(
    waveforms: Path, tmp_path: Path, tiny_model_dir: Path
) -> None:
    clap = load_clap(tiny_model_dir)
    store = tmp_path / "window_embeddings"
    messages: list[str] = []
    first = embed_windows(clap, waveforms, store, model_version="7", batch_size=3,
                          device="cpu", log=messages.append)  # fmt: skip
    index = WaveformIndex.build(waveforms)
    assert first.embedded == index.n_windows == 14 and first.reused == 0
    assert first.fingerprint == model_fingerprint(clap.model)
    windows = read_store(store, first.fingerprint)
    assert windows.tracks.tolist() == [2, 3, 4, 5, 1000, 1001]
    assert windows.windows_per_track.tolist() == [3, 1, 2, 3, 2, 3]
    np.testing.assert_allclose(windows.start_s, index.start_s)
    partial = index.n_samples < CLIP_SAMPLES  # the 3-s last windows end 3 s after they start
    np.testing.assert_allclose(windows.end_s[partial], windows.start_s[partial] + 3.0)
    # The same numbers as embedding the windows directly.
    with torch.inference_mode():
        direct = clip_embeddings(
            clap.model.eval(), features_for_model(clap, torch.device("cpu")),
            index.read_rows(0, 0, [0, 1, 2, 3])[1], torch.device("cpu"),
        )  # fmt: skip
    np.testing.assert_allclose(windows.embeddings[:4], direct, atol=1e-5)
    meta = pq.read_schema(store_file(store, first.fingerprint, "000")).metadata
    assert meta[b"clap.model.version"] == b"7"
    assert WindowRule.from_metadata(meta) == index.rule

    # Nothing new: nothing embedded, nothing rewritten.
    stamp = os.stat(store_file(store, first.fingerprint, "000")).st_mtime_ns
    again = embed_windows(clap, waveforms, store, batch_size=3, device="cpu")
    assert (again.embedded, again.reused, again.folders_written) == (0, 14, 0)
    assert os.stat(store_file(store, first.fingerprint, "000")).st_mtime_ns == stamp

    # A track whose file changed (other source mtime) and a new track: only they are embedded;
    # a track that left the waveforms leaves the store.
    track_ids, starts, waves = _waves([2, 3, 5, 7], seed=1)
    mtimes = [1.0e9 + t + (100 if t == 3 else 0) for t in track_ids]
    from clap_pipeline.dataset import audio_path, waveform_batch, write_partition

    write_partition(waveforms / "000.parquet", waveform_batch(
        track_ids, waves, start_s=starts, source_paths=[audio_path("", t) for t in track_ids],
        source_sizes=[1000 + t for t in track_ids], source_mtimes=mtimes,
    ), row_group_rows=4)  # fmt: skip
    changed = embed_windows(clap, waveforms, store, batch_size=3, device="cpu")
    assert changed.embedded == 1 + 2  # track 3 (one window), track 7 (two)
    assert read_store(store, first.fingerprint).tracks.tolist() == [2, 3, 5, 7, 1000, 1001]


def test_a_subset_of_tracks_and_ranks_sharing_the_folders(
    waveforms: Path, tmp_path: Path, tiny_model_dir: Path
) -> None:
    clap = load_clap(tiny_model_dir)
    store = tmp_path / "store"
    some = embed_windows(clap, waveforms, store, track_ids=[3, 1001], device="cpu")
    assert some.embedded == 1 + 3
    assert read_store(store, some.fingerprint).tracks.tolist() == [3, 1001]
    assert read_store(store, some.fingerprint, [1001]).tracks.tolist() == [1001]
    # Two ranks: each its share of the folders (rank 1 takes folder 001), no overlap.
    rank1 = embed_windows(clap, waveforms, store, device="cpu", rank=1, world_size=2)
    assert rank1.embedded == 2  # track 1000's windows; 1001's were there
    rank0 = embed_windows(clap, waveforms, store, device="cpu", rank=0, world_size=2)
    assert rank0.embedded == 3 + 2 + 3  # folder 000 but track 3
    assert len(read_store(store, some.fingerprint)) == 14
    with pytest.raises(FileNotFoundError, match="materialize `window_embeddings`"):
        read_store(store, "0" * 16)
