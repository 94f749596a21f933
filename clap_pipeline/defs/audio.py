"""Asset `waveforms` (one partition per FMA audio folder) and its checks.

The work is in ``clap_pipeline.audio.waveforms``; this module passes configuration,
logs progress and reports metadata.

A backfill (UI, or ``dagster asset backfill``) follows the backfill policy
``multi_run(max_partitions_per_run=DECODE_PARTITIONS_PER_RUN)``: one run per audio
folder, queued by the instance's run queue (``QueuedRunCoordinator``; limits in
``.dagster/dagster.yaml``), so that a k8s run launcher runs one pod per folder.
One run may still cover many folders (``context.partition_keys``) when it carries
partition range tags, as ``retrain`` runs do, or as the ``decode_waveforms`` job::

    dagster job execute -m clap_pipeline.definitions -j decode_waveforms --tags \\
        '{"dagster/asset_partition_range_start": "000", "dagster/asset_partition_range_end": "155"}'
"""

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    BackfillPolicy,
    MaterializeResult,
    MetadataValue,
    asset,
    asset_check,
)

from clap_pipeline.audio.materialize import materialize_waveforms
from clap_pipeline.audio.waveform_health import dataset_health
from clap_pipeline.audio.waveforms import DecodeOptions, group_by_folder
from clap_pipeline.dataset import CLIP_SAMPLES, ROW_GROUP_ROWS
from clap_pipeline.selection import selected_tracks

from .knob_config import config_class
from .metadata_values import dagster_log, dagster_metadata
from .partitions import audio_folder_partitions
from .resources import ClapSettings

FAILURE_WARN_FRACTION = 0.05
DECODE_PARTITIONS_PER_RUN = 1  # a backfill: one run (one pod) per audio folder


WaveformsConfig = config_class(
    DecodeOptions, "WaveformsConfig", "How the clips are decoded (DecodeOptions' knobs).", __name__
)


@asset(
    group_name="audio",
    partitions_def=audio_folder_partitions,
    backfill_policy=BackfillPolicy.multi_run(max_partitions_per_run=DECODE_PARTITIONS_PER_RUN),
    deps=["tracks"],
    kinds={"parquet", "duckdb"},
    description=(
        "Every 5-s window of the experiment's clips (up to max_audio_s per track) decoded "
        "to 48 kHz mono 16-bit PCM, one row per window, one Parquet file per audio folder "
        "under `$CLAP_DATA_DIR/waveforms/` (docs/windows.md). "
        "Incremental (only new or changed files are decoded); files that cannot be decoded "
        "are recorded in the DuckDB table `decode_failures`."
    ),
)
def waveforms(
    context: AssetExecutionContext, config: WaveformsConfig, clap_settings: ClapSettings
) -> MaterializeResult:
    options = config.to_group()
    metadata = materialize_waveforms(
        clap_settings.settings(), context.partition_keys, options, dagster_log(context)
    )
    return MaterializeResult(metadata=dagster_metadata(metadata))


def _health(context: AssetCheckExecutionContext, clap_settings: ClapSettings, scan: bool):
    settings = clap_settings.settings()
    selected = group_by_folder(selected_tracks(settings))
    folders = sorted(context.partition_keys) if context.has_partition_key_range else None
    if folders is None and context.has_partition_key:
        folders = [context.partition_key]
    return dataset_health(
        settings.waveforms_dir,
        settings.duckdb_path,
        selected,
        folders=folders,
        scan_samples=scan,
    )


@asset_check(
    asset=waveforms,
    partitions_def=audio_folder_partitions,
    blocking=True,
    description="The tracks with windows are exactly the selected ones minus the recorded "
    "decode failures.",
)
def waveforms_rows_match_selection(
    context: AssetCheckExecutionContext, clap_settings: ClapSettings
) -> AssetCheckResult:
    health = _health(context, clap_settings, scan=False)
    problems = health.row_problems()
    return AssetCheckResult(
        passed=not problems,
        severity=AssetCheckSeverity.ERROR,
        description="; ".join(problems) or "ok",
        metadata={
            "partitions": len(health.folders),
            "selected": health.selected,
            "failures": health.failures,
            "rows": health.rows,
            "expected_rows": health.selected - health.failures,
        },
    )


@asset_check(
    asset=waveforms,
    partitions_def=audio_folder_partitions,
    blocking=True,
    description=f"Every window holds 1 to {CLIP_SAMPLES:,} 16-bit samples; files sorted by "
    f"(track_id, start_s) with row groups of at most {ROW_GROUP_ROWS} windows.",
)
def waveforms_samples_valid(
    context: AssetCheckExecutionContext, clap_settings: ClapSettings
) -> AssetCheckResult:
    health = _health(context, clap_settings, scan=True)
    problems = health.sample_problems()
    return AssetCheckResult(
        passed=not problems,
        severity=AssetCheckSeverity.ERROR,
        description="; ".join(problems) or "ok",
        metadata={
            "rows": health.rows,
            "windows": health.windows,
            "bad_length_rows": len(health.bad_length_ids),
            "max_row_group_rows": health.max_row_group_rows,
        },
    )


@asset_check(
    asset=waveforms,
    partitions_def=audio_folder_partitions,
    description=f"Warns when more than {FAILURE_WARN_FRACTION:.0%} of the selected files fail "
    "to decode; errors when all of them fail.",
)
def waveforms_failure_rate(
    context: AssetCheckExecutionContext, clap_settings: ClapSettings
) -> AssetCheckResult:
    health = _health(context, clap_settings, scan=False)
    rate = health.failures / health.selected if health.selected else 0.0
    all_failed = health.selected > 0 and health.failures == health.selected
    passed = rate <= FAILURE_WARN_FRACTION
    if all_failed:
        description = f"all {health.selected} selected files failed to decode"
    elif not passed:
        description = f"{health.failures}/{health.selected} files failed ({rate:.1%})"
    else:
        description = f"{health.failures}/{health.selected} files failed ({rate:.1%}): ok"
    return AssetCheckResult(
        passed=passed,
        severity=AssetCheckSeverity.ERROR if all_failed else AssetCheckSeverity.WARN,
        description=description,
        metadata={
            "selected": health.selected,
            "failures": health.failures,
            "failure_rate": round(rate, 4),
            "failure_reasons": MetadataValue.json(health.failure_reasons),
        },
    )
