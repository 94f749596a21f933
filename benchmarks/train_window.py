"""Training on a random window per epoch vs the first window every epoch, on one collection.

Trains the pipeline's own ``train()`` twice on the same prepared collection (the settings'
``CLAP_DATA_DIR``: ``prompts.parquet``, ``waveforms/`` with every window, ``clap.duckdb``;
the model ``CLAP_MODEL``) with the same
recipe (``--run-config``: the ``clap_model`` config of a run-config YAML, e.g. the
pre-trained stand-in's), ``train_window="first"`` and ``"random"``, each into its own
MLflow store and checkpoints, then runs the pipeline's ``evaluate()`` on each and prints,
side by side: the best epoch, test text->audio R@5 with its bootstrap interval (the first
window of each test track, as validation scores), and "<genre> music" precision@10 with
its interval next to the genre prior, and test R@5 of whole tracks (a track scored from
all its windows) for each window-aggregation rule. Seeds are the recipe's, so the two runs differ in the
training windows only.

    CLAP_DATA_DIR=/var/tmp/alt/data CLAP_MODEL=clap_pipeline/demo/stand_in_model \\
        nice -n 19 .venv/bin/python benchmarks/train_window.py \\
        --run-config scripts/pretrained_stand_in_run_config.yaml
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from clap_pipeline.config import Settings  # noqa: E402
from clap_pipeline.evaluation.evaluate import evaluate  # noqa: E402
from clap_pipeline.evaluation.inputs import EvalConfig, EvalInputs  # noqa: E402
from clap_pipeline.evaluation.report import EvaluationReport  # noqa: E402
from clap_pipeline.training.config import TrainConfig, TrainInputs  # noqa: E402
from clap_pipeline.training.loop import train  # noqa: E402

R5 = "text_to_audio_recall_at_5"


def recipe(run_config: Path) -> dict[str, object]:
    """The ``clap_model`` op config of a run-config YAML (TrainConfig fields only)."""
    ops = yaml.safe_load(run_config.read_text())["ops"]["clap_model"]["config"]
    return {k: v for k, v in ops.items() if k in TrainConfig.__dataclass_fields__}


def fmt(value: float, low: float, high: float) -> str:
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


def summary(report: EvaluationReport, model: str) -> list[str]:
    test = report.splits["test"]
    r5 = test.stat(model, R5)
    search = report.genre_search.splits.get("test")
    p10 = report.genre_search.precision_name
    genre = "-"
    if search is not None and search.prior is not None and model in search.models:
        scores = next(iter(search.models[model].values())).scores[p10]
        prior = search.prior.scores[p10]
        genre = f"{fmt(scores.value, scores.ci_low, scores.ci_high)} (prior {prior.value:.3f})"
    return [fmt(r5.value, r5.ci_low, r5.ci_high), genre, whole_track(report, model)]


def whole_track(report: EvaluationReport, model: str) -> str:
    """Test R@5 of whole tracks (a track scored from all its windows), per aggregation rule."""
    block = report.whole_track.splits.get("test") if report.whole_track else None
    if block is None or model not in block.retrieval:
        return "-"
    rules = block.retrieval[model]
    return "  ".join(
        f"{rule} {fmt(s.value, s.ci_low, s.ci_high)}"
        for rule, scores in rules.items()
        if (s := scores.get(R5)) is not None
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-config", type=Path, required=True)
    parser.add_argument("--out", type=Path, help="MLflow stores, checkpoints (default: data dir)")
    parser.add_argument("--max-epochs", type=int, help="instead of the recipe's (both runs)")
    parser.add_argument("--windows", default="first,random", help="the train_window values to run")
    args = parser.parse_args()
    base = Settings.from_env()
    config = TrainConfig(**recipe(args.run_config), system_metrics=False, log_checkpoints=False)
    if args.max_epochs:
        config = replace(config, max_epochs=args.max_epochs)
    out = args.out or base.data_dir
    rows = []
    for window in args.windows.split(","):
        root = out / f"train-window-{window}"
        root.mkdir(parents=True, exist_ok=True)
        inputs = replace(
            TrainInputs.from_settings(base),
            checkpoints_dir=root / "checkpoints",
            manifest_path=root / "training.json",
            tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
        )
        started = time.perf_counter()
        result = train(replace(config, train_window=window), inputs)
        assert result is not None
        report = evaluate(
            EvalConfig(),
            replace(
                EvalInputs.from_settings(base, inputs.tracking_uri),
                manifest_path=inputs.manifest_path,
                report_path=root / "evaluation.json",
            ),
            log=print,
        )
        minutes = (time.perf_counter() - started) / 60
        zero = summary(report, "zero_shot")
        rows.append((window, result.best_epoch, *summary(report, "fine_tuned"), zero, minutes))
    print(
        f"\ncollection {base.data_dir}, model {base.model}, recipe {args.run_config.name}, "
        f"max_epochs {config.max_epochs}"
    )
    print(f"{'train_window':<13}{'best epoch':>11}  {'test R@5 [95% CI]':<24}"
          f"{'genre search p@10 [95% CI]':<40}{'minutes':>8}  whole-track test R@5 by rule")  # fmt: skip
    for window, epoch, r5, genre, whole, _zero_shot, minutes in rows:
        print(f"{window:<13}{epoch:>11}  {r5:<24}{genre:<40}{minutes:>8.1f}  {whole}")
    zero = rows[0][5]
    print(f"{'zero-shot':<13}{'':>11}  {zero[0]:<24}{zero[1]:<40}{'':>8}  {zero[2]}")
    print(f"load average: {Path('/proc/loadavg').read_text().strip()}")


if __name__ == "__main__":
    main()
