"""Retraining by itself: the `retrain` job, the sensors that start it, a nightly schedule.

- ``new_tracks_sensor`` (on by default, every 60 s) compares the tracks that have both a
  row in tracks.csv and an MP3 (the first ``CLAP_MAX_TRACKS`` by id) with those of the
  last successful training, and requests one ``retrain`` run when at least
  ``CLAP_RETRAIN_MIN_NEW_TRACKS`` are new. The run key is the data version, so the same
  data never launches twice; new audio folders are added as ``waveforms`` partitions.
- ``nightly_retrain`` (stopped by default; ``CLAP_RETRAIN_CRON``) requests the same run
  when the data changed at all since the last successful training.
- ``feedback_sensor`` (on by default, every 60 s) requests ``retrain`` once at least
  ``CLAP_RETRAIN_MIN_FEEDBACK`` rows arrived in DuckDB ``search_feedback`` (the search
  page's thumbs) since its last request; liked pairs join the training texts
  (``clap_model`` config ``feedback_weight``).
- ``run_failure_summary`` logs job, failed step and error of every failed run.

The decisions (the retrain policy) are made in one place, ``clap_pipeline.metadata.retrain``
(``check_new_tracks``, ``check_feedback``, ``check_data_changed``); this module
wires them to Dagster.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dagster import (
    DagsterEventType,
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    RunFailureSensorContext,
    RunRequest,
    RunsFilter,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    define_asset_job,
    run_failure_sensor,
    schedule,
    sensor,
)

from clap_pipeline.config import ConfigError, Settings
from clap_pipeline.defs.partitions import audio_folder_partitions
from clap_pipeline.defs.resources import ClapSettings
from clap_pipeline.metadata.new_tracks import RawInputs
from clap_pipeline.metadata.retrain import (
    DATA_VERSION_TAG,
    RetrainCheck,
    check_data_changed,
    check_feedback,
    check_new_tracks,
)

RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"
_ACTIVE = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
    DagsterRunStatus.CANCELING,
]

# One run from tracks.csv to the search index: `waveforms` takes every audio-folder
# partition in it (single-run backfill policy), the other assets are unpartitioned.
retrain_job = define_asset_job(
    "retrain",
    selection=[
        "tracks",
        "prompts",
        "waveforms",
        "clap_model",
        "evaluation",
        "feedback_evaluation",
        "track_embeddings",
        "model_comparison",
    ],
    description="Ingest tracks.csv, decode new clips, fine-tune, evaluate, re-index, compare runs.",
)
# One folder per run: for spreading decoding over processes or pods (see docs/scaling.md).
decode_job = define_asset_job(
    "decode_waveforms", selection=["waveforms"], partitions_def=audio_folder_partitions
)


def retrain_run_config(path: Path | None) -> dict[str, Any]:
    """Run config of automated `retrain` runs, from the YAML file CLAP_RETRAIN_RUN_CONFIG."""
    if path is None:
        return {}
    import yaml

    try:
        loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"CLAP_RETRAIN_RUN_CONFIG={path}: cannot read it as YAML: {exc}") from exc
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(
            f"CLAP_RETRAIN_RUN_CONFIG={path}: expected a mapping such as "
            "'ops: {clap_model: {config: {max_epochs: 4}}}', got "
            f"{type(loaded).__name__}"
        )
    return loaded


def active_retrain_run(instance: DagsterInstance) -> DagsterRun | None:
    runs = instance.get_runs(RunsFilter(job_name=retrain_job.name, statuses=_ACTIVE), limit=1)
    return runs[0] if runs else None


def _busy_reason(instance: DagsterInstance) -> str | None:
    """Why a retrain cannot be requested now (one is queued or running), or None."""
    run = active_retrain_run(instance)
    if run is None:
        return None
    return (
        f"retrain run {run.run_id} is {run.status.value.lower()}: the inputs are checked "
        "again after it finishes"
    )


def _partition_range(instance: DagsterInstance, inputs: RawInputs) -> tuple[list[str], dict]:
    """Audio folders to add as partitions, and tags that make the run cover all of them."""
    name = audio_folder_partitions.name
    assert name is not None
    known = list(instance.get_dynamic_partitions(name))
    new = [f for f in inputs.folders if f not in known]
    keys = known + new  # dynamic partitions keep insertion order: the range spans all
    return new, {RANGE_START_TAG: keys[0], RANGE_END_TAG: keys[-1]}


@sensor(
    job=retrain_job,
    minimum_interval_seconds=60,
    default_status=DefaultSensorStatus.RUNNING,
    description="Requests `retrain` when at least CLAP_RETRAIN_MIN_NEW_TRACKS tracks with "
    "metadata and audio were not in the last training.",
)
def new_tracks_sensor(context: SensorEvaluationContext, clap_settings: ClapSettings):
    settings = clap_settings.settings()
    check = check_new_tracks(settings, context.cursor, lambda: _busy_reason(context.instance))
    return _sensor_result(context, settings, check)


@sensor(
    job=retrain_job,
    minimum_interval_seconds=60,
    default_status=DefaultSensorStatus.RUNNING,
    description="Requests `retrain` when at least CLAP_RETRAIN_MIN_FEEDBACK search feedback "
    "rows (DuckDB search_feedback) arrived since its last request.",
)
def feedback_sensor(context: SensorEvaluationContext, clap_settings: ClapSettings):
    settings = clap_settings.settings()
    check = check_feedback(settings, context.cursor, lambda: _busy_reason(context.instance))
    return _sensor_result(context, settings, check)


def _sensor_result(
    context: SensorEvaluationContext, settings: Settings, check: RetrainCheck
) -> SensorResult | SkipReason:
    """A skip (storing the check's cursor, if any) or the `retrain` request it asks for."""
    if check.inputs is None:
        if check.cursor is None:
            return SkipReason(check.reason)
        return SensorResult(skip_reason=check.reason, cursor=check.cursor)
    new_folders, range_tags = _partition_range(context.instance, check.inputs)
    context.log.info(f"requesting retrain: {check.reason}")
    return SensorResult(
        run_requests=[_run_request(settings, check, range_tags)],
        dynamic_partitions_requests=(
            [audio_folder_partitions.build_add_request(new_folders)] if new_folders else []
        ),
        cursor=check.cursor,
    )


def _run_request(settings: Settings, check: RetrainCheck, range_tags: dict) -> RunRequest:
    """The `retrain` run a check asks for (sensors and schedule alike)."""
    return RunRequest(
        run_key=check.run_key,
        run_config=retrain_run_config(settings.retrain_run_config),
        tags={**range_tags, **check.tags},
    )


def nightly_retrain_schedule(cron: str) -> ScheduleDefinition:
    """`nightly_retrain` on ``cron`` (CLAP_RETRAIN_CRON); stopped until started in the UI."""

    @schedule(
        name="nightly_retrain",
        job=retrain_job,
        cron_schedule=cron,
        default_status=DefaultScheduleStatus.STOPPED,
        description="Requests `retrain` when the data changed since the last successful "
        "training (new, removed or edited tracks).",
    )
    def nightly_retrain(context: ScheduleEvaluationContext, clap_settings: ClapSettings):
        settings = clap_settings.settings()
        check = check_data_changed(settings, lambda: _busy_reason(context.instance))
        if check.inputs is None:
            return SkipReason(check.reason)
        # Schedules cannot return partition requests: add new folders directly.
        new_folders, range_tags = _partition_range(context.instance, check.inputs)
        if new_folders:
            context.instance.add_dynamic_partitions(audio_folder_partitions.name, new_folders)
        return _run_request(settings, check, range_tags)

    return nightly_retrain


# --------------------------------------------------------------------------- failures


def failure_summary(instance: DagsterInstance, run: DagsterRun, run_message: str = "") -> str:
    """One paragraph: the job, each failed step and its error (innermost cause)."""
    steps = []
    for record in instance.all_logs(run.run_id, of_type=DagsterEventType.STEP_FAILURE):
        event = record.dagster_event
        if event is None:
            continue
        error = event.step_failure_data.error
        if error and error.cls_name == "DagsterExecutionStepExecutionError" and error.cause:
            error = error.cause  # the exception the asset raised
        # SerializableErrorInfo.message reads "module.ErrorClass: text".
        detail = error.message.strip() if error else "no error recorded"
        steps.append(f"step `{event.step_key}` failed: {detail}")
    head = f"run {run.run_id} of job `{run.job_name}` failed"
    version = run.tags.get(DATA_VERSION_TAG)
    if version:
        head += f" (data version {version})"
    body = "; ".join(steps) if steps else (run_message or "no step failed; see the run's log")
    return f"{head}: {body}"


@run_failure_sensor(
    default_status=DefaultSensorStatus.RUNNING,
    description="Logs job, failed step and error of every failed run.",
)
def run_failure_summary(context: RunFailureSensorContext) -> None:
    message = context.failure_event.message or ""
    context.log.error(failure_summary(context.instance, context.dagster_run, message))


JOBS = [retrain_job, decode_job]
SENSORS = [new_tracks_sensor, feedback_sensor, run_failure_summary]


def schedules(settings: Settings) -> list[ScheduleDefinition]:
    return [nightly_retrain_schedule(settings.retrain_cron)]
