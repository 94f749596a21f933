"""``training.json`` as one typed record: what training writes reads back the same."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clap_pipeline.training_report import (
    CONTRACT_KEYS,
    EpochRow,
    RegisteredVersion,
    TrainedTracks,
    TrainingReport,
    TrainingReportError,
)


def a_report() -> TrainingReport:
    return TrainingReport(
        mlflow_run_id="run-1",
        model_source="laion/clap-htsat-unfused",
        device="cpu",
        best_epoch=2,
        best_checkpoint="/data/checkpoints/run-1/epoch-2",
        epochs=(
            EpochRow(1, None, 2.5, 2.4, {"text_to_audio_recall_at_5": 0.25}),
            EpochRow(2, "/ck/2", 2.1, 2.2, {"text_to_audio_recall_at_5": 0.5}),
        ),
        splits={"train": [2, 5], "validation": [10], "test": [11, 12]},
        registered_model=RegisteredVersion("clap-fma", "3", "champion"),
        config={"batch_size": 16},
        selection=TrainedTracks("v1", (2, 5, 10, 11, 12), "abc"),
        world_size=2,
        stopped_early=True,
        wall_time_s=12.5,
        train_clips_per_second=7.5,
    )


def test_round_trip_through_the_file(tmp_path: Path) -> None:
    path = tmp_path / "training.json"
    a_report().write(path)
    assert TrainingReport.read(path, required=CONTRACT_KEYS) == a_report()


def test_the_json_keeps_the_contract_keys_and_epoch_rows(tmp_path: Path) -> None:
    data = json.loads(a_report().to_json())
    assert set(CONTRACT_KEYS) <= set(data)
    assert data["epochs"][1] == {
        "epoch": 2,
        "checkpoint": "/ck/2",
        "train_loss": 2.1,
        "val_loss": 2.2,
        "val_text_to_audio_recall_at_5": 0.5,
    }
    assert data["registered_model"] == {"name": "clap-fma", "version": "3", "alias": "champion"}
    assert data["selection"]["track_ids"] == [2, 5, 10, 11, 12]


def test_an_older_report_reads_with_defaults(tmp_path: Path) -> None:
    path = tmp_path / "training.json"
    path.write_text(json.dumps({"mlflow_run_id": "r", "splits": {"train": [3]}}))
    report = TrainingReport.read(path)
    assert (report.mlflow_run_id, report.world_size, report.selection) == ("r", 1, None)
    assert report.all_split_ids() == frozenset({3})


def test_errors_name_the_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "training.json"
    path.write_text(json.dumps({"mlflow_run_id": "r"}))
    with pytest.raises(TrainingReportError, match=r"training.json lacks key\(s\) \['model_source'"):
        TrainingReport.read(path, required=CONTRACT_KEYS)
    path.write_text(json.dumps({"splits": {"test": 5}}))
    with pytest.raises(TrainingReportError, match=r"training.json: splits.test must be a list"):
        TrainingReport.read(path)
    path.write_text("{not json")
    with pytest.raises(TrainingReportError, match="is not valid JSON"):
        TrainingReport.read(path)
    with pytest.raises(FileNotFoundError):
        TrainingReport.read(tmp_path / "absent.json")
