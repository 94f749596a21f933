"""The data contract: layout rule in Python and SQL, the waveform writers and the one reader."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest

from clap_pipeline.dataset import (
    CLIP_SAMPLES,
    MAX_TRACK_ID,
    ROW_GROUP_ROWS,
    SAMPLE_RATE,
    audio_path,
    folder_id_range,
    folder_of,
    folder_sql,
    iter_partition_files,
    partition_path,
    pcm_batch,
    waveform_batch,
    waveforms_schema,
    write_partition,
)
from clap_pipeline.waveform_reader import WaveformContractError, WaveformRows
from clap_pipeline.windows import WindowRule, to_pcm16

IDS = [0, 2, 999, 1000, 1001, 54_321, 155_066, MAX_TRACK_ID]


def test_a_clip_is_five_seconds_at_48_khz() -> None:
    assert (SAMPLE_RATE, CLIP_SAMPLES) == (48_000, 240_000)


def test_folder_sql_is_folder_of() -> None:
    with duckdb.connect() as con:
        rows = con.execute(
            f"SELECT {folder_sql('t')} FROM unnest(?::BIGINT[]) AS u(t)", [IDS]
        ).fetchall()
    assert [r[0] for r in rows] == [folder_of(t) for t in IDS]
    assert [folder_of(t) for t in IDS] == ["000", "000", "000", "001", "001", "054", "155", "999"]


def test_folder_id_range_holds_exactly_the_folders_ids() -> None:
    for tid in IDS:
        assert tid in folder_id_range(folder_of(tid))
        assert audio_path("/fma", tid).parent.name == folder_of(tid)
    assert folder_id_range("001") == range(1000, 2000)
    with pytest.raises(ValueError, match="'x1'"):
        folder_id_range("x1")


def _clips(ids: list[int]) -> list[np.ndarray]:
    """Clip of track t: every sample a distinct 16-bit value (exact through PCM), so every
    sample can be checked."""
    steps = np.arange(CLIP_SAMPLES) * 7
    return [((steps + 13 * t) % 65536 - 32768).astype(np.float32) / 32768 for t in ids]


def _partition(path: Path, ids: list[int], row_group_rows: int = ROW_GROUP_ROWS) -> Path:
    rows = waveform_batch(
        ids,
        _clips(ids),
        source_paths=[audio_path("/fma", t) for t in ids],
        source_sizes=[100 + t for t in ids],
        source_mtimes=[1.5 + t for t in ids],
    )
    return write_partition(path, rows, row_group_rows=row_group_rows)


def test_written_partition_follows_the_schema_and_reads_back(tmp_path: Path) -> None:
    ids = list(range(1000, 1010))
    path = _partition(partition_path(tmp_path, "001"), ids, row_group_rows=4)
    pf = pq.ParquetFile(path)
    assert pf.schema_arrow.equals(waveforms_schema(WindowRule()), check_metadata=True)
    assert [pf.metadata.row_group(i).num_rows for i in range(pf.num_row_groups)] == [4, 4, 2]
    table = pf.read()
    assert table.column("n_samples_decoded").to_pylist() == [CLIP_SAMPLES] * 10
    assert table.column("source_path").to_pylist()[0] == "/fma/001/001000.mp3"
    # 16-bit PCM: half the bytes of float32
    assert {len(p) for p in table.column("pcm").to_pylist()} == {2 * CLIP_SAMPLES}
    rows = WaveformRows(table, path)
    assert rows.track_ids.tolist() == ids
    clips = rows.clips()
    assert clips.shape == (10, CLIP_SAMPLES) and clips.dtype == np.float32
    np.testing.assert_array_equal(clips, np.stack(_clips(ids)))
    clips[0, 0] = -1.0  # writable: the caller owns the array
    np.testing.assert_array_equal(rows.clips([7, 2]), np.stack(_clips([1007, 1002])))
    assert [folder for folder, _ in iter_partition_files(tmp_path)] == ["001"]


def test_reader_of_a_slice_reads_the_slices_rows(tmp_path: Path) -> None:
    """A sliced binary column keeps offsets into the whole data buffer."""
    table = pq.read_table(_partition(tmp_path / "000.parquet", [1, 2, 3, 4, 5]))
    rows = WaveformRows(table.slice(2, 2), "slice")
    assert rows.track_ids.tolist() == [3, 4]
    np.testing.assert_array_equal(rows.clips(), np.stack(_clips([3, 4])))


def test_a_partial_window_is_padded_and_a_broken_row_named(tmp_path: Path) -> None:
    clip = _clips([1])[0]
    pcm = [to_pcm16(clip), to_pcm16(clip[:1000]), b"\x00\x01\x02", to_pcm16(np.r_[clip, clip])]
    rows_batch = pcm_batch([1, 2, 3, 4], [0.0] * 4, pcm, ["a", "b", "c", "d"], [1] * 4, [0.0] * 4)
    path = write_partition(tmp_path / "000.parquet", rows_batch)
    rows = WaveformRows(pq.read_table(path), path)
    assert rows.bad_length_rows().tolist() == [2, 3]  # an odd byte count, more than 5 s
    assert rows.samples(1).size == 1000
    partial = rows.clips([1])[0]
    np.testing.assert_array_equal(partial[:1000], clip[:1000])
    assert not partial[1000:].any()  # padded with zeros
    with pytest.raises(
        WaveformContractError, match=r"000\.parquet: track_id 3 window at 0 s has 3 bytes"
    ):
        rows.clips()


def test_write_partition_refuses_unsorted_rows(tmp_path: Path) -> None:
    rows = waveform_batch(
        [5, 2], _clips([5, 2]), source_paths=["a", "b"], source_sizes=[1, 1], source_mtimes=[0, 0]
    )
    with pytest.raises(ValueError, match=r"sorted by \(track_id, start_s\)"):
        write_partition(tmp_path / "000.parquet", rows)
    twice = waveform_batch(
        [2, 2], _clips([2, 2]), source_paths=["a", "b"], source_sizes=[1, 1], source_mtimes=[0, 0]
    )
    with pytest.raises(ValueError, match="each window once"):
        write_partition(tmp_path / "000.parquet", twice)  # window 0 s of track 2 twice
    assert not list(tmp_path.iterdir())  # nothing written, no temp file left


def test_waveform_batch_keeps_the_given_decoded_counts() -> None:
    batch = waveform_batch(
        [7],
        _clips([7]),
        n_samples_decoded=[96_000],
        source_paths=[Path("/x/000/000007.mp3")],
        source_sizes=[4096],
        source_mtimes=[2.5],
    )
    assert batch.column("n_samples_decoded").to_pylist() == [96_000]
    assert batch.column("source_path").to_pylist() == ["/x/000/000007.mp3"]
    assert len(batch.column("pcm")[0].as_py()) == 2 * 96_000  # the real samples only
