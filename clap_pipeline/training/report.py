"""What a training run reports: progress lines, MLflow params/metrics, the curve, ``training.json``.

Only rank 0 calls the MLflow functions here (one run per launch).
"""

from __future__ import annotations

import base64
import contextlib
import importlib.util
import io
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clap_pipeline import run_names, tracking
from clap_pipeline.config import REPO_ROOT
from clap_pipeline.metrics import AUDIO_TO_TEXT, KS, TEXT_TO_AUDIO, recall_key
from clap_pipeline.reporting import Markdown, Table, Url
from clap_pipeline.storage import atomic_path
from clap_pipeline.training.loss import EpochRecord
from clap_pipeline.training.session import Session
from clap_pipeline.training_report import (
    EpochRow,
    RegisteredVersion,
    TrainedTracks,
    TrainingReport,
    WiseFt,
)


@dataclass
class TrainingResult:
    run_id: str
    experiment_id: str
    run_url: str
    device: str
    best_epoch: int
    best_checkpoint: Path
    epochs: list[EpochRecord]
    registered_version: str
    alias: str
    manifest_path: Path
    curve_png: bytes
    wall_time_s: float
    clips_per_second: float
    resumed_from_epoch: int
    stopped_early: bool
    n_train: int
    n_val: int
    n_test: int
    report: TrainingReport = field(default_factory=TrainingReport)

    def curve_markdown(self) -> str:
        b64 = base64.b64encode(self.curve_png).decode()
        return f"![training curve](data:image/png;base64,{b64})"


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def training_curve_png(history: Sequence[EpochRecord], best: int | None) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r.epoch for r in history]
    fig, (ax_loss, ax_r) = plt.subplots(1, 2, figsize=(9, 3.4), dpi=90)
    ax_loss.plot(epochs, [r.train_loss for r in history], "o-", label="train loss")
    ax_loss.plot(epochs, [r.val_loss for r in history], "s-", label="val loss")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_title("symmetric InfoNCE")
    for k, marker in ((1, "o"), (5, "s"), (10, "^")):
        t2a = [r.metrics[recall_key(k)] for r in history]
        a2t = [r.metrics[recall_key(k, AUDIO_TO_TEXT)] for r in history]
        (line,) = ax_r.plot(epochs, t2a, marker=marker, label=f"text→audio R@{k}")
        ax_r.plot(epochs, a2t, marker=marker, linestyle="--", alpha=0.45, color=line.get_color(),
                  label=f"audio→text R@{k}")  # fmt: skip
    ax_r.set_ylim(0, 1.02)
    ax_r.set_xlabel("epoch")
    ax_r.set_title("validation recall")
    for ax in (ax_loss, ax_r):
        ax.set_xticks(epochs)
        if best is not None:
            ax.axvline(best, color="grey", linestyle=":", label=f"best epoch {best}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def log_run_setup(session: Session, dagster_run_id: str | None) -> None:
    """Params (the whole config, data versions, sizes, world size, commit) and tags of the run."""
    from mlflow.entities import Param, RunTag

    config, data, mlflow_client, run_id = (
        session.config,
        session.data,
        session.client,
        session.run_id,
    )
    params = {
        **{run_names.config_param(k): v for k, v in config.to_dict().items()},
        "model_source": session.inputs.model_source,
        "device": str(session.device),
        "world_size": session.ranks.world_size,
        "global_batch_size": config.batch_size * session.ranks.world_size,
        run_names.N_TRAIN: len(data.splits.train),
        "n_val": len(data.splits.validation),
        "n_test": len(data.splits.test),
        "n_from_fma_split": data.splits.n_from_fma,
        "data_version_prompts": data.prompts_version,
        "data_version_waveforms": data.index.data_version,
        "git_commit": git_commit(),
    }
    if session.inputs.selection is not None:
        params[run_names.DATA_VERSION] = session.inputs.selection.data_version
        params["n_selected"] = len(session.inputs.selection.track_ids)
    # A resumed run already has its params; non-numeric settings may have changed.
    existing = mlflow_client.get_run(run_id).data.params
    new = [Param(k, str(v)) for k, v in params.items() if k not in existing]
    tags = {
        run_names.TRAINING_FINGERPRINT_TAG: session.fingerprint,
        run_names.VALIDATION_FINGERPRINT_TAG: session.val_fingerprint,
        "mlflow.source.git.commit": params["git_commit"],
    }
    if dagster_run_id:
        tags["dagster_run_id"] = dagster_run_id
        previous = mlflow_client.get_run(run_id).data.tags.get(run_names.DAGSTER_RUN_IDS_TAG, "")
        ids = [i for i in previous.split(",") if i]
        tags[run_names.DAGSTER_RUN_IDS_TAG] = ",".join(
            [*ids, dagster_run_id] if dagster_run_id not in ids else ids
        )
    if session.resumed_from_epoch:
        tags["resumed_from_epoch"] = str(session.resumed_from_epoch)
    mlflow_client.log_batch(run_id, params=new, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def start_system_metrics(enabled: bool, run_id: str, tracking_uri: str, resumed: bool):
    """MLflow's CPU/GPU/memory monitor on the run (best effort; None when off or unavailable)."""
    if not enabled or importlib.util.find_spec("psutil") is None:
        return None
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(run_id, resume_logging=resumed, tracking_uri=tracking_uri)
        monitor.start()
        return monitor
    except Exception:  # monitoring is best effort; training goes on
        return None


def stop_system_metrics(monitor) -> None:
    if monitor is not None:
        with contextlib.suppress(Exception):
            monitor.finish()


def log_epoch(mlflow_client, run_id: str, record: EpochRecord, log_checkpoint: bool) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric(k, float(v), now, record.epoch) for k, v in record.mlflow_metrics().items()]
    mlflow_client.log_batch(run_id, metrics=metrics)
    if log_checkpoint and record.checkpoint:
        artifact = run_names.checkpoint_artifact(record.epoch)
        mlflow_client.log_artifacts(run_id, record.checkpoint, artifact)


def epoch_summary(record: EpochRecord) -> str:
    """The progress line that closes an epoch."""
    m = record.metrics
    return (
        f"epoch {record.epoch} done: train loss {record.train_loss:.4f}, val loss "
        f"{record.val_loss:.4f}, val R@1/5/10 text→audio "
        f"{m[recall_key(1)]:.3f}/{m[recall_key(5)]:.3f}/{m[recall_key(10)]:.3f}, "
        f"{record.train_clips / max(record.train_seconds, 1e-9):.1f} clips/s"
    )


def _wise_ft_artifact(wise: WiseFt | None) -> str | None:
    """The artifact folder of WiSE-FT's weights (None: they are the best epoch's)."""
    return None if wise is None or wise.alpha == 1 else run_names.WISE_FT_ARTIFACT


def checkpoint_source(session: Session, best: EpochRecord, wise: WiseFt | None = None) -> str:
    """Where the registry version points: the run's artifact copy, else the local folder."""
    artifact = _wise_ft_artifact(wise)
    if not session.config.log_checkpoints:
        return wise.checkpoint if wise else str(best.checkpoint)
    run = session.client.get_run(session.run_id)
    return f"{run.info.artifact_uri}/{artifact or run_names.checkpoint_artifact(best.epoch)}"


def log_wise_ft(session: Session, wise: WiseFt) -> None:
    """Each alpha's validation numbers (step = 100 alpha), the alpha kept, its weights."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric(run_names.WISE_FT_ALPHA_TAG, wise.alpha, now, 0)]
    for score in wise.grid:
        step = round(score.alpha * 100)
        metrics.append(Metric("wise_ft_val_loss", score.val_loss, now, step))
        metrics += [Metric(f"wise_ft_val_{k}", v, now, step) for k, v in score.metrics.items()]
    session.client.log_batch(session.run_id, metrics=metrics)
    session.client.set_tag(session.run_id, run_names.WISE_FT_ALPHA_TAG, repr(wise.alpha))
    artifact = _wise_ft_artifact(wise)
    if artifact and session.config.log_checkpoints:
        session.client.log_artifacts(session.run_id, wise.checkpoint, artifact)


def log_best(session: Session, best: EpochRecord, wall_time_s: float, clips_per_s: float) -> None:
    from mlflow.entities import Metric, Param

    client, now = session.client, int(time.time() * 1000)
    existing = client.get_run(session.run_id).data.params
    client.log_batch(
        session.run_id,
        metrics=[
            Metric(run_names.BEST_EPOCH, best.epoch, now, 0),
            Metric(run_names.BEST_VAL_METRIC, best.val_recall_at_5, now, 0),
            Metric("best_val_loss", best.val_loss, now, 0),
            Metric("wall_time_s", wall_time_s, now, 0),
            Metric("train_clips_per_second", clips_per_s, now, 0),
        ],
        params=[Param(run_names.BEST_EPOCH, str(best.epoch))]
        if run_names.BEST_EPOCH not in existing
        else [],
    )


def _training_report(
    session: Session,
    best: EpochRecord,
    registered: RegisteredVersion,
    wise: WiseFt | None,
    wall_time_s: float,
    clips_per_second: float,
) -> TrainingReport:
    """training.json of the session (``training_report.TrainingReport``)."""
    config, data, inputs, history = session.config, session.data, session.inputs, session.history
    selection = inputs.selection
    trained = None
    if selection is not None:
        ids = tuple(selection.track_ids)
        trained = TrainedTracks(selection.data_version, ids, selection.tracks_sha256)
    return TrainingReport(
        mlflow_run_id=session.run_id,
        model_source=inputs.model_source,
        device=str(session.device),
        best_epoch=best.epoch,
        best_checkpoint=str(best.checkpoint),
        epochs=tuple(EpochRow.from_dict(r.manifest_row()) for r in history),
        splits=data.splits.as_dict(),
        registered_model=registered,
        config=config.to_dict(),
        mlflow_tracking_uri=inputs.tracking_uri,
        mlflow_experiment_id=session.experiment_id,
        split_mode=data.splits.mode,
        validation_fingerprint=session.val_fingerprint,
        data_versions={"prompts": data.prompts_version, "waveforms": data.index.data_version},
        selection=trained,
        world_size=session.ranks.world_size,
        stopped_early=history[-1].epoch < config.max_epochs,
        wall_time_s=wall_time_s,
        train_clips_per_second=clips_per_second,
        wise_ft=wise,
    )


def _write_files(session: Session, report: TrainingReport, png: bytes) -> None:
    """training.json and the curve next to it, atomically, and both in the MLflow run."""
    manifest, client = session.inputs.manifest_path, session.client
    report.write(manifest)
    with atomic_path(manifest.parent / "training_curve.png") as tmp:
        tmp.write_bytes(png)
    with tempfile.TemporaryDirectory() as tmp_dir:
        png_path = Path(tmp_dir) / "training_curve.png"
        png_path.write_bytes(png)
        client.log_artifact(session.run_id, str(png_path))
    client.log_artifact(session.run_id, str(manifest))


def write_report(
    session: Session, best: EpochRecord, version: str, alias: str, wise: WiseFt | None = None
) -> TrainingResult:
    """Curve + ``training.json`` on disk and in the MLflow run; the result of ``train``."""
    data, inputs, history = session.data, session.inputs, session.history
    wall_time_s = session.wall_time_s()
    clips_per_second = sum(r.train_clips for r in history) / max(
        sum(r.train_seconds for r in history), 1e-9
    )
    log_best(session, best, wall_time_s, clips_per_second)
    png = training_curve_png(history, best.epoch)
    registered = RegisteredVersion(inputs.registered_model, version, alias)
    report = _training_report(session, best, registered, wise, wall_time_s, clips_per_second)
    _write_files(session, report, png)
    return TrainingResult(
        run_id=session.run_id,
        experiment_id=session.experiment_id,
        run_url=tracking.run_url(inputs.tracking_uri, session.experiment_id, session.run_id),
        device=str(session.device),
        best_epoch=best.epoch,
        best_checkpoint=Path(best.checkpoint or ""),
        epochs=list(history),
        registered_version=version,
        alias=alias,
        manifest_path=inputs.manifest_path,
        curve_png=png,
        wall_time_s=wall_time_s,
        clips_per_second=clips_per_second,
        resumed_from_epoch=session.resumed_from_epoch,
        stopped_early=report.stopped_early,
        n_train=len(data.splits.train),
        n_val=len(data.splits.validation),
        n_test=len(data.splits.test),
        report=report,
    )


# Column name, type and the epoch value behind each column of the `epochs` table.
_EPOCH_COLUMNS: tuple[tuple[str, str, Callable[[EpochRecord], Any]], ...] = (
    ("epoch", "int", lambda r: r.epoch),
    ("train_loss", "float", lambda r: round(r.train_loss, 4)),
    ("val_loss", "float", lambda r: round(r.val_loss, 4)),
    *(
        (f"val_{short}_R@{k}", "float", lambda r, key=key: r.metrics[key])
        for short, direction in (("t2a", TEXT_TO_AUDIO), ("a2t", AUDIO_TO_TEXT))
        for k in KS
        for key in (recall_key(k, direction),)
    ),
)


def result_metadata(result: TrainingResult) -> dict[str, object]:
    """The `clap_model` materialization metadata as plain values (``reporting``): the
    in-process asset turns them into Dagster values directly, a torchrun child sends them
    through Pipes (``reporting.pipes_metadata``); both show the same entries in the UI."""
    best = next(r for r in result.epochs if r.epoch == result.best_epoch)
    records = tuple(
        {
            **{name: value(r) for name, _, value in _EPOCH_COLUMNS},
            "best": r.epoch == result.best_epoch,
        }
        for r in result.epochs
    )
    columns = (*((name, kind) for name, kind, _ in _EPOCH_COLUMNS), ("best", "bool"))
    registered = result.report.registered_model.name if result.report.registered_model else ""
    return {
        "best_checkpoint": Path(result.best_checkpoint),
        "best_epoch": int(result.best_epoch),
        run_names.BEST_VAL_METRIC: float(best.val_recall_at_5),
        "best_val_loss": float(best.val_loss),
        "epochs": Table(columns, records),
        "training_curve": Markdown(result.curve_markdown()),
        "mlflow_run_id": str(result.run_id),
        "mlflow_run": Url(result.run_url),
        "registered_model": f"{registered} v{result.registered_version} @{result.alias}",
        "device": str(result.device),
        "world_size": int(result.report.world_size),
        "n_train": int(result.n_train),
        "n_val": int(result.n_val),
        "n_test": int(result.n_test),
        "wall_time_s": float(round(result.wall_time_s, 2)),
        "train_clips_per_second": float(round(result.clips_per_second, 2)),
        "resumed_from_epoch": int(result.resumed_from_epoch),
        "stopped_early": bool(result.stopped_early),
        "manifest": Path(result.manifest_path),
        # WiSE-FT's alpha of the registered weights (1.0 = the best epoch's; -1: not run).
        run_names.WISE_FT_ALPHA_TAG: float(wise.alpha) if (wise := result.report.wise_ft) else -1.0,
    }
