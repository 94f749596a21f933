"""Asset `feedback_evaluation`: the new model vs the served one on held-out search feedback."""

from dagster import AssetExecutionContext, MaterializeResult, asset

from clap_pipeline.evaluation.feedback_eval import run_feedback_evaluation

from .metadata_values import dagster_log, dagster_metadata
from .resources import ClapSettings


@asset(
    group_name="evaluation",
    deps=["clap_model", "waveforms"],
    pool="gpu",
    description=(
        "Held-out search feedback (a fifth of the (query, track) pairs, never trained on): "
        "does the newly trained version rank liked tracks higher than the version that "
        "served the feedback? Pairwise accuracy (liked above disliked) and liked mean rank; "
        "also MLflow metrics feedback_heldout_* of the training run."
    ),
)
def feedback_evaluation(
    context: AssetExecutionContext, clap_settings: ClapSettings
) -> MaterializeResult:
    metadata = run_feedback_evaluation(clap_settings.settings(), dagster_log(context))
    return MaterializeResult(metadata=dagster_metadata(metadata))
