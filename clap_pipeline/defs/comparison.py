"""Asset `model_comparison`: a thin wrapper over ``clap_pipeline.evaluation.comparison``.

Reads every training run of the experiment back from MLflow (the ``mlflow``
resource), writes ``reports/model_comparison.{md,png,json}`` under the data dir
(``clap_settings``) and logs them to the latest training run. ``clap-pipeline runs``
prints the same table.
"""

from dagster import AssetExecutionContext, Config, MaterializeResult, asset
from pydantic import Field

from clap_pipeline.defs.metadata_values import dagster_log, dagster_metadata
from clap_pipeline.defs.resources import ClapSettings
from clap_pipeline.evaluation.comparison import DEFAULT_RECENT, run_model_comparison


class ModelComparisonConfig(Config):
    recent: int = Field(
        DEFAULT_RECENT,
        ge=1,
        description="latest finished runs whose median best epoch is the recommended max_epochs",
    )


@asset(
    group_name="evaluation",
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
    metadata = run_model_comparison(clap_settings.settings(), config.recent, dagster_log(context))
    return MaterializeResult(metadata=dagster_metadata(metadata))
