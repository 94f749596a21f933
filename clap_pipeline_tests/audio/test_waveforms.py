"""The waveforms Parquet dataset: contents, failures table, incremental updates, atomicity."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from clap_pipeline.audio import ffmpeg_bin
from clap_pipeline.audio.decode_failures import read_failures
from clap_pipeline.audio.waveform_health import dataset_health
from clap_pipeline.audio.waveforms import (
    DecodeOptions,
    Progress,
    WaveformsSummary,
    build_waveforms,
    group_by_folder,
    remove_unselected_partitions,
)
from clap_pipeline.config import REPO_ROOT
from clap_pipeline.dataset import CLIP_SAMPLES
from clap_pipeline.selection import select_tracks
from clap_pipeline_tests.audio_fixtures import AudioFactory, make_tracks_db

# track_id -> kind of clip; folders 000 and 001. Track 7 is in `tracks` but has no file.
LIBRARY = {
    2: "cbr256",
    3: "vbr",
    5: "mono",
    10: "short2s",
    20: "wav",
    26: "empty",
    30: "random",
    42: "truncated",
    1000: "22k",
    1001: "silent",
    1002: "cbr128",
    1005: "tiny",
}
EXPECTED_FAILURES = {
    26: "empty",
    30: "not_audio",
    42: "truncated",
    1001: "silent",
    1005: "too_short",
}
ROWS_PER_GROUP = 3  # small row groups so that streaming crosses several of them


@pytest.fixture(scope="session")
def audio(ffmpeg: str, tmp_path_factory: pytest.TempPathFactory) -> AudioFactory:
    return AudioFactory.shared(ffmpeg, tmp_path_factory)


@dataclass
class Setup:
    root: Path
    audio_dir: Path
    db: Path
    out: Path

    def select(self, max_tracks: int = 100) -> dict:
        return group_by_folder(select_tracks(self.db, self.audio_dir, max_tracks))

    def build(self, max_tracks: int = 100, **options) -> WaveformsSummary:
        options.setdefault("row_group_rows", ROWS_PER_GROUP)
        selected = self.select(max_tracks)
        summary = build_waveforms(selected, self.out, self.db, DecodeOptions(**options))
        remove_unselected_partitions(self.out, self.db, selected)
        return summary

    def table(self) -> pa.Table:
        table = ds.dataset(self.out, format="parquet").to_table()
        return table.sort_by([("track_id", "ascending"), ("start_s", "ascending")])

    def tracks(self) -> list[int]:
        """The tracks with windows, in order."""
        return sorted(set(self.table().column("track_id").to_pylist()))

    def failures(self) -> dict[int, str]:
        return {f.track_id: f.reason for f in read_failures(self.db)}


def make_setup(root: Path, audio: AudioFactory, audio_dir: Path | None = None) -> Setup:
    """A tracks table of LIBRARY + track 7; the audio library is made unless given."""
    if audio_dir is None:
        audio_dir = root / "audio"
        audio.make_library(audio_dir, LIBRARY)
    db = root / "clap.duckdb"
    make_tracks_db(db, [*LIBRARY, 7])
    return Setup(root, audio_dir, db, root / "waveforms")


def from_scratch(setup: Setup, root: Path, max_tracks: int = 100, **options) -> Setup:
    """The same audio and `tracks` built into a fresh dataset and DuckDB file."""
    fresh = Setup(root, setup.audio_dir, root / "clap.duckdb", root / "waveforms")
    with duckdb.connect(str(setup.db), read_only=True) as con:
        track_ids = [r[0] for r in con.execute("SELECT track_id FROM tracks").fetchall()]
    make_tracks_db(fresh.db, track_ids)
    fresh.build(max_tracks, **options)
    return fresh


def test_build_writes_the_contract(tmp_path: Path, audio: AudioFactory) -> None:
    s = make_setup(tmp_path, audio)
    reports: list[Progress] = []
    summary = build_waveforms(
        s.select(),
        s.out,
        s.db,
        DecodeOptions(row_group_rows=ROWS_PER_GROUP, progress_interval_s=0),
        progress=reports.append,
    )
    table = s.table()
    expected_ids = sorted(set(LIBRARY) - set(EXPECTED_FAILURES))
    assert s.tracks() == expected_ids
    assert table.schema.field("track_id").type == pa.int64()
    assert table.schema.field("start_s").type == pa.float64()
    assert table.schema.field("pcm").type == pa.binary()
    assert table.schema.field("n_samples_decoded").type == pa.int64()
    assert table.schema.field("source_path").type == pa.string()
    assert table.schema.field("source_size").type == pa.int64()
    assert table.schema.field("source_mtime").type == pa.float64()
    # Every window of each clip: 8-s clips give a full window and a 3-s one (kept: >= 2.5 s),
    # the 6-s WAV one window (1 s left over: dropped), the 2-s clip its only window.
    windows: dict[int, list[tuple[float, int]]] = {}
    for row in table.select(["track_id", "start_s", "n_samples_decoded"]).to_pylist():
        windows.setdefault(row["track_id"], []).append((row["start_s"], row["n_samples_decoded"]))
    assert {t: [start for start, _ in w] for t, w in windows.items()} == {
        t: [0.0] if t in (10, 20) else [0.0, 5.0] for t in expected_ids
    }
    assert windows[10] == [(0.0, 96_000)]
    for t, w in windows.items():
        assert w[0][1] == (96_000 if t == 10 else CLIP_SAMPLES)
        if len(w) == 2:
            assert abs(w[1][1] - 3 * 48_000) <= 2_000  # 3 s, give or take the MP3's padding
    assert pc.binary_length(table.column("pcm")).to_pylist() == [
        2 * n for n in table.column("n_samples_decoded").to_pylist()
    ]
    for row in table.select(["track_id", "source_path", "source_size", "source_mtime"]).to_pylist():
        st = Path(row["source_path"]).stat()
        assert row["source_path"] == str(s.audio_dir / f"{row['track_id']:06d}"[:3]
                                         / f"{row['track_id']:06d}.mp3")  # fmt: skip
        assert (row["source_size"], row["source_mtime"]) == (st.st_size, st.st_mtime)

    # One file per folder, sorted, small row groups, no temp file left behind.
    assert sorted(p.name for p in s.out.iterdir()) == ["000.parquet", "001.parquet"]
    for name in ("000.parquet", "001.parquet"):
        meta = pq.ParquetFile(s.out / name).metadata
        assert meta.num_row_groups >= 2 if name == "000.parquet" else meta.num_row_groups >= 1
        assert max(meta.row_group(i).num_rows for i in range(meta.num_row_groups)) <= 3
        assert pq.ParquetFile(s.out / name).schema_arrow.metadata[b"clap.window.hop_s"] == b"5.0"

    assert s.failures() == EXPECTED_FAILURES
    failure = next(f for f in read_failures(s.db) if f.track_id == 42)
    assert failure.path == str(s.audio_dir / "000" / "000042.mp3")
    assert "filesize and duration do not match" in failure.stderr_tail
    assert failure.failed_at is not None

    assert (summary.selected, summary.rows, summary.decoded, summary.reused) == (12, 7, 12, 0)
    assert summary.windows == len(table) == 12  # 5 tracks x 2 windows + 2 x 1
    assert summary.failure_counts() == {
        "empty": 1, "not_audio": 1, "silent": 1, "too_short": 1, "truncated": 1
    }  # fmt: skip
    assert reports[-1].done == reports[-1].total == 12 and reports[-1].failures == 5
    assert reports[-1].decoded == reports[-1].to_decode == 12
    assert "12/12 tracks" in str(reports[-1]) and "tracks/s" in str(reports[-1])

    health = dataset_health(s.out, s.db, s.select(), scan_samples=True)
    assert health.row_problems() == [] and health.sample_problems() == []
    assert (health.selected, health.failures, health.rows, health.windows) == (12, 5, 7, 12)


def test_rerun_decodes_nothing_and_rewrites_nothing(tmp_path: Path, audio: AudioFactory) -> None:
    s = make_setup(tmp_path, audio)
    s.build()
    stamps = {p.name: p.stat().st_mtime_ns for p in s.out.iterdir()}
    failed_at = {f.track_id: f.failed_at for f in read_failures(s.db)}
    summary = s.build()
    assert summary.decoded == 0 and summary.reused == 7
    assert len(summary.failures) == 5 and summary.new_failures == []  # kept, not retried
    assert not any(p.rewritten for p in summary.partitions)
    assert {p.name: p.stat().st_mtime_ns for p in s.out.iterdir()} == stamps
    assert {f.track_id: f.failed_at for f in read_failures(s.db)} == failed_at


def test_changed_files_alone_are_decoded_and_result_equals_scratch(
    tmp_path: Path, audio: AudioFactory
) -> None:
    s = make_setup(tmp_path / "inc", audio)
    s.build()
    before = s.table()
    later = time.time() + 10
    audio.make("cbr320", s.audio_dir / "000" / "000003.mp3")  # replaced content
    os.utime(s.audio_dir / "000" / "000003.mp3", (later, later))
    os.utime(s.audio_dir / "001" / "001000.mp3", (later, later))  # touched only
    audio.make("cbr128", s.audio_dir / "000" / "000026.mp3")  # the empty file got fixed
    summary = s.build()
    assert sorted(summary.decoded_ids) == [3, 26, 1000]
    assert summary.reused == 5  # 7 rows - 2 re-decoded; 4 unchanged failures kept
    assert s.failures() == {k: v for k, v in EXPECTED_FAILURES.items() if k != 26}
    after = s.table()
    assert s.tracks() == sorted({*before.column("track_id").to_pylist(), 26})
    row3 = after.filter(pc.equal(after.column("track_id"), 3))
    assert (
        row3.column("source_size")[0].as_py() == (s.audio_dir / "000" / "000003.mp3").stat().st_size
    )

    scratch = from_scratch(s, tmp_path / "scratch")
    assert after.equals(scratch.table())
    assert s.failures() == scratch.failures()


def test_tracks_leaving_the_selection_lose_their_rows(tmp_path: Path, audio: AudioFactory) -> None:
    s = make_setup(tmp_path / "inc", audio)
    s.build()
    # Lower the experiment to the first 4 tracks (2, 3, 5, 10): folder 001 leaves entirely.
    summary = s.build(max_tracks=4)
    assert summary.decoded == 0
    assert s.tracks() == [2, 3, 5, 10]
    assert sorted(p.name for p in s.out.iterdir()) == ["000.parquet"]
    assert s.failures() == {}
    # A track removed from `tracks` disappears too.
    make_tracks_db(s.db, [2, 3, 10])
    summary = s.build()
    assert summary.decoded == 0
    assert s.tracks() == [2, 3, 10]
    scratch = from_scratch(s, tmp_path / "scratch")
    assert s.table().equals(scratch.table())


def test_another_window_rule_decodes_everything_again(tmp_path: Path, audio: AudioFactory) -> None:
    s = make_setup(tmp_path, audio)
    s.build()
    summary = s.build(window_offset_s=1.0)
    assert summary.decoded == 12
    assert pq.read_schema(s.out / "000.parquet").metadata[b"clap.window.offset_s"] == b"1.0"
    rows = s.table().select(["track_id", "start_s", "n_samples_decoded"]).to_pylist()
    assert [(r["start_s"], r["n_samples_decoded"]) for r in rows if r["track_id"] == 10] == [
        (1.0, 48_000)  # the 2-s clip has 1 s left after the offset
    ]
    # 8 s from 1 s on: a 5-s window, then 2 s (less than half a window: dropped)
    assert [r["start_s"] for r in rows if r["track_id"] == 2] == [1.0]
    # A hop of 2 s: overlapping windows; max_audio_s 4: at most 4 s of each track.
    assert s.build(hop_s=2.0, max_audio_s=4.0).decoded == 12
    rows = s.table().select(["track_id", "start_s", "n_samples_decoded"]).to_pylist()
    assert [(r["start_s"], r["n_samples_decoded"]) for r in rows if r["track_id"] == 2] == [
        (0.0, 4 * 48_000)  # one partial window of the 4-s span: the track's only one
    ]
    assert s.build(hop_s=2.0, max_audio_s=4.0).decoded == 0  # same rule: nothing to decode


def test_tracks_of_another_folder_are_rejected(tmp_path: Path, audio: AudioFactory) -> None:
    s = make_setup(tmp_path, audio)
    selected = s.select()
    with pytest.raises(ValueError, match="do not belong to audio folder '001'"):
        build_waveforms({"001": selected["000"]}, s.out, s.db)


def test_no_ffmpeg_fails_before_any_work(
    tmp_path: Path, audio: AudioFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = make_setup(tmp_path, audio)
    monkeypatch.setenv("CLAP_FFMPEG", str(tmp_path / "missing-ffmpeg"))
    ffmpeg_bin.ffmpeg_exe.cache_clear()
    try:
        with pytest.raises(ffmpeg_bin.FfmpegNotFoundError):
            s.build()
    finally:
        monkeypatch.undo()
        ffmpeg_bin.ffmpeg_exe.cache_clear()
    assert not s.out.exists()
    assert read_failures(s.db) == []


_CHILD = """
import json, sys, time
from clap_pipeline.selection import select_tracks
from clap_pipeline.audio.waveforms import DecodeOptions, build_waveforms, group_by_folder
args = json.loads(sys.argv[1])
selected = group_by_folder(select_tracks(args["db"], args["audio"], args["max_tracks"]))
selected = {f: t for f, t in selected.items() if f in args["folders"]}
def slow_consumer(progress):  # a slow progress sink widens the window for the kill
    time.sleep(args["sleep"])
