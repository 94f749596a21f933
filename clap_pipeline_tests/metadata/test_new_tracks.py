"""Noticing new tracks from the raw files, and agreeing with the assets on the data version."""

from __future__ import annotations

import json
import os
from pathlib import Path

import duckdb
import pytest

from clap_pipeline.dataset import audio_path
from clap_pipeline.demo.fma_synthetic import default_row, tracks_frame, write_metadata
from clap_pipeline.metadata.fma import load_metadata
from clap_pipeline.metadata.new_tracks import (
    CsvHash,
    TrainedSelection,
    audio_track_ids,
    decide,
    last_training,
    raw_inputs,
)
from clap_pipeline.selection import Selection, current_selection, data_version

METADATA_IDS = [2, 3, 5, 10, 1000, 1001, 2004]
AUDIO_IDS = [2, 5, 10, 1000, 2004, 3000]  # 3 and 1001 have no clip, 3000 no metadata


def _write_dataset(root: Path, metadata_ids=METADATA_IDS, audio_ids=AUDIO_IDS) -> tuple[Path, Path]:
    meta = write_metadata(
        root / "fma_metadata", tracks_frame({i: default_row(i) for i in metadata_ids})
    )
    for tid in audio_ids:
        path = audio_path(root / "fma_audio", tid)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"ID3")
    return meta / "tracks.csv", root / "fma_audio"


def test_audio_track_ids_follow_fma_layout(tmp_path: Path) -> None:
    _, audio = _write_dataset(tmp_path)
    (audio / "000" / "notes.txt").write_text("x")
    (audio / "000" / "1234.mp3").write_bytes(b"")  # not six digits
    (audio / "001" / "000007.mp3").write_bytes(b"")  # id 7 belongs in folder 000
    (audio / "extra").mkdir()
    (audio / "extra" / "000011.mp3").write_bytes(b"")
    assert audio_track_ids(audio) == set(AUDIO_IDS)


def test_raw_selection_matches_the_assets_selection(tmp_path: Path) -> None:
    tracks_csv, audio = _write_dataset(tmp_path)
    inputs = raw_inputs(tracks_csv, audio, max_tracks=4)
    assert inputs.selection.track_ids == (2, 5, 10, 1000)
    assert (inputs.available, inputs.folders) == (5, ["000", "001"])

    # The assets select from the DuckDB table: same ids, same tracks.csv hash, same version.
    db = tmp_path / "clap.duckdb"
    with duckdb.connect(str(db)) as con:
        load_metadata(con, tracks_csv, tracks_csv.parent / "genres.csv")
    assert current_selection(db, audio, 4) == inputs.selection


def test_data_version_depends_on_ids_and_csv_content() -> None:
    v = data_version("a" * 64, [1, 2, 3])
    assert v == data_version("a" * 64, [3, 2, 1]) and len(v) == 16
    assert v != data_version("a" * 64, [1, 2])
    assert v != data_version("b" * 64, [1, 2, 3])


def test_csv_hash_is_reused_only_while_size_and_mtime_match(tmp_path: Path) -> None:
    path = tmp_path / "tracks.csv"
    path.write_text("one")
    fresh = CsvHash.of(path)
    stale = CsvHash(fresh.size, fresh.mtime_ns, "cached")
    assert CsvHash.of(path, stale).sha256 == "cached"  # no re-read
    path.write_text("two!")
    os.utime(path, ns=(fresh.mtime_ns + 10**9, fresh.mtime_ns + 10**9))
    assert CsvHash.of(path, stale).sha256 == CsvHash.of(path).sha256 != "cached"
    assert CsvHash.from_json(fresh.to_json()) == fresh
    assert CsvHash.from_json({"size": "x"}) is None


def _inputs(tmp_path: Path, max_tracks: int = 100):
    tracks_csv, audio = _write_dataset(tmp_path)
    return raw_inputs(tracks_csv, audio, max_tracks)


def _trained(selection: Selection, drop: int = 0) -> TrainedSelection:
    ids = selection.track_ids[: len(selection.track_ids) - drop]
    return TrainedSelection(data_version(selection.tracks_sha256, ids), frozenset(ids), "run")


def test_decide_first_training_new_tracks_and_threshold(tmp_path: Path) -> None:
    inputs = _inputs(tmp_path)
    first = decide(inputs, None, min_new_tracks=1)
    assert first.retrain and first.new_track_ids == (2, 5, 10, 1000, 2004)
    assert "no training yet" in first.reason

    same = decide(inputs, _trained(inputs.selection), 1)
    assert not same.retrain and "unchanged" in same.reason

    two_new = _trained(inputs.selection, drop=2)
    assert decide(inputs, two_new, 2).retrain
    waiting = decide(inputs, two_new, 3)
    assert not waiting.retrain and waiting.new_track_ids == (1000, 2004)
    assert "CLAP_RETRAIN_MIN_NEW_TRACKS=3" in waiting.reason


def test_decide_explains_removed_tracks_and_the_cap(tmp_path: Path) -> None:
    inputs = _inputs(tmp_path)
    ids = (*inputs.selection.track_ids, 7)  # 7 was trained on, its clip is gone now
    trained = TrainedSelection(data_version("x", ids), frozenset(ids), "run")
    removed = decide(inputs, trained, 1)
    assert not removed.retrain and removed.removed_track_ids == (7,)
    assert "1 removed: 7" in removed.reason

    capped = raw_inputs(tmp_path / "fma_metadata" / "tracks.csv", tmp_path / "fma_audio", 2)
    old = TrainedSelection("old", frozenset(capped.selection.track_ids), "run")
    decision = decide(capped, old, 1)  # same ids, edited tracks.csv: nothing new
    assert not decision.retrain
    assert decision.reason == (
        "no new track among the first CLAP_MAX_TRACKS tracks; 3 more tracks have metadata "
        "and audio: raise CLAP_MAX_TRACKS=2 to train on them"
    )


def test_last_training_reads_the_manifest(tmp_path: Path) -> None:
    manifest = tmp_path / "training.json"
    assert last_training(manifest) is None
    manifest.write_text(
        json.dumps(
            {
                "mlflow_run_id": "abc",
                "selection": {"data_version": "v1", "track_ids": [2, 5]},
                "splits": {"train": [2]},
            }
        )
    )
    assert last_training(manifest) == TrainedSelection("v1", frozenset({2, 5}), "abc")
    # Manifests from before the selection was recorded: the split members, no version.
    manifest.write_text(json.dumps({"splits": {"train": [2, 5], "validation": [9]}}))
    assert last_training(manifest) == TrainedSelection(None, frozenset({2, 5, 9}), None)
    manifest.write_text("{broken")
    with pytest.raises(ValueError, match=r"training\.json"):
        last_training(manifest)
