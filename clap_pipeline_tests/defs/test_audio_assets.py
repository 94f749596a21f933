"""The `waveforms` asset and its checks, run by Dagster on an ephemeral instance."""

from __future__ import annotations

from pathlib import Path

import pyarrow.dataset as ds
import pytest
from dagster import (
    AssetCheckSeverity,
    AssetKey,
    BackfillPolicy,
    DagsterInstance,
    build_asset_check_context,
    materialize,
)

from clap_pipeline.audio.decode_failures import read_failures
from clap_pipeline.defs.audio import (
    waveforms,
    waveforms_failure_rate,
    waveforms_rows_match_selection,
    waveforms_samples_valid,
)
from clap_pipeline.defs.partitions import audio_folder_partitions
from clap_pipeline.defs.resources import ClapSettings
from clap_pipeline_tests.audio_fixtures import AudioFactory, make_tracks_db

LIBRARY = {2: "cbr128", 5: "short2s", 26: "empty", 1000: "mono", 1001: "silent"}
CHECKS = [waveforms_rows_match_selection, waveforms_samples_valid, waveforms_failure_rate]
RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"


@pytest.fixture(scope="session")
def audio(ffmpeg: str, tmp_path_factory: pytest.TempPathFactory) -> AudioFactory:
    return AudioFactory.shared(ffmpeg, tmp_path_factory)


def _data(root: Path, audio: AudioFactory, library: dict[int, str]) -> ClapSettings:
    audio.make_library(root / "fma_audio", library)
    make_tracks_db(root / "clap.duckdb", library)
    return ClapSettings(data_dir=str(root), max_tracks=100)


def _instance(*folders: str) -> DagsterInstance:
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(audio_folder_partitions.name, list(folders))
    return instance


def _checks(result) -> dict[str, object]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def test_asset_definition() -> None:
    assert waveforms.group_names_by_key[AssetKey("waveforms")] == "audio"
    assert waveforms.partitions_def == audio_folder_partitions
    assert waveforms.backfill_policy == BackfillPolicy.multi_run(max_partitions_per_run=1)
    assert AssetKey("tracks") in waveforms.asset_deps[AssetKey("waveforms")]


def test_one_run_materializes_a_partition_range(tmp_path: Path, audio: AudioFactory) -> None:
    settings = _data(tmp_path, audio, LIBRARY)
    stray = ["000477.MP3", "001002.mp3", "42.mp3", "foo.mp3"]  # ignored, but said so
    for name in stray:
        (tmp_path / "fma_audio" / "000" / name).write_bytes(b"x")
    instance = _instance("000", "001")
    result = materialize(
        [waveforms, *CHECKS],
        instance=instance,
        resources={"clap_settings": settings},
        tags={RANGE_START: "000", RANGE_END: "001"},
        run_config={"ops": {"waveforms": {"config": {"workers": 2}}}},
    )
    assert result.success
    materializations = result.asset_materializations_for_node("waveforms")
    assert sorted(m.partition for m in materializations) == ["000", "001"]
    meta = materializations[0].metadata
    assert meta["selected"].value == 5 and meta["rows"].value == 3
    assert meta["failures"].value == 2 and meta["decoded"].value == 5
    assert meta["failure_reasons"].value == {"empty": 1, "silent": 1}
    assert meta["stray_files"].value == 4
    assert meta["stray_file_names"].value == {"000": stray}

    table = ds.dataset(tmp_path / "waveforms", format="parquet").to_table()
    assert sorted(set(table.column("track_id").to_pylist())) == [2, 5, 1000]
    assert meta["windows"].value == table.num_rows  # every window of the 8-s clips
    assert {f.track_id: f.reason for f in read_failures(tmp_path / "clap.duckdb")} == {
        26: "empty",
        1001: "silent",
    }

    checks = _checks(result)
    assert checks["waveforms_rows_match_selection"].passed
    assert checks["waveforms_rows_match_selection"].metadata["partitions"].value == 2
    assert checks["waveforms_samples_valid"].passed
    rate = checks["waveforms_failure_rate"]
    assert not rate.passed and rate.severity == AssetCheckSeverity.WARN  # 2/5 > 5 %

    logs = [e.user_message for e in instance.all_logs(result.run_id) if e.dagster_event is None]
    progress = [m for m in logs if "tracks/s" in m]
    assert progress and "5/5 tracks" in progress[-1] and "2 failures" in progress[-1]
    assert any("track 26 skipped (empty)" in m for m in logs)
    assert any(
        "4 file(s) not named like FMA clips of this folder (000NNN.mp3), ignored: "
        "000477.MP3, 001002.mp3, 42.mp3, foo.mp3" in m
        for m in logs
    )


