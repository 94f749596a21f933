"""Asset `track_embeddings` (search index in DuckDB) and its check; the work is in search/build.py."""

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    MaterializeResult,
    asset,
    asset_check,
)

from clap_pipeline.search.build import embed_collection
from clap_pipeline.search.embeddings import count_waveform_rows
from clap_pipeline.search.index import embeddings_health
from clap_pipeline.search.options import EmbedOptions

from .knob_config import config_class
from .metadata_values import dagster_log, dagster_metadata
from .resources import ClapSettings

TrackEmbeddingsConfig = config_class(
    EmbedOptions, "TrackEmbeddingsConfig", "How the collection is embedded.", __name__
)


@asset(
    group_name="search",
    deps=["clap_model", "waveforms", "tracks"],
    pool="gpu",
    description=(
        "Audio embeddings of every decoded track computed with the champion model, in the "
        "DuckDB table `track_embeddings` (replaced atomically); used by `clap-pipeline search`."
    ),
)
def track_embeddings(
    context: AssetExecutionContext,
    config: TrackEmbeddingsConfig,
    clap_settings: ClapSettings,
) -> MaterializeResult:
    metadata = embed_collection(
        clap_settings.settings(), config.batch_size, config.device, dagster_log(context)
    )
    return MaterializeResult(metadata=dagster_metadata(metadata))


@asset_check(
    asset=track_embeddings,
    description="One row per waveform, unit-norm finite embeddings, a single model version.",
)
def track_embeddings_complete_and_normalised(clap_settings: ClapSettings) -> AssetCheckResult:
    settings = clap_settings.settings()
    health = embeddings_health(settings.duckdb_path)
    waveform_rows = count_waveform_rows(settings.waveforms_dir)
    problems = []
    if health["rows"] != waveform_rows:
        problems.append(f"{health['rows']} rows for {waveform_rows} waveforms")
    if health["rows"] and (
        health["nan_rows"] or not 1 - 1e-3 < health["min_norm"] <= health["max_norm"] < 1 + 1e-3
    ):
        problems.append("embeddings not finite unit vectors")
    if health["model_versions"] != 1:
        problems.append(f"{health['model_versions']} model versions mixed")
    return AssetCheckResult(
        passed=not problems,
        severity=AssetCheckSeverity.ERROR,
        description="; ".join(problems) or "ok",
        metadata={
            **{k: v for k, v in health.items() if v is not None},
            "waveform_rows": waveform_rows,
        },
    )
