"""A window is read by offset: only its own bytes, whatever the row group holds, from the
layout the writer pins and from older files' pages alike; anything else reads row groups."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clap_pipeline.dataset import CLIP_SAMPLES, waveform_batch
from clap_pipeline.demo.training_set import write_waveforms_file
from clap_pipeline.pcm_offsets import locate, read_pcm
from clap_pipeline.waveform_reader import WaveformIndex

ROWS = 8  # windows per row group
SHORT = 150_000  # samples of each track's partial last window


def _windows(n_tracks: int = 4, per_track: int = 3) -> tuple[list[int], list[float], list]:
    """Track t's window k holds a ramp starting at (t + k / 8) / 64; the last window is partial."""
    ids, starts, waves = [], [], []
    for t in range(1, n_tracks + 1):
        for k in range(per_track):
            n = SHORT if k == per_track - 1 else CLIP_SAMPLES
            ids.append(t)
            starts.append(5.0 * k)
            waves.append((t + k / 8) / 64 + np.linspace(0, 0.1, n, dtype=np.float32))
    return ids, starts, waves


def _rchar() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


def _bytes_read(since: int = 0) -> int:
    """Bytes this process has passed through read system calls (pread included) since
    ``since`` (a value it returned), less what reading /proc/self/io itself counts."""
    first, second = _rchar(), _rchar()
    return first - (second - first) - since if since else second


@pytest.fixture(scope="module")
def waveforms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("waveforms")
    ids, starts, waves = _windows()
    write_waveforms_file(root / "000.parquet", ids, waves, row_group_rows=ROWS, start_s=starts)
    return root


def test_one_window_reads_its_own_bytes_not_its_row_group(waveforms: Path) -> None:
    index = WaveformIndex.build(waveforms)
    pos = index.positions([2], np.array([1]))  # track 2's second window: row 4 of group 0
    assert (index.group_of[pos].tolist(), index.row_of[pos].tolist()) == ([0], [4])
    window_bytes = 2 * CLIP_SAMPLES
    index.read_windows(0, 0, pos)  # locates the row group: reads its page header once
    before = _bytes_read()
    (window,) = index.read_windows(0, 0, pos)
    direct = _bytes_read(before)
    assert window_bytes <= direct <= window_bytes + 64  # the window, its length prefix
    by_group = replace(index, direct_reads=False)
    before = _bytes_read()
    (expected,) = by_group.read_windows(0, 0, pos)
    assert _bytes_read(before) >= ROWS * window_bytes * 0.9  # the row group, whole
    np.testing.assert_array_equal(window, expected)
    assert window[0] == pytest.approx((2 + 1 / 8) / 64, abs=1 / 32768)


def test_windows_read_by_offset_equal_the_row_groups_in_any_order(waveforms: Path) -> None:
    index = WaveformIndex.build(waveforms)
    by_group = replace(index, direct_reads=False)
    for (file_index, group), pos in index.groups_of(range(index.n_windows)).items():
        for wanted in (pos, pos[::-1], pos[1::3]):  # whole, reversed, lone rows
            got = index.read_windows(file_index, group, wanted)
            expected = by_group.read_windows(file_index, group, wanted)
            assert all(np.array_equal(a, b) for a, b in zip(got, expected, strict=True))
            np.testing.assert_array_equal(
                index.read_positions(file_index, group, wanted),
                by_group.read_positions(file_index, group, wanted),
            )
    n_samples = index.n_samples[:ROWS]
    assert locate(index.files[0], index.pcm_chunks[0, 0], n_samples) is not None
    # The writer pins one page per row group: the chunk is its values and one page header.
    values = int((2 * n_samples + 4).sum())
    assert 0 < index.pcm_chunks[0, 0].size - values < 64


def _rewrite(src: Path, dst: Path, **options: object) -> None:
    dst.parent.mkdir()
    pq.write_table(pq.read_table(src), dst, row_group_size=ROWS, **options)  # type: ignore[arg-type]


def test_older_pages_are_located_and_other_layouts_read_whole_row_groups(
    waveforms: Path, tmp_path: Path
) -> None:
    src = waveforms / "000.parquet"
    pages = tmp_path / "pages" / "000.parquet"  # pages of ~2 windows, as older writes made
    _rewrite(src, pages, compression="none", use_dictionary=False, data_page_size=600_000)
    zstd = tmp_path / "zstd" / "000.parquet"
    _rewrite(src, zstd, compression="zstd", use_dictionary=False)
    reference = WaveformIndex.build(waveforms)
    everything = np.arange(reference.n_windows)
    expected = np.concatenate(
        [reference.read_positions(f, g, p) for (f, g), p in reference.groups_of(everything).items()]
    )
    for path, located in ((pages, True), (zstd, False)):
        index = WaveformIndex.build(path.parent)
        chunk = index.pcm_chunks[0, 0]
        assert (locate(path, chunk, index.n_samples[:ROWS]) is not None) is located
        got = [index.read_windows(f, g, p) for (f, g), p in index.groups_of(everything).items()]
        np.testing.assert_array_equal(np.stack([w for ws in got for w in ws]), expected)


def test_a_length_prefix_that_does_not_match_is_not_read(waveforms: Path) -> None:
    index = WaveformIndex.build(waveforms)
    n_samples = index.n_samples[:ROWS]
    offsets = locate(index.files[0], index.pcm_chunks[0, 0], n_samples)
    assert offsets is not None
    rows = np.array([1, 2])
    pcm = read_pcm(index.files[0], offsets, n_samples, rows)
    assert pcm is not None and [len(p) for p in pcm] == [CLIP_SAMPLES, SHORT]
    assert read_pcm(index.files[0], offsets + 2, n_samples, rows) is None  # moved file
    assert locate(index.files[0], index.pcm_chunks[0, 0], n_samples + 1) is None  # sizes


def test_a_row_that_breaks_the_contract_is_read_as_before(tmp_path: Path) -> None:
    pcm_rows = waveform_batch(
        [1, 1], [np.zeros(CLIP_SAMPLES, np.float32)] * 2, start_s=[0.0, 5.0],
        source_paths=["a", "a"], source_sizes=[1, 1], source_mtimes=[0.0, 0.0],
    )  # fmt: skip
    empty = pa.array([pcm_rows.column(2)[0].as_py(), b""], pa.binary())
    table = pa.Table.from_batches([pcm_rows]).set_column(2, pcm_rows.schema.field(2), empty)
    table = table.set_column(3, pcm_rows.schema.field(3), pa.array([CLIP_SAMPLES, 0], pa.int64()))
    (tmp_path / "w").mkdir()
    pq.write_table(table, tmp_path / "w" / "000.parquet", compression="none")
    index = WaveformIndex.build(tmp_path / "w")
    assert locate(index.files[0], index.pcm_chunks[0, 0], index.n_samples) is None
    (window,) = index.read_windows(0, 0, np.array([0]))  # the good row reads
    assert window.shape == (CLIP_SAMPLES,)
    with pytest.raises(Exception, match="track_id 1 window at 5 s has 0 bytes"):
        index.read_windows(0, 0, np.array([1]))
