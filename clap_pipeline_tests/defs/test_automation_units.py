"""The new-tracks sensor, the nightly schedule and the failure summary, on a real instance.

Clips are placeholder files: deciding to retrain only lists the audio folders.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dagster import (
    DagsterEventType,
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    Definitions,
    RunRequest,
    SensorResult,
    SkipReason,
    asset,
    build_run_status_sensor_context,
    build_schedule_context,
    build_sensor_context,
    define_asset_job,
    instance_for_test,
)

from clap_pipeline.config import ConfigError, Settings
from clap_pipeline.dataset import audio_path
from clap_pipeline.definitions import build_defs
from clap_pipeline.defs.automation import (
    RANGE_END_TAG,
    RANGE_START_TAG,
    failure_summary,
    new_tracks_sensor,
    nightly_retrain_schedule,
    retrain_run_config,
    run_failure_summary,
)
from clap_pipeline.defs.resources import resources_for
from clap_pipeline.demo.fma_synthetic import default_row, tracks_frame, write_metadata
from clap_pipeline.metadata.new_tracks import CsvHash, raw_inputs
from clap_pipeline.metadata.retrain import DATA_VERSION_TAG, NEW_TRACKS_TAG, SensorCursor

FIRST_IDS = [2, 5, 10, 1000, 1001]


def _settings(root: Path, **overrides) -> Settings:
    return Settings.build(
        data_dir=root, mlflow_tracking_uri=f"sqlite:///{root / 'mlflow.db'}", **overrides
    )


def _write(settings: Settings, ids: list[int]) -> None:
    """tracks.csv with ``ids`` and a placeholder clip for each."""
    write_metadata(settings.metadata_dir, tracks_frame({i: default_row(i) for i in ids}))
    for tid in ids:
        path = audio_path(settings.audio_dir, tid)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"ID3")


def _record_training(settings: Settings) -> str:
    """A manifest as a successful training of the current selection writes it."""
    selection = raw_inputs(settings.tracks_csv, settings.audio_dir, settings.max_tracks).selection
    settings.training_manifest_path.parent.mkdir(parents=True, exist_ok=True)
    settings.training_manifest_path.write_text(
        json.dumps(
            {
                "mlflow_run_id": "r1",
                "selection": {
                    "data_version": selection.data_version,
                    "track_ids": list(selection.track_ids),
                },
            }
        )
    )
    return selection.data_version


def _tick(instance: DagsterInstance, settings: Settings, cursor: str | None = None):
    context = build_sensor_context(
        instance=instance, resources=resources_for(settings), cursor=cursor
    )
    return new_tracks_sensor(context), context


@pytest.fixture
def instance() -> DagsterInstance:
    # Persistent (temp folder): schedule contexts need an instance they can re-open.
    with instance_for_test() as inst:
        yield inst


def test_definitions_wire_sensors_schedule_and_job(tmp_path: Path) -> None:
    defs = build_defs(_settings(tmp_path, retrain_cron="15 2 * * 1"))
    schedule = defs.resolve_schedule_def("nightly_retrain")
    assert schedule.cron_schedule == "15 2 * * 1"
    assert schedule.default_status == DefaultScheduleStatus.STOPPED
    for name in ("new_tracks_sensor", "feedback_sensor", "run_failure_summary"):
        assert defs.resolve_sensor_def(name).default_status == DefaultSensorStatus.RUNNING
    job = defs.resolve_job_def("retrain")
    assets = {key.to_user_string() for key in job.asset_layer.executable_asset_keys}
    assert assets == {
        "tracks",
        "prompts",
        "waveforms",
        "clap_model",
        "window_embeddings",
        "evaluation",
        "feedback_evaluation",
        "track_embeddings",
        "model_comparison",
    }
    with pytest.raises(ConfigError, match="CLAP_RETRAIN_CRON"):
        _settings(tmp_path, retrain_cron="every night")
    with pytest.raises(ConfigError, match="CLAP_RETRAIN_MIN_NEW_TRACKS"):
        Settings.from_env({"CLAP_RETRAIN_MIN_NEW_TRACKS": "0"})


def test_sensor_requests_one_retrain_then_stays_quiet(
    tmp_path: Path, instance: DagsterInstance
) -> None:
    settings = _settings(tmp_path)
    result, _ = _tick(instance, settings)
    assert isinstance(result, SkipReason) and "no inputs yet" in result.skip_message

    _write(settings, FIRST_IDS)
    result, _ = _tick(instance, settings)
    assert isinstance(result, SensorResult)
    (request,) = result.run_requests
    version = raw_inputs(settings.tracks_csv, settings.audio_dir, 500).selection.data_version
    assert isinstance(request, RunRequest) and request.run_key == f"retrain-{version}"
    assert request.tags[DATA_VERSION_TAG] == version and request.tags[NEW_TRACKS_TAG] == "5"
    assert (request.tags[RANGE_START_TAG], request.tags[RANGE_END_TAG]) == ("000", "001")
    (partitions,) = result.dynamic_partitions_requests
    assert (partitions.partitions_def_name, list(partitions.partition_keys)) == (
        "audio_folders",
        ["000", "001"],
    )
    # The cursor round-trips and holds tracks.csv's hash for the next tick.
    cursor = SensorCursor.parse(result.cursor)
    assert SensorCursor.parse(cursor.dump()) == cursor
    assert cursor.tracks_csv == CsvHash.of(settings.tracks_csv)
    assert SensorCursor.parse("not json") == SensorCursor()

    again, _ = _tick(instance, settings, result.cursor)
    assert isinstance(again, SkipReason) and "unchanged" in again.skip_message


def test_sensor_after_training_new_folder_and_threshold(
    tmp_path: Path, instance: DagsterInstance
) -> None:
    settings = _settings(tmp_path, retrain_min_new_tracks=2)
    _write(settings, FIRST_IDS)
    instance.add_dynamic_partitions("audio_folders", ["000", "001"])
    _record_training(settings)
    result, _ = _tick(instance, settings)
    assert isinstance(result, SensorResult) and not result.run_requests
    assert "data unchanged since the last training" in result.skip_reason.skip_message

    _write(settings, [*FIRST_IDS, 5001])  # one new track, in a new folder
    one, _ = _tick(instance, settings, result.cursor)
    assert not one.run_requests
    assert "1 new track(s) (5001)" in one.skip_reason.skip_message
    assert "CLAP_RETRAIN_MIN_NEW_TRACKS=2" in one.skip_reason.skip_message

    _write(settings, [*FIRST_IDS, 5001, 5002])
    two, _ = _tick(instance, settings, one.cursor)
    (request,) = two.run_requests
    assert request.tags[NEW_TRACKS_TAG] == "2"
    assert (request.tags[RANGE_START_TAG], request.tags[RANGE_END_TAG]) == ("000", "005")
    (partitions,) = two.dynamic_partitions_requests
    assert list(partitions.partition_keys) == ["005"]


def test_raising_max_tracks_retrains_on_the_larger_selection(
    tmp_path: Path, instance: DagsterInstance
) -> None:
    capped = _settings(tmp_path, max_tracks=3)
    _write(capped, FIRST_IDS)
    _record_training(capped)
    result, _ = _tick(instance, capped)
    assert "2 more tracks have metadata and audio" in result.skip_reason.skip_message
    again, _ = _tick(instance, capped, result.cursor)
    assert isinstance(again, SkipReason) and "unchanged" in again.skip_message
    # Same files, larger CLAP_MAX_TRACKS: the next tick sees two new tracks.
    raised, _ = _tick(instance, _settings(tmp_path, max_tracks=10), result.cursor)
    (request,) = raised.run_requests
    assert request.tags[NEW_TRACKS_TAG] == "2"


def test_sensor_waits_for_a_retrain_in_progress(tmp_path: Path, instance: DagsterInstance) -> None:
    settings = _settings(tmp_path)
    _write(settings, FIRST_IDS)
    instance.add_run(DagsterRun(job_name="retrain", status=DagsterRunStatus.STARTED))
    result, context = _tick(instance, settings)
    assert isinstance(result, SkipReason) and "is started" in result.skip_message
    assert context.cursor is None  # the change is looked at once the run is over


def test_retrain_run_config_file(tmp_path: Path, instance: DagsterInstance) -> None:
    path = tmp_path / "retrain.yaml"
    path.write_text("ops:\n  clap_model:\n    config:\n      max_epochs: 4\n")
    settings = _settings(tmp_path, retrain_run_config=path)
    _write(settings, FIRST_IDS)
    result, _ = _tick(instance, settings)
    assert result.run_requests[0].run_config == {
        "ops": {"clap_model": {"config": {"max_epochs": 4}}}
    }
    path.write_text("- a list\n")
    with pytest.raises(ConfigError, match=r"retrain\.yaml: expected a mapping"):
        retrain_run_config(path)


def test_nightly_schedule_runs_only_when_data_changed(
    tmp_path: Path, instance: DagsterInstance
) -> None:
    settings = _settings(tmp_path)
    _write(settings, FIRST_IDS)
    schedule = nightly_retrain_schedule("0 3 * * *")

    def evaluate():
        # Closing the context closes the instance it re-opened (and Dagster's global
        # pointer to its state storage, which later tests would otherwise inherit).
        with build_schedule_context(
            instance=instance, resources=resources_for(settings)
        ) as context:
            return schedule.evaluate_tick(context)

    version = _record_training(settings)
    unchanged = evaluate()
    assert not unchanged.run_requests and "data unchanged" in unchanged.skip_message
    assert version in unchanged.skip_message

    _write(settings, [*FIRST_IDS, 3001])
    (request,) = evaluate().run_requests
    assert request.tags[NEW_TRACKS_TAG] == "1" and request.tags[RANGE_END_TAG] == "003"
    assert instance.get_dynamic_partitions("audio_folders") == ["000", "001", "003"]


class BrokenInputError(RuntimeError):
    pass


@asset
def fragile() -> None:
    raise BrokenInputError("tracks.csv line 7: no track_id")


def test_failure_summary_names_job_step_and_error(instance: DagsterInstance) -> None:
    job = define_asset_job("fragile_job", selection=[fragile])
    defs = Definitions(assets=[fragile], jobs=[job])
    result = defs.resolve_job_def("fragile_job").execute_in_process(
        instance=instance, raise_on_error=False, tags={DATA_VERSION_TAG: "v9"}
    )
    assert not result.success
    summary = failure_summary(instance, result.dagster_run)
    assert summary == (
        f"run {result.run_id} of job `fragile_job` failed (data version v9): step `fragile` "
        "failed: clap_pipeline_tests.defs.test_automation_units.BrokenInputError: tracks.csv line "
        "7: no track_id"
    )
    (failure,) = instance.get_records_for_run(
        result.run_id, of_type=DagsterEventType.RUN_FAILURE
    ).records
    context = build_run_status_sensor_context(
        sensor_name="run_failure_summary",
        dagster_event=failure.event_log_entry.dagster_event,
        dagster_instance=instance,
        dagster_run=result.dagster_run,
    ).for_run_failure()
    run_failure_summary(context)  # logs the same summary; must not raise
