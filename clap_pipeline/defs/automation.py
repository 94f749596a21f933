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

The decisions are made by ``clap_pipeline.metadata.new_tracks``; this module wires them to Dagster.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
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
from clap_pipeline.feedback import count_feedback
from clap_pipeline.metadata.fma import FmaFormatError
from clap_pipeline.metadata.new_tracks import CsvHash, RawInputs, decide, last_training, raw_inputs
from clap_pipeline.selection import inputs_state
from clap_pipeline.storage import DuckDBLockTimeout

DATA_VERSION_TAG = "clap/data_version"
NEW_TRACKS_TAG = "clap/new_tracks"
NEW_FEEDBACK_TAG = "clap/new_feedback"
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


def _busy(run: DagsterRun) -> SkipReason:
    return SkipReason(
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


def _retrain_request(
    settings: Settings, inputs: RawInputs, tags: dict[str, str], n_new: int
) -> RunRequest:
    version = inputs.selection.data_version
    return RunRequest(
        run_key=f"retrain-{version}",
        run_config=retrain_run_config(settings.retrain_run_config),
        tags={**tags, DATA_VERSION_TAG: version, NEW_TRACKS_TAG: str(n_new)},
    )


@dataclass(frozen=True)
class SensorCursor:
    """What the sensor saw last: the inputs' cheap fingerprint (with the selection settings)
    and tracks.csv's hash."""

    inputs: str | None = None
    tracks_csv: CsvHash | None = None

    @classmethod
    def parse(cls, text: str | None) -> SensorCursor:
        try:
            data = json.loads(text) if text else {}
        except ValueError:
            data = {}  # a cursor of an older version: start over
        if not isinstance(data, dict):
            data = {}
        return cls(data.get("inputs"), CsvHash.from_json(data.get("tracks_csv")))

    def dump(self) -> str:
        csv = self.tracks_csv.to_json() if self.tracks_csv else None
        return json.dumps({"inputs": self.inputs, "tracks_csv": csv}, sort_keys=True)


@sensor(
    job=retrain_job,
    minimum_interval_seconds=60,
    default_status=DefaultSensorStatus.RUNNING,
    description="Requests `retrain` when at least CLAP_RETRAIN_MIN_NEW_TRACKS tracks with "
    "metadata and audio were not in the last training.",
)
def new_tracks_sensor(context: SensorEvaluationContext, clap_settings: ClapSettings):
    settings = clap_settings.settings()
    cursor = SensorCursor.parse(context.cursor)
    state = inputs_state(settings.metadata_dir, settings.audio_dir)
    if not state.exists:
        return SkipReason(
            f"no inputs yet: {settings.tracks_csv} or {settings.audio_dir} is missing (run "
            "`clap-pipeline demo-data` or `clap-pipeline fetch-fma`)"
        )
    # The settings that change the decision count as inputs: raising CLAP_MAX_TRACKS
    # retrains on the larger selection at the next tick.
    inputs_key = (
        f"{state.fingerprint}:max={settings.max_tracks}:min={settings.retrain_min_new_tracks}"
    )
    if cursor.inputs == inputs_key:
        return SkipReason(
            "tracks.csv, the audio folders and the selection settings are unchanged since the "
            "last check"
        )
    running = active_retrain_run(context.instance)
    if running is not None:
        return _busy(running)  # cursor kept: this change is looked at after the run
    try:
        csv_hash = CsvHash.of(settings.tracks_csv, cursor.tracks_csv)
        inputs = raw_inputs(settings.tracks_csv, settings.audio_dir, settings.max_tracks, csv_hash)
        decision = decide(
            inputs, last_training(settings.training_manifest_path), settings.retrain_min_new_tracks
        )
    except (OSError, ValueError, FmaFormatError) as exc:
        # Often a file still being copied; its next change triggers a new check.
        return SkipReason(f"cannot read the inputs: {exc}")
    new_cursor = SensorCursor(inputs_key, csv_hash).dump()
    if not decision.retrain:
        return SensorResult(skip_reason=decision.reason, cursor=new_cursor)
    new_folders, range_tags = _partition_range(context.instance, inputs)
    context.log.info(f"requesting retrain: {decision.reason}")
    return SensorResult(
        run_requests=[_retrain_request(settings, inputs, range_tags, len(decision.new_track_ids))],
        dynamic_partitions_requests=(
            [audio_folder_partitions.build_add_request(new_folders)] if new_folders else []
        ),
        cursor=new_cursor,
    )


@sensor(
    job=retrain_job,
    minimum_interval_seconds=60,
    default_status=DefaultSensorStatus.RUNNING,
    description="Requests `retrain` when at least CLAP_RETRAIN_MIN_FEEDBACK search feedback "
    "rows (DuckDB search_feedback) arrived since its last request.",
)
def feedback_sensor(context: SensorEvaluationContext, clap_settings: ClapSettings):
    settings = clap_settings.settings()
    try:
        count = count_feedback(settings.duckdb_path)
    except DuckDBLockTimeout as exc:
        return SkipReason(f"the DuckDB file is busy, next tick: {exc}")
    seen = int(context.cursor) if (context.cursor or "").isdigit() else 0
    seen = seen if seen <= count else 0  # the table was recreated: count from zero
    new = count - seen
    if new < settings.retrain_min_feedback:
        return SkipReason(
            f"{new} new feedback row(s) since the last request, waiting for "
            f"CLAP_RETRAIN_MIN_FEEDBACK={settings.retrain_min_feedback}"
        )
    running = active_retrain_run(context.instance)
    if running is not None:
        return _busy(running)  # cursor kept: these rows count after the run
    if not (settings.tracks_csv.is_file() and settings.audio_dir.is_dir()):
        return SkipReason(f"no inputs yet: {settings.tracks_csv} or {settings.audio_dir}")
    try:
        inputs = raw_inputs(settings.tracks_csv, settings.audio_dir, settings.max_tracks)
    except (OSError, ValueError, FmaFormatError) as exc:
        return SkipReason(f"cannot read the inputs: {exc}")
    new_folders, range_tags = _partition_range(context.instance, inputs)
    version = inputs.selection.data_version
    context.log.info(f"requesting retrain: {new} new feedback rows ({count} in all)")
    return SensorResult(
        run_requests=[
            RunRequest(
                run_key=f"retrain-{version}-feedback-{count}",
                run_config=retrain_run_config(settings.retrain_run_config),
                tags={**range_tags, DATA_VERSION_TAG: version, NEW_FEEDBACK_TAG: str(new)},
            )
        ],
        dynamic_partitions_requests=(
            [audio_folder_partitions.build_add_request(new_folders)] if new_folders else []
        ),
        cursor=str(count),
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
        running = active_retrain_run(context.instance)
        if running is not None:
            return _busy(running)
        if not (settings.tracks_csv.is_file() and settings.audio_dir.is_dir()):
            return SkipReason(f"no inputs yet: {settings.tracks_csv} or {settings.audio_dir}")
        inputs = raw_inputs(settings.tracks_csv, settings.audio_dir, settings.max_tracks)
        version = inputs.selection.data_version
        last = last_training(settings.training_manifest_path)
        if not inputs.selection.track_ids:
            return SkipReason("no track has both a row in tracks.csv and an MP3")
        if last is not None and last.data_version == version:
            return SkipReason(
                f"data unchanged since the last successful training (data version {version})"
            )
        # Schedules cannot return partition requests: add new folders directly.
        new_folders, range_tags = _partition_range(context.instance, inputs)
        if new_folders:
            context.instance.add_dynamic_partitions(audio_folder_partitions.name, new_folders)
        n_new = len(set(inputs.selection.track_ids) - set(last.track_ids if last else ()))
        return _retrain_request(settings, inputs, range_tags, n_new)

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
