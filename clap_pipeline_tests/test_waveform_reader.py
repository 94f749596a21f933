"""The waveform reader streams: every window once, in order, one row group held at a time."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow as pa

from clap_pipeline.dataset import CLIP_SAMPLES
from clap_pipeline.waveform_reader import WaveformIndex, ordered_window_batches
from clap_pipeline_tests.search_fixtures import write_waveforms

ROW_GROUP_BYTES = 2 * CLIP_SAMPLES * 2  # the fixture's row groups: 2 windows of 16-bit PCM
TRACK_IDS = [*range(2, 14), *range(1000, 1009), *range(2000, 2003)]


def test_batches_cover_every_window_once_in_order_across_row_groups_and_files(
    tmp_path: Path,
) -> None:
    write_waveforms(tmp_path / "waveforms", tmp_path / "audio", TRACK_IDS)
    index = WaveformIndex.build(tmp_path / "waveforms")
    batches = list(ordered_window_batches(index, index.positions(TRACK_IDS, "all"), 5))
    assert [len(pos) for pos, _ in batches] == [5, 5, 5, 5, 4]  # batches span files
    positions = np.concatenate([pos for pos, _ in batches])
    assert index.track_ids[positions].tolist() == TRACK_IDS
    t = np.arange(CLIP_SAMPLES, dtype=np.float32) / 48_000
    for pos, waves in batches:
        assert waves.shape == (len(pos), CLIP_SAMPLES)
        for tid, wave in zip(index.track_ids[pos], waves, strict=True):
            expected = (0.3 * np.sin(2 * np.pi * (110.0 * (1 + int(tid) % 7)) * t)).astype(
                np.float32
            )
            # the fixture's own samples, through 16-bit PCM
            np.testing.assert_allclose(wave, expected, rtol=0, atol=0.5 / 32768 + 1e-7)


def test_memory_stays_within_a_few_row_groups_whatever_the_dataset_size(tmp_path: Path) -> None:
    """The stream holds one row group and the pending windows: its peak is a few row groups'
    float32 windows (one 0.96 MB each), not the dataset's 60, and no Arrow memory stays."""
    ids = list(range(2, 62))  # one file of 60 windows: 30 row groups
    write_waveforms(tmp_path / "waveforms", tmp_path / "audio", ids)
    index = WaveformIndex.build(tmp_path / "waveforms")
    baseline = pa.total_allocated_bytes()
    tracemalloc.start()
    seen = 0
    try:
        for pos, _ in ordered_window_batches(index, index.positions(ids, "all"), 3):
            seen += len(pos)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seen == len(ids)
    window_bytes = CLIP_SAMPLES * 4
    assert 3 * window_bytes <= peak <= 16 * window_bytes, f"peak {peak / 2**20:.1f} MB"
    assert pa.total_allocated_bytes() <= baseline + ROW_GROUP_BYTES
