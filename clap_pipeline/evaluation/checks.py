"""What the `evaluation` asset checks judge: values in range, the right run, beats random."""

from __future__ import annotations

import math

from clap_pipeline.evaluation.report import EvaluationReport, Interval, metric_bounds
from clap_pipeline.metrics import SELECTION_METRIC, UNIT_INTERVAL_METRICS
from clap_pipeline.training_report import TrainingReport


def _outside(stat: Interval, low: float, high: float) -> list[tuple[str, float]]:
    parts = (("value", stat.value), ("ci_low", stat.ci_low), ("ci_high", stat.ci_high))
    return [(p, v) for p, v in parts if not (math.isfinite(v) and low <= v <= high)]


def range_problems(report: EvaluationReport, manifest: TrainingReport) -> list[str]:
    """Why the report is out of range or stale ([] = fine): metrics in [0, 1], ranks in
    [1, N], N = the manifest's test split, the same training run."""
    problems = []
    if report.mlflow_run_id != manifest.mlflow_run_id:
        problems.append(
            f"report is for run {report.mlflow_run_id}, training.json for "
            f"{manifest.mlflow_run_id}: re-materialize `evaluation`"
        )
    expected_test = len(manifest.split("test"))
    test = report.splits.get("test")
    test_n = test.n if test is not None else None
    if test_n != expected_test:
        problems.append(f"test N = {test_n} but the test split has {expected_test} clips")
    for split, block in report.splits.items():
        for model, scores in block.models.items():
            for key, stat in scores.metrics.items():
                low, high = metric_bounds(key, block.n)
                problems += [
                    f"{split} {model} {key} {part} = {value} outside [{low}, {high}]"
                    for part, value in _outside(stat, low, high)
                ]
        if block.random is not None:
            for key, value in block.random.exact.items():
                if key.split("_", 3)[-1] in UNIT_INTERVAL_METRICS and not 0 <= value <= 1:
                    problems.append(f"{split} random {key} = {value} outside [0, 1]")
    for split, search in report.genre_search.splits.items():
        for model, queries in search.models.items():
            for query_name, result in queries.items():
                for score, stat in result.scores.items():
                    problems += [
                        f"{split} {model} genre search {query_name} {score} {part} = "
                        f"{value} outside [0, 1]"
                        for part, value in _outside(stat, 0.0, 1.0)
                    ]
    for split, genre in report.genre.splits.items():
        for model, result in genre.models.items():
            if not 0 <= result.accuracy <= 1:
                problems.append(f"{split} {model} genre accuracy {result.accuracy} out of range")
    return problems


def beats_random(report: EvaluationReport) -> tuple[bool, str]:
    """Whether the fine-tuned model's test text->audio R@5 beats random's (k/N)."""
    test = report.evaluated("test")
    if test is None:
        return False, "no test clips: the split is empty, nothing to compare"
    key = SELECTION_METRIC
    tuned = test.stat("fine_tuned", key).value
    exact = test.random.exact[key]
    upper = test.random.empirical[key].ci_high
    verdict = "beats" if tuned > exact else "does NOT beat"
    detail = (
        f"fine-tuned test text->audio R@5 {tuned:.3f} {verdict} random {exact:.3f} "
        f"(5/N, N={test.n}; a random model reaches up to {upper:.3f} at "
        f"{report.config.confidence:.0%})"
    )
    return tuned > exact, detail
