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

# No `from __future__ import annotations`: Dagster reads the Config annotation at runtime.
from typing import Literal

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    BackfillPolicy,
    Config,
    MaterializeResult,
    MetadataValue,
    asset,
    asset_check,
)
from pydantic import Field

from clap_pipeline.audio.decode import DEFAULT_TIMEOUT_S
from clap_pipeline.audio.materialize import materialize_waveforms
from clap_pipeline.audio.waveform_health import dataset_health
from clap_pipeline.audio.waveforms import DecodeOptions, group_by_folder
from clap_pipeline.dataset import CLIP_SAMPLES, ROW_GROUP_ROWS
from clap_pipeline.selection import selected_tracks

from .metadata_values import dagster_log, dagster_metadata
from .partitions import audio_folder_partitions
from .resources import ClapSettings

FAILURE_WARN_FRACTION = 0.05
DECODE_PARTITIONS_PER_RUN = 1  # a backfill: one run (one pod) per audio folder


class WaveformsConfig(Config):
    window_offset_s: float = Field(
        default=0.0, ge=0.0, description="start of the 5-s window in each clip, in seconds"
    )
    decode_timeout_s: float = Field(
        default=DEFAULT_TIMEOUT_S, gt=0.0, description="a clip's decode is stopped after this long"
    )
    workers: int = Field(
        default=0, ge=0, description="parallel decode processes (0: one per CPU core)"
    )
    decoder: Literal["av", "cli"] = Field(
        default="av",
        description="av: FFmpeg libraries in worker processes (PyAV); cli: one ffmpeg per clip",
    )
    progress_interval_s: float = Field(
        default=5.0, gt=0.0, description="seconds between progress lines in the log"
    )


@asset(
    group_name="audio",
    partitions_def=audio_folder_partitions,
    backfill_policy=BackfillPolicy.multi_run(max_partitions_per_run=DECODE_PARTITIONS_PER_RUN),
    deps=["tracks"],
    kinds={"parquet", "duckdb"},
    description=(
        "5-s windows of the experiment's clips decoded to 48 kHz mono float32 (240,000 "
        "samples), one Parquet file per audio folder under `$CLAP_DATA_DIR/waveforms/`. "
        "Incremental (only new or changed files are decoded); files that cannot be decoded "
        "are recorded in the DuckDB table `decode_failures`."
    ),
)
def waveforms(
    context: AssetExecutionContext, config: WaveformsConfig, clap_settings: ClapSettings
) -> MaterializeResult:
    options = DecodeOptions(
        window_offset_s=config.window_offset_s,
        timeout_s=config.decode_timeout_s,
        workers=config.workers,
        decoder=config.decoder,
        progress_interval_s=config.progress_interval_s,
    )
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
    description="Rows are exactly the selected tracks minus the recorded decode failures.",
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
    description=f"Every row has exactly {CLIP_SAMPLES:,} finite samples; files sorted by track_id "
    f"with row groups of at most {ROW_GROUP_ROWS} rows.",
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
            "bad_length_rows": len(health.bad_length_ids),
            "non_finite_rows": len(health.non_finite_ids),
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
