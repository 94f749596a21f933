"""The waveform stream behind `track_embeddings`: every row once, in order, one row group held."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from clap_pipeline.dataset import CLIP_SAMPLES
from clap_pipeline.search.embeddings import iter_waveform_batches
from clap_pipeline_tests.search_fixtures import write_waveforms

# Three folders (files) of 12, 9 and 3 tracks, 2 rows per row group (fixture).
TRACK_IDS = [*range(2, 14), *range(1000, 1009), *range(2000, 2003)]
ROW_GROUP_BYTES = 2 * CLIP_SAMPLES * 4


def test_batches_cover_every_row_once_in_order_across_row_groups_and_files(
    tmp_path: Path,
) -> None:
    write_waveforms(tmp_path / "waveforms", tmp_path / "audio", TRACK_IDS)
    batches = list(iter_waveform_batches(tmp_path / "waveforms", batch_size=5))
    assert [len(b.track_ids) for b in batches] == [5, 5, 5, 5, 4]  # batches span files
    assert np.concatenate([b.track_ids for b in batches]).tolist() == TRACK_IDS
    t = np.arange(CLIP_SAMPLES, dtype=np.float32) / 48_000
    for batch in batches:
        assert batch.waveforms.shape == (len(batch.track_ids), CLIP_SAMPLES)
        for tid, wave in zip(batch.track_ids, batch.waveforms, strict=True):
            expected = (0.3 * np.sin(2 * np.pi * (110.0 * (1 + int(tid) % 7)) * t)).astype(
                np.float32
            )
            # the fixture's own samples, through 16-bit PCM
            np.testing.assert_allclose(wave, expected, rtol=0, atol=0.5 / 32768 + 1e-7)


def test_arrow_memory_stays_within_a_few_row_groups_whatever_the_dataset_size(
    tmp_path: Path,
) -> None:
    """The stream holds the current row group and the pending rows (<= 5 of the 30 row groups)."""
    ids = list(range(2, 62))  # one file of 60 clips: 30 row groups, 58 MB
    write_waveforms(tmp_path / "waveforms", tmp_path / "audio", ids)
    baseline = pa.total_allocated_bytes()
    peak, seen = 0, 0
    for batch in iter_waveform_batches(tmp_path / "waveforms", batch_size=3):
        peak = max(peak, pa.total_allocated_bytes() - baseline)
        seen += len(batch.track_ids)
    assert seen == len(ids)
    assert 0 < peak <= 5 * ROW_GROUP_BYTES, f"peak {peak / 2**20:.1f} MB of Arrow memory"
