"""Asset `evaluation` and its checks: thin wrappers over ``clap_pipeline.evaluation``.

Paths, the DuckDB file and the MLflow store come from the ``clap_settings`` resource;
the knobs are run config (``EvaluationConfig``). The work, ``reports/evaluation.json`` and the MLflow
logging are done by the evaluation module, which also runs standalone.
"""

from pathlib import Path

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    MaterializeResult,
    MetadataValue,
    asset,
    asset_check,
)

from clap_pipeline.defs.knob_config import config_class
from clap_pipeline.defs.metadata_values import dagster_log, dagster_metadata
from clap_pipeline.defs.resources import ClapSettings
from clap_pipeline.evaluation.checks import beats_random, range_problems
from clap_pipeline.evaluation.evaluate import evaluate
from clap_pipeline.evaluation.inputs import (
    EvalConfig,
    EvalInputs,
    EvaluationError,
    load_manifest,
    report_path,
)
from clap_pipeline.evaluation.render import evaluation_metadata
from clap_pipeline.evaluation.report import load_report
from clap_pipeline.metrics import SELECTION_METRIC

EvaluationConfig = config_class(
    EvalConfig, "EvaluationConfig", "Evaluation settings (EvalConfig's knobs).", __name__
)


def _report_path(clap_settings: ClapSettings) -> Path:
    return report_path(clap_settings.settings())


@asset(
    group_name="evaluation",
    deps=["clap_model"],
    pool="gpu",
    kinds={"pytorch", "mlflow"},
    description="Zero-shot vs fine-tuned CLAP on the test (and validation) split: R@1/5/10, "
    "median/mean rank, mAP@10 both ways with bootstrap 95 % intervals next to random; "
    "top-1 examples per epoch; zero-shot genres; genre search precision@10 and mAP vs the "
    "genre prior; a verdict. reports/evaluation.json + the MLflow run.",
)
def evaluation(
    context: AssetExecutionContext,
    config: EvaluationConfig,
    clap_settings: ClapSettings,
) -> MaterializeResult:
    inputs = EvalInputs.from_settings(clap_settings.settings())
    report = evaluate(config.to_group(), inputs, log=dagster_log(context))
    return MaterializeResult(
        metadata=dagster_metadata(evaluation_metadata(report, inputs.report_path))
    )


@asset_check(
    asset=evaluation,
    description="Recalls, mAP and intervals in [0, 1], ranks in [1, N], N = the test split of "
    "reports/training.json, and the report belongs to the latest training run.",
)
def evaluation_metrics_in_range(clap_settings: ClapSettings) -> AssetCheckResult:
    settings = clap_settings.settings()
    try:
        report = load_report(_report_path(clap_settings))
        manifest = load_manifest(settings.training_manifest_path)
    except EvaluationError as exc:
        return AssetCheckResult(passed=False, metadata={"problem": str(exc)})
    problems = range_problems(report, manifest)
    return AssetCheckResult(
        passed=not problems,
        severity=AssetCheckSeverity.ERROR,
        description=None if not problems else f"{len(problems)} problem(s): {problems[0]}",
        metadata={
            "n_test": report.splits["test"].n,
            "test_split_size": len(manifest.split("test")),
            "problems": MetadataValue.md(
                "\n".join(f"- {p}" for p in problems) if problems else "none"
            ),
        },
    )


@asset_check(
    asset=evaluation,
    description="Warns when the fine-tuned model's test text->audio R@5 does not beat random's "
    "(5/N on the same N).",
)
def evaluation_beats_random(clap_settings: ClapSettings) -> AssetCheckResult:
    try:
        report = load_report(_report_path(clap_settings))
    except EvaluationError as exc:
        return AssetCheckResult(
            passed=False, severity=AssetCheckSeverity.WARN, metadata={"problem": str(exc)}
        )
    ok, detail = beats_random(report)
    test = report.evaluated("test")
    metadata: dict = {"detail": detail}
    if test is not None:
        metadata["fine_tuned_r5"] = test.stat("fine_tuned", SELECTION_METRIC).value
        metadata["random_r5"] = test.random.exact[SELECTION_METRIC]
    return AssetCheckResult(
        passed=ok, severity=AssetCheckSeverity.WARN, description=detail, metadata=metadata
    )
