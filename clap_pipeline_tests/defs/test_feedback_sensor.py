"""`feedback_sensor`: a `retrain` request once CLAP_RETRAIN_MIN_FEEDBACK new rows arrived."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from dagster import (
    DagsterInstance,
    DefaultSensorStatus,
    RunRequest,
    SensorResult,
    SkipReason,
    build_sensor_context,
    instance_for_test,
)

from clap_pipeline.config import Settings
from clap_pipeline.dataset import audio_path
from clap_pipeline.definitions import build_defs
from clap_pipeline.defs.automation import feedback_sensor
from clap_pipeline.defs.resources import resources_for
from clap_pipeline.demo.fma_synthetic import default_row, tracks_frame, write_metadata
from clap_pipeline.feedback import record_feedback
from clap_pipeline.metadata.new_tracks import raw_inputs
from clap_pipeline.metadata.retrain import DATA_VERSION_TAG, NEW_FEEDBACK_TAG

IDS = [2, 5, 10]


@pytest.fixture
def instance() -> DagsterInstance:
    with instance_for_test() as inst:
        yield inst


def _settings(root: Path) -> Settings:
    settings = Settings.build(
        data_dir=root, mlflow_tracking_uri=f"sqlite:///{root / 'mlflow.db'}", retrain_min_feedback=3
    )
    write_metadata(settings.metadata_dir, tracks_frame({i: default_row(i) for i in IDS}))
    for tid in IDS:
        path = audio_path(settings.audio_dir, tid)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"ID3")
    return settings


def _tick(instance: DagsterInstance, settings: Settings, cursor: str | None):
    context = build_sensor_context(
        instance=instance, resources=resources_for(settings), cursor=cursor
    )
    return feedback_sensor(context)


_queries = itertools.count()  # a distinct query each time: one row per (client, query, track)


def _feedback(settings: Settings, n: int) -> None:
    for i in range(n):
        record_feedback(
            settings.duckdb_path,
            query=f"q{next(_queries)}",
            track_id=IDS[i % 3],
            relevant=True,
            model_version="1",
        )


def test_sensor_waits_for_enough_new_rows_then_requests_retrain(
    tmp_path: Path, instance: DagsterInstance
) -> None:
    settings = _settings(tmp_path)
    skipped = _tick(instance, settings, None)  # no DuckDB file yet
    assert isinstance(skipped, SkipReason)
    assert "0 new feedback row(s)" in skipped.skip_message
    assert "CLAP_RETRAIN_MIN_FEEDBACK=3" in skipped.skip_message

    _feedback(settings, 2)
    assert "2 new feedback row(s)" in _tick(instance, settings, None).skip_message
    _feedback(settings, 1)
    result = _tick(instance, settings, None)
    assert isinstance(result, SensorResult) and result.cursor == "3"
    (request,) = result.run_requests
    version = raw_inputs(settings.tracks_csv, settings.audio_dir, settings.max_tracks).selection
    assert isinstance(request, RunRequest)
    assert request.run_key == f"retrain-{version.data_version}-feedback-3"
    assert request.tags[NEW_FEEDBACK_TAG] == "3"
    assert request.tags[DATA_VERSION_TAG] == version.data_version

    # Counted from the cursor: 2 more rows are not enough, a third is.
    _feedback(settings, 2)
    assert "2 new feedback row(s)" in _tick(instance, settings, "3").skip_message
    _feedback(settings, 1)
    again = _tick(instance, settings, "3")
    assert again.cursor == "6" and again.run_requests[0].run_key.endswith("-feedback-6")


def test_sensor_is_wired_and_on_by_default(tmp_path: Path) -> None:
    defs = build_defs(Settings.build(data_dir=tmp_path))
    sensor = defs.resolve_sensor_def("feedback_sensor")
    assert sensor.default_status == DefaultSensorStatus.RUNNING
    assert sensor.job_name == "retrain"
