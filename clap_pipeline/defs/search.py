"""Asset `track_embeddings` (search index in DuckDB) and its check; the work is in search.py."""

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    Config,
    MaterializeResult,
    MetadataValue,
    asset,
    asset_check,
)
from pydantic import Field

from clap_pipeline.model.choice import champion_model
from clap_pipeline.search.build import build_track_embeddings
from clap_pipeline.search.embeddings import count_waveform_rows
from clap_pipeline.search.index import TABLE, embeddings_health

from .resources import ClapSettings


class TrackEmbeddingsConfig(Config):
    batch_size: int = Field(default=32, ge=1, description="clips per forward pass")
    device: str = Field(default="auto", description="auto (CUDA, MPS, CPU), cuda, mps or cpu")


@asset(
    group_name="evaluation",
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
    settings = clap_settings.settings()
    model = champion_model(settings.mlflow_tracking_uri, settings.registered_model)
    context.log.info(
        f"embedding with {settings.registered_model} version {model.version} from {model.source}"
    )
    summary = build_track_embeddings(
        model=model,
        waveforms_dir=settings.waveforms_dir,
        audio_dir=settings.audio_dir,
        duckdb_path=settings.duckdb_path,
        batch_size=config.batch_size,
        device=config.device,
        log=context.log.info,
    )
    metadata: dict = {}
    if summary.genre_search:
        found, share = summary.genre_search["model"], summary.genre_search["mean_share"]
        p10 = found["precision_at_10"]
        context.log.info(
            f"genre search over the collection ({len(summary.genre_search['genres'])} genres, "
            f"query {summary.genre_search['query']!r}): {p10['value']:.0%} of the top 10 are "
            f"of the genre vs a {share:.0%} share ({p10['value'] / share:.1f}x)"
        )
        metadata["genre_search_precision_at_10"] = p10["value"]
        metadata["genre_search_prior_precision_at_10"] = share
        metadata["genre_search_per_genre"] = MetadataValue.json(found["per_genre"])
    return MaterializeResult(
        metadata={
            **metadata,
            "count": summary.count,
            "dim": summary.dim,
            "model_version": str(summary.model.version),
            "model_run_id": str(summary.model.run_id),
            "model_dir": MetadataValue.path(summary.model.source),
            "table": f"{settings.duckdb_path}:{TABLE}",
            "seconds": round(summary.seconds, 2),
            "clips_per_s": round(summary.clips_per_s, 2),
        }
    )


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
