"""A real MLflow SQLite store with training runs as training and evaluation log them.

Five training runs of one experiment, one hour apart, oldest first:

* r1 FINISHED, max_epochs 3, best epoch 2, test metrics, v1 (tagged `champion` when it
  finished; r2 took the alias since: the run tag is stale, the registry is the truth)
* r2 FINISHED, max_epochs 4, best epoch 4 (at the cap), test metrics, v2 @champion,
  data_version 0123456789abcdef, n_train 96
* r3 FAILED after one epoch
* r4 FINISHED, max_epochs 5, best epoch 3, not evaluated, v3 @challenger
* r5 RUNNING, two epochs so far

plus a run without the training source tag and a deleted training run (both ignored).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from clap_pipeline import run_names, tracking
from clap_pipeline.config import DEFAULT_REGISTERED_MODEL
from clap_pipeline_tests.training_fixtures import mlflow_store

EXPERIMENT = "comparison-test"
T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
HOUR_MS = 3_600_000
DATA_VERSION = "0123456789abcdef"


@dataclass(frozen=True)
class FakeRun:
    name: str
    status: str
    max_epochs: int
    # (val_loss, t2a R@1, R@5, R@10) per epoch, epoch = index + 1
    epochs: tuple[tuple[float, float, float, float], ...]
    best_epoch: int | None = None
    test: tuple[float, float, float] | None = None  # test t2a R@1, R@5, R@10
    alias: str | None = None  # alias set at registration (None: not registered)
    data_version: str | None = None
    n_train: int = 80


RUNS = (
    FakeRun(
        "r1",
        "FINISHED",
        3,
        ((1.0, 0.10, 0.30, 0.50), (0.8, 0.20, 0.60, 0.80), (0.9, 0.15, 0.50, 0.70)),
        best_epoch=2,
        test=(0.125, 0.375, 0.625),
        alias=tracking.CHAMPION,
    ),
    FakeRun(
        "r2",
        "FINISHED",
        4,
        tuple((1.2 - 0.1 * e, 0.1 * e, 0.2 * e, 0.25 * e) for e in range(1, 5)),
        best_epoch=4,
        test=(0.25, 0.5, 0.875),
        alias=tracking.CHAMPION,
        data_version=DATA_VERSION,
        n_train=96,
    ),
    FakeRun("r3", "FAILED", 3, ((1.5, 0.0, 0.1, 0.2),)),
    FakeRun(
        "r4",
        "FINISHED",
        5,
        tuple((1.0 - 0.05 * e, 0.1, 0.2 + 0.1 * e, 0.5) for e in range(1, 5)),
        best_epoch=3,
        alias=tracking.CHALLENGER,
    ),
    FakeRun("r5", "RUNNING", 3, ((1.1, 0.05, 0.25, 0.45), (1.0, 0.1, 0.3, 0.5))),
)


@dataclass(frozen=True)
class RunsStore:
    tracking_uri: str
    experiment: str
    run_ids: dict[str, str]  # name -> MLflow run id


def _log_run(mlflow_client, experiment_id: str, i: int, run: FakeRun) -> str:
    from mlflow.entities import Metric, Param, RunTag

    start = int(T0.timestamp() * 1000) + i * HOUR_MS
    run_id = mlflow_client.create_run(
        experiment_id,
        start_time=start,
        run_name=run.name,
        tags={run_names.SOURCE_TAG: run_names.TRAINING_SOURCE},
    ).info.run_id
    params = {
        "config.learning_rate": "0.002",
        "config.batch_size": "8",
        "config.max_epochs": str(run.max_epochs),
        "config.patience": "2",
        "config.seed": "0",
        "model_source": "tiny-clap",
        "n_train": str(run.n_train),
        "n_val": "10",
        "n_test": "10",
    }
    if run.data_version:
        params["data_version"] = run.data_version
    metrics = []
    for epoch, (loss, r1, r5, r10) in enumerate(run.epochs, start=1):
        t = start + epoch * 1000
        metrics += [
            Metric("val_loss", loss, t, epoch),
            Metric("train_loss", loss + 0.1, t, epoch),
            Metric("val_text_to_audio_recall_at_1", r1, t, epoch),
            Metric("val_text_to_audio_recall_at_5", r5, t, epoch),
            Metric("val_text_to_audio_recall_at_10", r10, t, epoch),
            Metric("val_audio_to_text_recall_at_5", 1.0 - r5, t, epoch),
        ]
    if run.best_epoch is not None:
        params["best_epoch"] = str(run.best_epoch)
        r5_best = run.epochs[run.best_epoch - 1][2]
        metrics += [
            Metric("best_epoch", run.best_epoch, start, 0),
            Metric("best_val_text_to_audio_recall_at_5", r5_best, start, 0),
        ]
    if run.test is not None:
        for k, value in zip((1, 5, 10), run.test, strict=True):
            metrics.append(Metric(f"eval_test_text_to_audio_recall_at_{k}", value, start, 0))
    mlflow_client.log_batch(
        run_id, metrics=metrics, params=[Param(k, v) for k, v in params.items()]
    )
    if run.alias is not None:
        source = f"{mlflow_client.get_run(run_id).info.artifact_uri}/checkpoints/epoch-1"
        version = tracking.register_checkpoint(
            mlflow_client,
            DEFAULT_REGISTERED_MODEL,
            run_id=run_id,
            source=source,
            tags={run_names.VERSION_EPOCH_TAG: str(run.best_epoch)},
        )
        mlflow_client.set_registered_model_alias(DEFAULT_REGISTERED_MODEL, run.alias, version)
        mlflow_client.log_batch(
            run_id,
            tags=[
                RunTag("registered_model_version", version),
                RunTag("registered_model_alias", run.alias),
            ],
        )
    if run.status != "RUNNING":
        mlflow_client.set_terminated(run_id, status=run.status, end_time=start + 600_000)
    return run_id


def build_runs_store(directory: Path, experiment: str = EXPERIMENT) -> RunsStore:
    uri = mlflow_store(directory / "mlruns")
    mlflow_client = tracking.client(uri)
    experiment_id = tracking.configure(uri, experiment)
    run_ids = {
        run.name: _log_run(mlflow_client, experiment_id, i, run) for i, run in enumerate(RUNS)
    }
    # Not training runs of the experiment: a notebook run, and a deleted training run.
    mlflow_client.create_run(experiment_id, run_name="notebook", start_time=0)
    deleted = mlflow_client.create_run(
        experiment_id, run_name="deleted", tags={run_names.SOURCE_TAG: run_names.TRAINING_SOURCE}
    )
    mlflow_client.delete_run(deleted.info.run_id)
    return RunsStore(tracking_uri=uri, experiment=experiment, run_ids=run_ids)