build_waveforms(
    selected, args["out"], args["db"],
    DecodeOptions(workers=1, row_group_rows=2, progress_interval_s=0),
    progress=slow_consumer,
)
"""


def _child(s: Setup, folders: list[str], sleep: float) -> subprocess.Popen:
    args = {"db": str(s.db), "audio": str(s.audio_dir), "out": str(s.out), "max_tracks": 100,
            "folders": folders, "sleep": sleep}  # fmt: skip
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD, json.dumps(args)],
        cwd=REPO_ROOT,
        stderr=subprocess.PIPE,
    )


def test_kill_9_mid_run_leaves_the_previous_file_and_rerun_completes(
    tmp_path: Path, audio: AudioFactory
) -> None:
    s = make_setup(tmp_path / "run", audio)
    s.build(max_tracks=3)  # a previous good state: tracks 2, 3, 5
    previous = (s.out / "000.parquet").read_bytes()

    child = _child(s, ["000", "001"], sleep=0.4)
    deadline = time.monotonic() + 60
    temp = None
    while time.monotonic() < deadline and temp is None:
        # Mid-run: the hidden temp file already holds at least one row group.
        temp = next((p for p in s.out.glob(".000.parquet.*.tmp") if p.stat().st_size > 2e6), None)
        time.sleep(0.01)
    assert temp is not None, child.stderr.read().decode() if child.poll() is not None else ""
    assert child.poll() is None, "the run finished before it could be killed"
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL

    # Readers see the previous complete file only; the partial one is hidden.
    assert (s.out / "000.parquet").read_bytes() == previous
    assert not (s.out / "001.parquet").exists()
    assert s.tracks() == [2, 3, 5]
    assert temp.exists()

    s.build()
    scratch = from_scratch(s, tmp_path / "scratch")
    assert s.table().equals(scratch.table())
    assert s.failures() == scratch.failures() == EXPECTED_FAILURES
    # The killed run's temp file is gone although it is seconds old.
    assert sorted(p.name for p in s.out.iterdir()) == ["000.parquet", "001.parquet"]


def test_partitions_built_by_parallel_processes_share_the_failures_table(
    tmp_path: Path, audio: AudioFactory
) -> None:
    s = make_setup(tmp_path, audio)
    children = [_child(s, [folder], sleep=0.0) for folder in ("000", "001")]
    for child in children:
        _, err = child.communicate(timeout=120)
        assert child.returncode == 0, err.decode()
    assert s.failures() == EXPECTED_FAILURES
    assert len(s.tracks()) == 7


def test_a_failures_table_with_only_the_contract_columns_is_extended(
    tmp_path: Path, audio: AudioFactory
) -> None:
    s = make_setup(tmp_path, audio)
    with duckdb.connect(str(s.db)) as con:
        con.execute(
            "CREATE TABLE decode_failures (track_id BIGINT, path VARCHAR, reason VARCHAR, "
            "stderr_tail VARCHAR, failed_at TIMESTAMP)"
        )
        con.execute("INSERT INTO decode_failures VALUES (26, 'old', 'empty', '', now())")
    assert read_failures(s.db)[0].source_size is None
    s.build()
    assert s.failures() == EXPECTED_FAILURES
    assert {f.source_size for f in read_failures(s.db) if f.track_id == 26} == {0}
    assert s.build().decoded == 0  # the recorded failures are now reusable


def test_timeouts_are_retried_other_failures_are_kept(tmp_path: Path, audio: AudioFactory) -> None:
    s = make_setup(tmp_path, audio)
    s.build(timeout_s=0.001)  # every ffmpeg call times out; the empty file fails before ffmpeg
    first = s.failures()
    assert first == {tid: "empty" if tid == 26 else "timeout" for tid in LIBRARY}
    summary = s.build()
    assert sorted(summary.decoded_ids) == sorted(set(LIBRARY) - {26})
    assert s.failures() == EXPECTED_FAILURES


def test_os_errors_of_one_clip_are_failure_rows_and_the_rest_decode(
    tmp_path: Path, audio: AudioFactory
) -> None:
    """A self-looping symlink (ELOOP) and a path through a file (ENOTDIR) are per-clip."""
    s = make_setup(tmp_path, audio)
    folder = s.audio_dir / "000"
    loop = folder / "000008.mp3"
    loop.symlink_to(loop.name)  # points at itself: "Too many levels of symbolic links"
    through_file = folder / "000009.mp3"
    through_file.symlink_to(folder / "000002.mp3" / "x.mp3")  # NotADirectoryError
    make_tracks_db(s.db, [*LIBRARY, 7, 8, 9])

    summary = s.build()

    failures = {f.track_id: f for f in read_failures(s.db)}
    assert {tid: failures[tid].reason for tid in failures} == {
        **EXPECTED_FAILURES,
        8: "unreadable",
        9: "unreadable",
    }
    assert "symbolic links" in failures[8].detail and failures[8].path == str(loop)
    assert failures[9].detail.startswith("NotADirectoryError")
    assert s.tracks() == sorted(set(LIBRARY) - set(EXPECTED_FAILURES))
    assert {8, 9} <= set(summary.decoded_ids)
    # Unreadable files are tried again (permissions change without touching the file).
    again = s.build()
    assert sorted(again.decoded_ids) == [8, 9]