def test_single_partition_run_and_scoped_checks(tmp_path: Path, audio: AudioFactory) -> None:
    settings = _data(tmp_path, audio, LIBRARY)
    instance = _instance("000", "001")
    result = materialize(
        [waveforms, *CHECKS],
        instance=instance,
        resources={"clap_settings": settings},
        partition_key="000",
    )
    assert result.success
    assert sorted(p.name for p in (tmp_path / "waveforms").iterdir()) == ["000.parquet"]
    checks = _checks(result)
    rows = checks["waveforms_rows_match_selection"]
    assert rows.passed and rows.partition == "000"
    assert rows.metadata["selected"].value == 3 and rows.metadata["rows"].value == 2

    # The rows check fails when a partition file no longer matches the selection.
    make_tracks_db(tmp_path / "clap.duckdb", [*LIBRARY, 3])  # adds a track...
    audio.make("cbr128", tmp_path / "fma_audio" / "000" / "000003.mp3")  # ...with audio
    # Invoked alone (no partition), a check looks at the whole dataset.
    rows = waveforms_rows_match_selection(build_asset_check_context(), clap_settings=settings)
    assert not rows.passed and rows.severity == AssetCheckSeverity.ERROR
    assert "selected tracks without row or failure: 3" in rows.description
    assert "partitions not materialized: 001" in rows.description


def test_all_files_failing_is_an_error(tmp_path: Path, audio: AudioFactory) -> None:
    settings = _data(tmp_path, audio, {2000: "empty", 2001: "random", 2002: "tiny"})
    result = materialize(
        [waveforms, *CHECKS],
        instance=_instance("002"),
        resources={"clap_settings": settings},
        partition_key="002",
    )
    rate = _checks(result)["waveforms_failure_rate"]
    assert not rate.passed and rate.severity == AssetCheckSeverity.ERROR
    assert rate.description == "all 3 selected files failed to decode"
    assert _checks(result)["waveforms_rows_match_selection"].passed  # 0 rows = 3 - 3


def test_window_offset_from_run_config(tmp_path: Path, audio: AudioFactory) -> None:
    settings = _data(tmp_path, audio, {5: "short2s", 10: "cbr128"})
    result = materialize(
        [waveforms, *CHECKS],
        instance=_instance("000"),
        resources={"clap_settings": settings},
        partition_key="000",
        run_config={"ops": {"waveforms": {"config": {"window_offset_s": 0.5, "max_audio_s": 7.0}}}},
    )
    assert result.success
    table = ds.dataset(tmp_path / "waveforms", format="parquet").to_table()
    table = table.sort_by([("track_id", "ascending"), ("start_s", "ascending")])
    # track 5: 1.5 s left after the offset; track 10 (8 s): 7 s from 0.5 s, a 5-s window and
    # a 2-s rest (less than half a window: dropped)
    assert table.column("n_samples_decoded").to_pylist() == [72_000, 240_000]
    assert table.column("start_s").to_pylist() == [0.5, 0.5]
    assert all(e.passed for e in result.get_asset_check_evaluations())
