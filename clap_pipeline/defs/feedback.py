"""Asset `feedback_evaluation`: the new model vs the served one on held-out search feedback."""

import json

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from clap_pipeline.evaluation.feedback_eval import evaluate_feedback, served_version, verdict
from clap_pipeline.evaluation.inputs import EvaluationError, load_manifest
from clap_pipeline.feedback import feedback_sets
from clap_pipeline.search.query import SearchError, resolve_model
from clap_pipeline.storage import write_text_atomic
from clap_pipeline.tables import markdown_table
from clap_pipeline.tracking import client

from .resources import ClapSettings

REPORT_NAME = "feedback_evaluation.json"
METRIC_PREFIX = "feedback_heldout_"  # comparison.FEEDBACK_KEY reads one of them


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
    settings = clap_settings.settings()
    manifest = load_manifest(settings.training_manifest_path)
    if manifest.registered_model is None:
        raise EvaluationError(f"{settings.training_manifest_path} names no registered model")
    new_version = manifest.registered_model.version
    heldout = feedback_sets(settings.duckdb_path).heldout
    models = [("new", new_version, manifest.best_checkpoint)]
    served = served_version(heldout)
    if served is not None and served != new_version:
        try:
            model = resolve_model(
                f"models:/{settings.registered_model}/{served}",
                settings.mlflow_tracking_uri,
                settings.registered_model,
            )
            models.append(("served", served, model.source))
        except SearchError as exc:
            context.log.warning(f"cannot load the served version {served}: {exc}")
    scores = evaluate_feedback(heldout, settings.waveforms_dir, models) if heldout else []
    new = scores[0] if scores else None
    old = scores[1] if len(scores) > 1 else None
    summary = verdict(new, old) if new else "no held-out feedback yet"
    report = {"verdict": summary, "scores": [s.as_dict() for s in scores]}
    write_text_atomic(settings.reports_dir / REPORT_NAME, json.dumps(report, indent=1))
    if new is not None:
        metrics = {}
        for score, suffix in ((new, ""), (old, "_served")):
            if score is None:
                continue
            for key in ("pairwise_accuracy", "liked_mean_rank"):
                value = getattr(score, key)
                if value is not None:
                    metrics[f"{METRIC_PREFIX}{key}{suffix}"] = value
        run_id = manifest.mlflow_run_id
        for key, value in metrics.items():
            client(settings.mlflow_tracking_uri).log_metric(run_id, key, float(value))
    headers = [
        "model",
        "version",
        "queries",
        "liked",
        "disliked",
        "pairs",
        "pairwise acc.",
        "liked mean rank",
    ]
    rows = [
        [
            s.label,
            s.model_version,
            s.queries,
            s.liked,
            s.disliked,
            s.pairs,
            "–" if s.pairwise_accuracy is None else f"{s.pairwise_accuracy:.3f}",
            "–" if s.liked_mean_rank is None else f"{s.liked_mean_rank:.2f} of {s.pool}",
        ]
        for s in scores
    ]
    return MaterializeResult(
        metadata={
            "verdict": summary,
            "heldout_rows": len(heldout),
            "scores": MetadataValue.md(markdown_table(headers, rows) if rows else summary),
            "report": MetadataValue.path(str(settings.reports_dir / REPORT_NAME)),
        }
    )
