"""Training settings (``TrainConfig``), where training reads and writes (``TrainInputs``), errors."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from clap_pipeline.config import DEFAULT_REGISTERED_MODEL, ConfigError, Settings
from clap_pipeline.knobs import DEVICE, check, knob
from clap_pipeline.selection import Selection, current_selection
from clap_pipeline.training.data import SPLIT_MODES, TRAIN_WINDOWS

PRECISIONS = ("auto", "bf16", "fp32")
LR_SCHEDULES = ("constant", "cosine")


class TrainingError(RuntimeError):
    """Training stopped; the message says where and what to change."""


class NonFiniteLossError(TrainingError):
    def __init__(self, epoch: int, step: int | None, value: float, phase: str = "train"):
        where = f"epoch {epoch}, step {step}" if step is not None else f"epoch {epoch} ({phase})"
        super().__init__(
            f"non-finite {phase} loss ({value}) at {where}: training stopped, the MLflow run is "
            "marked FAILED and the last good checkpoint is kept. Lower learning_rate or check the "
            "waveforms for NaN/inf samples."
        )
        self.epoch, self.step, self.value = epoch, step, value


@dataclass(frozen=True)
class TrainConfig:
    """Every training setting (the reference recipe as defaults), each a knob (knobs.py)."""

    batch_size: int = knob(16, "clips per contrastive batch", ge=2)
    learning_rate: float = knob(3e-5, "AdamW learning rate", gt=0)
    weight_decay: float = knob(
        0.01, "AdamW weight decay (not on biases, norms and the logit scale)", ge=0
    )
    lr_schedule: str = knob(
        "constant",
        "constant | cosine (decay to 0 at the last step of max_epochs)",
        choices=LR_SCHEDULES,
    )
    warmup_steps: int = knob(0, "optimiser steps of linear learning-rate warm-up", ge=0)
    max_epochs: int = knob(3, "upper bound on epochs", ge=1)
    patience: int = knob(1, "epochs without a better val R@5 before stopping", ge=1)
    seed: int = knob(0, "shuffling, dropout and the 80/20 split")
    split: str = knob(
        "fma",
        "fma: FMA's set_split (hash of track_id where missing) | hash: 80/10/10 by "
        "hash of track_id | random_80_20: the reference recipe (first 100 clips)",
        choices=SPLIT_MODES,
    )
    train_window: str = knob(
        "random",
        "random: each epoch a training track contributes one of its 5-s windows, drawn by "
        "(seed, epoch), as LAION-CLAP and TTMR++ train | first: always its first window "
        "(before whole tracks); validation and test use the first window",
        choices=TRAIN_WINDOWS,
    )
    resample_templates: bool = knob(
        False, "draw each epoch's prompt from the stored template renderings"
    )
    feedback_weight: float = knob(
        0.25,
        "chance per epoch that a training track liked in search feedback (DuckDB "
        "search_feedback, training part) is paired with a liked query instead of its "
        "prompt; 0 ignores feedback",
        ge=0,
        le=1,
    )
    wise_ft_steps: int = knob(
        10,
        "WiSE-FT after training: the weights (1-a)*pre-trained + a*fine-tuned for a = 0, "
        "1/steps, ..., 1 are scored on validation and the best a is registered (a = 1: "
        "plain fine-tuning); 0 registers the best epoch as it is",
        ge=0,
        le=100,
    )
    device: str = DEVICE.field()
    precision: str = knob(
        "auto",
        "auto (bf16 autocast on CUDA cards that support it, else fp32), bf16 (CUDA only), fp32",
        choices=PRECISIONS,
    )
    cpu_threads: int = knob(
        0,
        "torch CPU threads, 0 = torch's default (1 is often faster for the tiny model on a "
        "busy machine)",
        ge=0,
    )
    shuffle_buffer: int = knob(128, "clips held for shuffling (memory ~1 MB per clip)", ge=1)
    feature_cache_mb: int = knob(
        256,
        "keep the log-mel features of up to this many MB of clips (256 KB each) in memory "
        "across epochs (not in the last one); 0 recomputes them every batch. 256 MB = 1,024 "
        "clips (all of the demo's): `clap_model` peaked at 2.0 GiB without the cache at "
        "N=1,000 and 5,000 (scale_rehearsal.py), so a run stays under 2.5 GB",
        ge=0,
    )
    log_checkpoints: bool = knob(True, "copy every epoch's checkpoint into the MLflow run")
    system_metrics: bool = knob(True, "CPU/GPU/memory metrics in MLflow (needs psutil)")
    resume: bool = knob(True, "continue an interrupted run with the same config and data")

    # Settings that change no number: they may differ between a run and its resumption.
    NON_NUMERIC = (
        "log_checkpoints",
        "system_metrics",
        "resume",
        "cpu_threads",
        "feature_cache_mb",
    )

    def validate(self) -> None:
        """TrainingError naming every knob out of its bounds (knobs.check)."""
        try:
            check(self, "training config")
        except ConfigError as exc:
            raise TrainingError(str(exc)) from exc

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def numeric_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k not in self.NON_NUMERIC}


@dataclass(frozen=True)
class TrainInputs:
    """Where training reads and writes, and the MLflow names it uses (from ``Settings``)."""

    model_source: str
    prompts_path: Path
    waveforms_dir: Path
    duckdb_path: Path | None
    checkpoints_dir: Path
    manifest_path: Path
    tracking_uri: str
    experiment: str
    registered_model: str = DEFAULT_REGISTERED_MODEL  # CLAP_REGISTERED_MODEL
    # The experiment's tracks and data version, recorded so that the new-tracks sensor
    # and `model_comparison` know what each run was trained on (None: not recorded).
    selection: Selection | None = None
    # MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING (Settings.system_metrics); the run config's
    # `system_metrics` can only turn the monitor off as well.
    system_metrics: bool = True

    @classmethod
    def from_settings(cls, settings: Settings) -> TrainInputs:
        try:
            selection = current_selection(
                settings.duckdb_path, settings.audio_dir, settings.max_tracks
            )
        except FileNotFoundError:
            selection = None  # no tracks table or audio folder: TrainingData.load says so
        return cls(
            model_source=settings.model,
            prompts_path=settings.prompts_path,
            waveforms_dir=settings.waveforms_dir,
            duckdb_path=settings.duckdb_path,
            checkpoints_dir=settings.checkpoints_dir,
            manifest_path=settings.training_manifest_path,
            tracking_uri=settings.mlflow_tracking_uri,
            experiment=settings.mlflow_experiment,
            registered_model=settings.registered_model,
            selection=selection,
            system_metrics=settings.system_metrics,
        )


def learning_rate_at(config: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """The learning rate of global optimiser step ``step`` (1-based).

    Linear warm-up over ``warmup_steps``, then constant or a cosine decay to zero at
    ``max_epochs * steps_per_epoch`` (open_clip's schedule). A pure function of the step,
    so a resumed run continues the same schedule.
    """
    if config.warmup_steps and step <= config.warmup_steps:
        return config.learning_rate * step / config.warmup_steps
    if config.lr_schedule == "constant":
        return config.learning_rate
    total = max(config.max_epochs * steps_per_epoch - config.warmup_steps, 1)
    progress = min(max(step - config.warmup_steps, 0) / total, 1.0)
    return 0.5 * (1 + math.cos(math.pi * progress)) * config.learning_rate
