"""The recipe's story after a demo run: the per-epoch curve, its best epoch, the next max_epochs.

``python -m clap_pipeline.demo.story`` (the end of ``make demo``, before the evaluation's
verdict) prints, from what the run left behind:

- the fine-tuning's per-epoch curve from ``reports/training.json`` (training loss,
  validation loss and text->audio R@5 per epoch, the best epoch marked and the epochs after
  it, where the model overfits, labelled);
- ``model_comparison``'s recommended ``max_epochs`` for the next run (the median best epoch
  of the recent runs in MLflow).
"""

from __future__ import annotations

import sys

from clap_pipeline.config import ConfigError, Settings
from clap_pipeline.metrics import SELECTION_METRIC
from clap_pipeline.tables import Table
from clap_pipeline.training_report import TrainingReport, TrainingReportError

R5 = SELECTION_METRIC


def curve_table(report: TrainingReport) -> Table:
    """One row per epoch; the best epoch and the epochs after it are labelled."""
    rows = []
    for row in report.epochs:
        note = (
            "best (kept)"
            if row.epoch == report.best_epoch
            else ("after the best" if row.epoch > report.best_epoch else "")
        )
        rows.append(
            [
                row.epoch,
                "-" if row.train_loss is None else f"{row.train_loss:.3f}",
                "-" if row.val_loss is None else f"{row.val_loss:.3f}",
                f"{row.metrics[R5]:.3f}" if R5 in row.metrics else "-",
                note,
            ]
        )
    headers = ["epoch", "train loss", "val loss", "val text->audio R@5", ""]
    return Table(headers, rows, right=frozenset({0, 1, 2, 3}), indent="  ")


def story_text(settings: Settings) -> str:
    from clap_pipeline.evaluation.comparison import (
        collect_runs,
        recommend_max_epochs,
        recommendation_lines,
    )

    report = TrainingReport.read(settings.training_manifest_path)
    lines = [
        f"Fine-tuning {report.model_source}: {len(report.epochs)} epochs, best epoch "
        f"{report.best_epoch}" + (" (stopped early)" if report.stopped_early else ""),
        curve_table(report).text(),
    ]
    runs = collect_runs(
        settings.mlflow_tracking_uri, settings.mlflow_experiment, settings.registered_model
    )
    rec = recommend_max_epochs(runs)
    lines += ["", "model_comparison:", *recommendation_lines(rec, settings.retrain_run_config)]
    return "\n".join(lines)


def main() -> int:
    try:
        print(story_text(Settings.from_env()))
    except (ConfigError, TrainingReportError, OSError) as exc:
        print(f"story: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
