"""Jobs and sensors: retraining runs by itself when new tracks arrive.

The chain, each link a sensor so every step is visible (and retryable) in the UI:

1. ``new_tracks_sensor`` notices that tracks.csv or an audio folder changed and
   requests ``ingest`` (``tracks`` + ``prompts``; ``tracks`` registers new audio
   folders as ``waveforms`` partitions).
2. ``decode_after_ingest`` requests one ``decode_waveforms`` run per audio
   folder partition when an ingest run succeeds (one run per folder lets a
   scale-out executor spread them over pods; unchanged folders finish fast
   because decoding is incremental).
3. ``retrain_after_decode`` requests ``retrain`` (``clap_model``, ``evaluation``,
   ``track_embeddings``) once every decode run of that ingest has succeeded.
"""

from __future__ import annotations

from dagster import (
    AssetKey,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    RunStatusSensorContext,
    SensorEvaluationContext,
    SkipReason,
    define_asset_job,
    run_status_sensor,
    sensor,
)

from clap_pipeline.defs.partitions import audio_folder_partitions
from clap_pipeline.defs.resources import ClapSettings
from clap_pipeline.selection import inputs_state

INGEST_TAG = "clap/ingest_run"
DECODE_TOTAL_TAG = "clap/decode_runs"  # how many decode runs one ingest requested

ingest_job = define_asset_job("ingest", selection=["tracks", "prompts"])
decode_job = define_asset_job(
    "decode_waveforms", selection=["waveforms"], partitions_def=audio_folder_partitions
)
retrain_job = define_asset_job(
    "retrain", selection=["clap_model", "evaluation", "track_embeddings"]
)


@sensor(
    job=ingest_job,
    minimum_interval_seconds=60,
    default_status=DefaultSensorStatus.RUNNING,
    description="Requests `ingest` when tracks.csv or the audio folders change.",
)
def new_tracks_sensor(context: SensorEvaluationContext, clap_settings: ClapSettings):
    settings = clap_settings.settings()
    state = inputs_state(settings.metadata_dir, settings.audio_dir)
    if not state.exists:
        return SkipReason(f"no inputs yet: {settings.tracks_csv} or {settings.audio_dir} missing")
    if context.cursor == state.fingerprint:
        return SkipReason("inputs unchanged")
    if context.cursor is None:
        # First tick: only ingest if the inputs changed after the last `tracks` materialization.
        last = context.instance.get_latest_materialization_event(AssetKey("tracks"))
        if last is not None and last.timestamp >= state.newest_mtime:
            context.update_cursor(state.fingerprint)
            return SkipReason("inputs unchanged since the last `tracks` materialization")
    context.update_cursor(state.fingerprint)
    return RunRequest(
        run_key=f"ingest-{state.fingerprint}", tags={"clap/inputs": state.fingerprint}
    )


@run_status_sensor(
    run_status=DagsterRunStatus.SUCCESS,
    monitored_jobs=[ingest_job],
    request_job=decode_job,
    default_status=DefaultSensorStatus.RUNNING,
    description="After a successful ingest, decodes every audio folder partition.",
)
def decode_after_ingest(context: RunStatusSensorContext):
    folders = context.instance.get_dynamic_partitions(audio_folder_partitions.name)
    if not folders:
        return SkipReason("no audio folder partitions registered")
    ingest_run = context.dagster_run.run_id
    return [
        RunRequest(
            run_key=f"decode-{ingest_run}-{folder}",
            partition_key=folder,
            tags={INGEST_TAG: ingest_run, DECODE_TOTAL_TAG: str(len(folders))},
        )
        for folder in folders
    ]


@run_status_sensor(
    run_status=DagsterRunStatus.SUCCESS,
    monitored_jobs=[decode_job],
    request_job=retrain_job,
    default_status=DefaultSensorStatus.RUNNING,
    description="Retrains once every decode run requested by one ingest has succeeded.",
)
def retrain_after_decode(context: RunStatusSensorContext):
    ingest_run = context.dagster_run.tags.get(INGEST_TAG)
    if ingest_run is None:
        return SkipReason("decode run was started by hand, not by an ingest")
    expected = int(context.dagster_run.tags.get(DECODE_TOTAL_TAG, "1"))
    sibling_runs = context.instance.get_runs(
        RunsFilter(tags={INGEST_TAG: ingest_run}, job_name=decode_job.name)
    )
    succeeded = {
        r.tags.get("dagster/partition")
        for r in sibling_runs
        if r.status == DagsterRunStatus.SUCCESS
    }
    if len(succeeded) < expected:
        return SkipReason(
            f"{len(succeeded)} of {expected} decode runs of ingest {ingest_run} have succeeded"
        )
    return RunRequest(run_key=f"retrain-{ingest_run}", tags={INGEST_TAG: ingest_run})


JOBS = [ingest_job, decode_job, retrain_job]
SENSORS = [new_tracks_sensor, decode_after_ingest, retrain_after_decode]
SCHEDULES: list = []
