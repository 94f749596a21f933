"""Asset `clap_model`: a thin wrapper over ``clap_pipeline.training.train``.

All training settings are run config (``ClapTrainingConfig``); paths come from
the ``clap_settings`` resource, the DuckDB file from ``duckdb`` and the MLflow
store from ``mlflow``. The work, the MLflow run and ``reports/training.json``
are done by the training module, which also runs standalone.
"""

from dagster import (
    AssetExecutionContext,
    Config,
    MaterializeResult,
    MetadataValue,
    TableColumn,
    TableRecord,
    TableSchema,
    asset,
)
from pydantic import Field

from clap_pipeline.defs.resources import ClapSettings
from clap_pipeline.training.loop import TrainConfig, TrainingResult, TrainInputs, train

_D = TrainConfig()  # defaults and help texts live in the core module
_help = TrainConfig.help


class ClapTrainingConfig(Config):
    """Training settings; defaults = the reference recipe (AdamW 3e-5, batch 16, 3 epochs)."""

    batch_size: int = Field(_D.batch_size, description=_help("batch_size"))
    learning_rate: float = Field(_D.learning_rate, description=_help("learning_rate"))
    weight_decay: float = Field(_D.weight_decay, description=_help("weight_decay"))
    lr_schedule: str = Field(_D.lr_schedule, description=_help("lr_schedule"))
    warmup_steps: int = Field(_D.warmup_steps, description=_help("warmup_steps"))
    max_epochs: int = Field(_D.max_epochs, description=_help("max_epochs"))
    patience: int = Field(_D.patience, description=_help("patience"))
    seed: int = Field(_D.seed, description=_help("seed"))
    split: str = Field(_D.split, description=_help("split"))
    resample_templates: bool = Field(_D.resample_templates, description=_help("resample_templates"))
    feedback_weight: float = Field(_D.feedback_weight, description=_help("feedback_weight"))
    device: str = Field(_D.device, description=_help("device"))
    precision: str = Field(_D.precision, description=_help("precision"))
    cpu_threads: int = Field(_D.cpu_threads, description=_help("cpu_threads"))
    shuffle_buffer: int = Field(_D.shuffle_buffer, description=_help("shuffle_buffer"))
    feature_cache_mb: int = Field(_D.feature_cache_mb, description=_help("feature_cache_mb"))
    registered_model: str = Field(_D.registered_model, description=_help("registered_model"))
    log_checkpoints: bool = Field(_D.log_checkpoints, description=_help("log_checkpoints"))
    system_metrics: bool = Field(_D.system_metrics, description=_help("system_metrics"))
    resume: bool = Field(_D.resume, description=_help("resume"))

    def to_train_config(self) -> TrainConfig:
        return TrainConfig(
            **{name: getattr(self, name) for name in TrainConfig.__dataclass_fields__}
        )


def _epochs_table(result: TrainingResult) -> MetadataValue:
    names = [
        ("epoch", "int"),
        ("train_loss", "float"),
        ("val_loss", "float"),
        ("val_t2a_R@1", "float"),
        ("val_t2a_R@5", "float"),
        ("val_t2a_R@10", "float"),
        ("val_a2t_R@1", "float"),
        ("val_a2t_R@5", "float"),
        ("val_a2t_R@10", "float"),
        ("best", "bool"),
    ]
    records = []
    for r in result.epochs:
        m = r.metrics
        records.append(
            TableRecord(
                {
                    "epoch": r.epoch,
                    "train_loss": round(r.train_loss, 4),
                    "val_loss": round(r.val_loss, 4),
                    "val_t2a_R@1": m["text_to_audio_recall_at_1"],
                    "val_t2a_R@5": m["text_to_audio_recall_at_5"],
                    "val_t2a_R@10": m["text_to_audio_recall_at_10"],
                    "val_a2t_R@1": m["audio_to_text_recall_at_1"],
                    "val_a2t_R@5": m["audio_to_text_recall_at_5"],
                    "val_a2t_R@10": m["audio_to_text_recall_at_10"],
                    "best": r.epoch == result.best_epoch,
                }
            )
        )
    schema = TableSchema(columns=[TableColumn(name, kind) for name, kind in names])
    return MetadataValue.table(records=records, schema=schema)


@asset(
    group_name="training",
    deps=["prompts", "waveforms"],
    pool="gpu",
    kinds={"pytorch", "mlflow"},
    description="Fine-tune CLAP on the prompts + waveforms (symmetric InfoNCE, early stopping on "
    "val R@5); MLflow run, checkpoints, `clap-fma` registry alias, reports/training.json.",
)
def clap_model(
    context: AssetExecutionContext,
    config: ClapTrainingConfig,
    clap_settings: ClapSettings,
) -> MaterializeResult:
    settings = clap_settings.settings()
    inputs = TrainInputs.from_settings(settings)
    result = train(
        config.to_train_config(),
        inputs,
        dagster_run_id=context.run_id,
        on_progress=lambda p: context.log.info(p.message),
    )
    best = next(r for r in result.epochs if r.epoch == result.best_epoch)
    return MaterializeResult(
        metadata={
            "best_checkpoint": MetadataValue.path(str(result.best_checkpoint)),
            "best_epoch": result.best_epoch,
            "best_val_text_to_audio_recall_at_5": best.val_recall_at_5,
            "best_val_loss": best.val_loss,
            "epochs": _epochs_table(result),
            "training_curve": MetadataValue.md(result.curve_markdown()),
            "mlflow_run_id": result.run_id,
            "mlflow_run": MetadataValue.url(result.run_url),
            "registered_model": (
                f"{result.manifest['registered_model']['name']} "
                f"v{result.registered_version} @{result.alias}"
            ),
            "device": result.device,
            "n_train": result.n_train,
            "n_val": result.n_val,
            "n_test": result.n_test,
            "wall_time_s": round(result.wall_time_s, 2),
            "train_clips_per_second": round(result.clips_per_second, 2),
            "resumed_from_epoch": result.resumed_from_epoch,
            "stopped_early": result.stopped_early,
            "manifest": MetadataValue.path(str(result.manifest_path)),
        }
    )
