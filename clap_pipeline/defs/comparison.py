"""Asset `model_comparison`: a thin wrapper over ``clap_pipeline.evaluation.comparison``.

Reads every training run of the experiment back from MLflow (the ``mlflow``
resource), writes ``reports/model_comparison.{md,png,json}`` under the data dir
(``clap_settings``) and logs them to the latest training run. ``clap-pipeline runs``
prints the same table.
"""

import base64

from dagster import AssetExecutionContext, Config, MaterializeResult, MetadataValue, asset
from pydantic import Field

from clap_pipeline.defs.resources import ClapSettings
from clap_pipeline.evaluation.comparison import (
    DEFAULT_RECENT,
    collect_runs,
    comparison_png,
    recommend_max_epochs,
    write_comparison,
)


class ModelComparisonConfig(Config):
    recent: int = Field(
        DEFAULT_RECENT,
        ge=1,
        description="latest finished runs whose median best epoch is the recommended max_epochs",
    )


@asset(
    group_name="training",
    deps=["clap_model", "evaluation", "feedback_evaluation"],
    kinds={"mlflow"},
    description="Every training run of the MLflow experiment side by side (params, data version, "
    "per-epoch validation recall, test recall, champion) with a chart and the recommended "
    "max_epochs for the next run; reports/model_comparison.* and MLflow artifacts.",
)
def model_comparison(
    context: AssetExecutionContext,
    config: ModelComparisonConfig,
    clap_settings: ClapSettings,
) -> MaterializeResult:
    settings = clap_settings.settings()
    names = {
        "experiment": settings.mlflow_experiment,
        "tracking_uri": settings.mlflow_tracking_uri,
        "model_name": settings.registered_model,
    }
    runs = collect_runs(**names)
    rec = recommend_max_epochs(runs, config.recent)
    png = comparison_png(runs)
    files = write_comparison(
        runs,
        rec,
        settings.reports_dir,
        retrain_run_config=settings.retrain_run_config,
        png=png,
        **names,
    )
    champion = next((r for r in runs if r.is_champion), None)
    context.log.info(
        f"{len(runs)} training run(s); recommended max_epochs: {rec.max_epochs}; "
        f"artifacts logged to run {files.mlflow_run_id}"
    )
    return MaterializeResult(
        metadata={
            "comparison": MetadataValue.md(files.markdown.read_text(encoding="utf-8")),
            "chart": MetadataValue.md(
                f"![validation R@5 and loss per epoch, one line per run]"
                f"(data:image/png;base64,{base64.b64encode(png).decode()})"
            ),
            "n_runs": len(runs),
            # None (shown as null): no finished run with a best epoch yet.
            "recommended_max_epochs": rec.max_epochs,
            "champion_run_id": champion.run_id if champion else "",
            "mlflow_run_id": files.mlflow_run_id or "",
            "report": MetadataValue.path(str(files.markdown)),
            "chart_png": MetadataValue.path(str(files.png)),
            "report_json": MetadataValue.path(str(files.json)),
        }
    )
