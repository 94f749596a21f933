"""Fine-tune CLAP on (prompt, 5-s clip) pairs: symmetric InfoNCE, early stopping, MLflow, resume.

No Dagster here: the `clap_model` asset is a thin wrapper, and the same code
runs standalone on a GPU host::

    python -m clap_pipeline.training --max-epochs 3 --batch-size 16

Per epoch: train loss, validation loss and R@1/5/10 in both directions are
logged to MLflow (step = epoch) and a ``save_pretrained`` checkpoint is written
to ``$CLAP_DATA_DIR/checkpoints/<mlflow run id>/epoch-<k>/``. The best epoch
(highest validation text->audio R@5, ties -> lower validation loss) is registered
as a version of ``clap-fma`` and ends in ``reports/training.json``.

A run killed mid-epoch resumes from its last completed epoch, in the same MLflow
run, when started again with the same config and data (``resume.json`` + optimizer
state beside the checkpoints).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import io
import json
import math
import random
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from clap_pipeline import tracking
from clap_pipeline.config import DEFAULT_REGISTERED_MODEL, REPO_ROOT, Settings
from clap_pipeline.evaluation.metrics import retrieval_metrics
from clap_pipeline.metadata.selection import Selection, current_selection
from clap_pipeline.storage import atomic_path, remove_orphaned_temps, write_text_atomic
from clap_pipeline.training.data import SPLIT_MODES, ClipBatch, TrainingData, prefetch
from clap_pipeline.training.model import load_clap, pick_device, tokenize

LOGIT_SCALE_MAX = math.log(100)  # LAION / CLIP clamp the learned temperature to <= 100
SELECTION_METRIC = "text_to_audio_recall_at_5"
RESUME_FILE = "resume.json"
RESUME_TENSORS = "resume-state-epoch-{epoch}.pt"  # optimizer + RNG after that epoch
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


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class TrainConfig:
    """Every training setting (the reference recipe as defaults)."""

    batch_size: int = field(default=16, metadata={"help": "clips per contrastive batch"})
    learning_rate: float = field(default=3e-5, metadata={"help": "AdamW learning rate"})
    weight_decay: float = field(
        default=0.01,
        metadata={"help": "AdamW weight decay (not on biases, norms and the logit scale)"},
    )
    lr_schedule: str = field(
        default="constant",
        metadata={"help": "constant | cosine (decay to 0 at the last step of max_epochs)"},
    )
    warmup_steps: int = field(
        default=0, metadata={"help": "optimiser steps of linear learning-rate warm-up"}
    )
    max_epochs: int = field(default=3, metadata={"help": "upper bound on epochs"})
    patience: int = field(
        default=1, metadata={"help": "epochs without a better val R@5 before stopping"}
    )
    seed: int = field(default=0, metadata={"help": "shuffling, dropout and the 80/20 split"})
    split: str = field(
        default="fma",
        metadata={
            "help": "fma: FMA's set_split (hash of track_id where missing) | hash: 80/10/10 by "
            "hash of track_id | random_80_20: the reference recipe (first 100 clips)"
        },
    )
    resample_templates: bool = field(
        default=False,
        metadata={"help": "draw each epoch's prompt from the stored template renderings"},
    )
    feedback_weight: float = field(
        default=0.25,
        metadata={
            "help": "chance per epoch that a training track liked in search feedback "
            "(DuckDB search_feedback, training part) is paired with a liked query instead "
            "of its prompt; 0 ignores feedback"
        },
    )
    device: str = field(
        default="auto", metadata={"help": "auto (CUDA > MPS > CPU), cuda, mps, cpu"}
    )
    precision: str = field(
        default="auto",
        metadata={
            "help": "auto (bf16 autocast on CUDA cards that support it, else fp32), bf16 "
            "(CUDA only), fp32"
        },
    )
    cpu_threads: int = field(
        default=0,
        metadata={
            "help": "torch CPU threads, 0 = torch's default (1 is often faster for the tiny "
            "model on a busy machine)"
        },
    )
    shuffle_buffer: int = field(
        default=128, metadata={"help": "clips held for shuffling (memory ~1 MB per clip)"}
    )
    feature_cache_mb: int = field(
        default=1024,
        metadata={
            "help": "keep the log-mel features of up to this many MB of clips (256 KB each) "
            "in memory across epochs; 0 recomputes them every batch"
        },
    )
    registered_model: str = field(
        default=DEFAULT_REGISTERED_MODEL, metadata={"help": "MLflow registered model name"}
    )
    log_checkpoints: bool = field(
        default=True, metadata={"help": "copy every epoch's checkpoint into the MLflow run"}
    )
    system_metrics: bool = field(
        default=True, metadata={"help": "CPU/GPU/memory metrics in MLflow (needs psutil)"}
    )
    resume: bool = field(
        default=True,
        metadata={"help": "continue an interrupted run with the same config and data"},
    )

    # Settings that change no number: they may differ between a run and its resumption.
    NON_NUMERIC = (
        "log_checkpoints",
        "system_metrics",
        "resume",
        "registered_model",
        "cpu_threads",
        "feature_cache_mb",
    )

    def validate(self) -> None:
        problems = []
        if self.batch_size < 2:
            problems.append(f"batch_size must be >= 2 (contrastive), got {self.batch_size}")
        if not self.learning_rate > 0:
            problems.append(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.lr_schedule not in LR_SCHEDULES:
            problems.append(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.warmup_steps < 0:
            problems.append(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.max_epochs < 1:
            problems.append(f"max_epochs must be >= 1, got {self.max_epochs}")
        if self.patience < 1:
            problems.append(f"patience must be >= 1, got {self.patience}")
        if not 0 <= self.feedback_weight <= 1:
            problems.append(f"feedback_weight must be in [0, 1], got {self.feedback_weight}")
        if self.feature_cache_mb < 0:
            problems.append(f"feature_cache_mb must be >= 0, got {self.feature_cache_mb}")
        if self.cpu_threads < 0:
            problems.append(f"cpu_threads must be >= 0, got {self.cpu_threads}")
        if self.precision not in PRECISIONS:
            problems.append(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.split not in SPLIT_MODES:
            problems.append(f"split must be one of {SPLIT_MODES}, got {self.split!r}")
        if problems:
            raise TrainingError("invalid training config: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def help(name: str) -> str:
        return TrainConfig.__dataclass_fields__[name].metadata["help"]

    def numeric_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k not in self.NON_NUMERIC}


@dataclass(frozen=True)
class TrainInputs:
    """Where training reads and writes (from ``Settings`` + the MLflow resource)."""

    model_source: str
    prompts_path: Path
    waveforms_dir: Path
    duckdb_path: Path | None
    checkpoints_dir: Path
    manifest_path: Path
    tracking_uri: str
    experiment: str
    # The experiment's tracks and data version, recorded so that the new-tracks sensor
    # and `model_comparison` know what each run was trained on (None: not recorded).
    selection: Selection | None = None

    @classmethod
    def from_settings(
        cls, settings: Settings, tracking_uri: str | None = None, experiment: str | None = None
    ) -> TrainInputs:
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
            tracking_uri=tracking_uri or settings.mlflow_tracking_uri,
            experiment=experiment or settings.mlflow_experiment,
            selection=selection,
        )


# --------------------------------------------------------------------------- loss, clamp, rule


def contrastive_loss(
    text_embeds: torch.Tensor, audio_embeds: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """Symmetric InfoNCE as LAION trains CLAP: ``(CE(audio->text) + CE(text->audio)) / 2``.

    ``text_embeds`` and ``audio_embeds`` are L2-normalised (B, d) with pair i <-> i;
    ``logit_scale`` is the log inverse temperature shared by both directions
    (``logit_scale_a``, as in LAION's ``ClipLoss``). Not ``ClapModel``'s logits: they
    scale the text->audio direction by ``logit_scale_t``, which LAION never trained, and
    transformers' ``return_loss=True`` has two text->audio terms.
    """
    logits_per_audio = logit_scale.float().exp() * audio_embeds.float() @ text_embeds.float().T
    labels = torch.arange(logits_per_audio.shape[0], device=logits_per_audio.device)
    return (
        F.cross_entropy(logits_per_audio, labels) + F.cross_entropy(logits_per_audio.T, labels)
    ) / 2


def prepare_logit_scales(model: torch.nn.Module) -> None:
    """Train ``logit_scale_a`` only: ``logit_scale_t`` is unused by the loss (see above)."""
    model.logit_scale_t.requires_grad_(False)


@torch.no_grad()
def clamp_logit_scale(model: torch.nn.Module) -> None:
    """Keep the learned log inverse temperature in [0, ln 100] (LAION's clamp after each step)."""
    model.logit_scale_a.clamp_(0.0, LOGIT_SCALE_MAX)


def optimizer_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups as open_clip builds them: no weight decay on gains, biases, logit scale."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        exclude = param.ndim < 2 or "logit_scale" in name or "norm" in name or "bias" in name
        (no_decay if exclude else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


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


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    val_loss: float
    metrics: dict[str, float]  # retrieval_metrics() keys on the validation split
    checkpoint: str | None = None
    train_clips: int = 0
    train_seconds: float = 0.0
    data_seconds: float = 0.0
    eval_seconds: float = 0.0
    logit_scale_a: float = 0.0
    logit_scale_t: float = 0.0

    @property
    def val_recall_at_5(self) -> float:
        return self.metrics[SELECTION_METRIC]

    def manifest_row(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "checkpoint": self.checkpoint,
            "train_loss": self.train_loss,
            "val_loss": self.val_loss,
            **{f"val_{k}": v for k, v in self.metrics.items()},
        }

    def mlflow_metrics(self) -> dict[str, float]:
        out = {
            "train_loss": self.train_loss,
            "val_loss": self.val_loss,
            "train_clips_per_second": self.train_clips / max(self.train_seconds, 1e-9),
            "epoch_train_seconds": self.train_seconds,
            "epoch_data_seconds": self.data_seconds,
            "epoch_eval_seconds": self.eval_seconds,
            "logit_scale_a": self.logit_scale_a,
            "logit_scale_t": self.logit_scale_t,
        }
        out.update({f"val_{k}": v for k, v in self.metrics.items()})
        return out


def _selection_key(record: EpochRecord) -> tuple[float, float, int]:
    # Higher R@5, then lower val loss, then the earlier epoch.
    return (record.val_recall_at_5, -record.val_loss, -record.epoch)


def best_epoch(history: Sequence[EpochRecord]) -> EpochRecord:
    """The epoch with the highest validation text->audio R@5 (ties: lower validation loss)."""
    if not history:
        raise ValueError("no epochs to choose from")
    return max(history, key=_selection_key)


def should_stop(history: Sequence[EpochRecord], patience: int) -> bool:
    """True once ``patience`` epochs in a row came after the best one without beating it."""
    if not history:
        return False
    return history[-1].epoch - best_epoch(history).epoch >= patience


# --------------------------------------------------------------------------- progress, hooks


@dataclass(frozen=True)
class TrainingProgress:
    message: str
    epoch: int = 0
    step: int = 0
    steps_per_epoch: int = 0
    clips_per_second: float = 0.0
    eta_seconds: float = 0.0


ProgressCallback = Callable[[TrainingProgress], None]


@dataclass
class TrainingHooks:
    """Observers of the loop (monitoring, and fault injection in tests)."""

    before_step: Callable[[int, int, torch.nn.Module], None] | None = None
    after_epoch: Callable[[EpochRecord], None] | None = None


def _fmt_seconds(s: float) -> str:
    s = max(0, round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


# --------------------------------------------------------------------------- result


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
    manifest: dict[str, Any] = field(default_factory=dict)

    def curve_markdown(self) -> str:
        b64 = base64.b64encode(self.curve_png).decode()
        return f"![training curve](data:image/png;base64,{b64})"


# --------------------------------------------------------------------------- helpers


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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


def _autocast(device: torch.device, precision: str = "auto"):
    """A context factory: bf16 autocast on CUDA (``auto`` where the card supports it)."""
    bf16_ok = device.type == "cuda" and torch.cuda.is_bf16_supported()
    if precision == "bf16" and not bf16_ok:
        raise TrainingError(
            f"precision='bf16' needs a CUDA card with bf16 support; the device is {device}: "
            "use precision 'auto' or 'fp32'"
        )
    if precision in ("auto", "bf16") and bf16_ok:
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext


def _features_module(feature_extractor, device: torch.device) -> torch.nn.Module:
    from clap_pipeline.training.features import (
        LogMelFeatures,  # the teammate's batched torch log-mel
    )

    return LogMelFeatures(feature_extractor).to(device).eval()


def _oom_types() -> tuple[type[BaseException], ...]:
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    return (oom,) if oom else ()


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
        t2a = [r.metrics[f"text_to_audio_recall_at_{k}"] for r in history]
        a2t = [r.metrics[f"audio_to_text_recall_at_{k}"] for r in history]
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


# --------------------------------------------------------------------------- one epoch


class CachedFeatures:
    """Log-mel features by track id, computed once and kept on the CPU within a budget.

    A stored clip no longer than the 10-s window is tiled, never randomly cropped, so its
    features are a pure function of its samples: reusing them in later epochs changes no
    number and saves the STFT of every clip after the first epoch.
    """

    def __init__(self, features: torch.nn.Module, budget_mb: int) -> None:
        self.features = features
        self.budget_bytes = budget_mb * 2**20
        self.store: dict[int, torch.Tensor] = {}
        self.bytes = 0

    def __call__(self, batch: ClipBatch, device: torch.device) -> torch.Tensor:
        ids = [int(t) for t in batch.track_ids]
        missing = [i for i, t in enumerate(ids) if t not in self.store]
        fresh: dict[int, torch.Tensor] = {}
        if missing:
            waves = torch.from_numpy(batch.waveforms[missing]).to(device, non_blocking=True)
            with torch.no_grad():
                computed = self.features(waves)
            cacheable = waves.shape[-1] <= getattr(self.features, "max_samples", 0)
            for j, i in enumerate(missing):
                fresh[i] = computed[j]
                size = computed[j].numel() * computed[j].element_size()
                if cacheable and self.bytes + size <= self.budget_bytes:
                    self.store[ids[i]] = computed[j].to("cpu", copy=True)
                    self.bytes += size
            if len(missing) == len(ids):
                return computed
        return torch.stack(
            [fresh[i] if i in fresh else self.store[t].to(device) for i, t in enumerate(ids)]
        )


def batch_tensors(
    batch: ClipBatch,
    features: torch.nn.Module | CachedFeatures,
    tokenizer,
    device: torch.device,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Log-mel features (B, 1, 1001, 64) computed on ``device`` (or cached) + the prompts."""
    if isinstance(features, CachedFeatures):
        input_features = features(batch, device)
    else:
        waves = torch.from_numpy(batch.waveforms).to(device, non_blocking=True)
        with torch.no_grad():
            input_features = features(waves)
    return input_features, tokenize(tokenizer, batch.texts, device)


def train_step(
    model,
    optimizer: torch.optim.Optimizer,
    input_features: torch.Tensor,
    tokens: dict[str, torch.Tensor],
    device: torch.device,
    *,
    epoch: int = 0,
    step: int = 0,
    precision: str = "auto",
) -> float:
    """One optimiser step on the symmetric InfoNCE; the logit scale is clamped afterwards.

    A non-finite loss raises before the weights change.
    """
    with _autocast(device, precision)():
        out = model(
            input_ids=tokens["input_ids"],
            attention_mask=tokens["attention_mask"],
            input_features=input_features,
        )
    loss = contrastive_loss(out.text_embeds, out.audio_embeds, model.logit_scale_a)
    value = float(loss.detach())
    if not math.isfinite(value):
        raise NonFiniteLossError(epoch, step, value)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    clamp_logit_scale(model)
    return value


@torch.no_grad()
def evaluate_split(
    model,
    features: torch.nn.Module | CachedFeatures,
    tokenizer,
    data: TrainingData,
    split: str,
    batch_size: int,
    device: torch.device,
    precision: str = "auto",
) -> tuple[float, dict[str, float]]:
    """(loss, retrieval metrics) of ``model`` on a split, in a fixed order.

    The loss is the symmetric InfoNCE over consecutive blocks of ``batch_size``
    clips (the remainder joins the last block), comparable with the train loss.
    """
    model.eval()
    autocast = _autocast(device, precision)
    text_embs, audio_embs = [], []
    for batch in data.eval_batches(split, batch_size):
        input_features, tokens = batch_tensors(batch, features, tokenizer, device)
        with autocast():
            out = model(
                input_ids=tokens["input_ids"],
                attention_mask=tokens["attention_mask"],
                input_features=input_features,
            )
        text_embs.append(out.text_embeds.float().cpu())
        audio_embs.append(out.audio_embeds.float().cpu())
    text, audio = torch.cat(text_embs), torch.cat(audio_embs)
    sim = text @ audio.T
    n = sim.shape[0]
    logit_scale = model.logit_scale_a.detach().float().cpu()
    bounds = list(range(0, n, batch_size))
    if len(bounds) > 1 and n - bounds[-1] < batch_size:
        bounds.pop()  # the short remainder joins the previous block
    loss_sum = 0.0
    for i, start in enumerate(bounds):
        end = bounds[i + 1] if i + 1 < len(bounds) else n
        loss_sum += float(contrastive_loss(text[start:end], audio[start:end], logit_scale)) * (
            end - start
        )
    return loss_sum / n, retrieval_metrics(sim.numpy())


@dataclass
class _EpochStats:
    loss: float
    clips: int
    seconds: float
    data_seconds: float


def _train_epoch(
    *,
    model,
    optimizer: torch.optim.Optimizer,
    features: torch.nn.Module | CachedFeatures,
    tokenizer,
    data: TrainingData,
    config: TrainConfig,
    epoch: int,
    device: torch.device,
    hooks: TrainingHooks,
    report: Callable[[TrainingProgress], None],
    epochs_left_after: int,
) -> _EpochStats:
    model.train()
    steps = data.n_train_batches(config.batch_size)
    batches = prefetch(
        data.train_batches(
            config.batch_size,
            seed=config.seed,
            epoch=epoch,
            resample=config.resample_templates,
            buffer_clips=config.shuffle_buffer,
        )
    )
    start = last_report = time.perf_counter()
    loss_sum, clips, data_seconds = 0.0, 0, 0.0
    with contextlib.closing(batches):  # stops the reader thread when a step raises
        for step in range(1, steps + 1):
            t_data = time.perf_counter()
            batch = next(batches)
            input_features, tokens = batch_tensors(batch, features, tokenizer, device)
            data_seconds += time.perf_counter() - t_data
            if hooks.before_step:
                hooks.before_step(epoch, step, model)
            lr = learning_rate_at(config, (epoch - 1) * steps + step, steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            value = train_step(
                model,
                optimizer,
                input_features,
                tokens,
                device,
                epoch=epoch,
                step=step,
                precision=config.precision,
            )
            loss_sum += value * len(batch)
            clips += len(batch)
            now = time.perf_counter()
            if step == 1 or step == steps or now - last_report >= 10:
                last_report = now
                rate = clips / max(now - start, 1e-9)
                eta = (steps - step + epochs_left_after * steps) * config.batch_size / rate
                report(
                    TrainingProgress(
                        message=(
                            f"epoch {epoch}/{config.max_epochs} step {step}/{steps} "
                            f"loss {value:.4f} lr {lr:.2e} {rate:.1f} clips/s "
                            f"ETA {_fmt_seconds(eta)} (at most; early stopping may cut it)"
                        ),
                        epoch=epoch,
                        step=step,
                        steps_per_epoch=steps,
                        clips_per_second=rate,
                        eta_seconds=eta,
                    )
                )
    return _EpochStats(
        loss=loss_sum / max(clips, 1),
        clips=clips,
        seconds=time.perf_counter() - start,
        data_seconds=data_seconds,
    )


# --------------------------------------------------------------------------- resume state


def _fingerprint(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[
        :16
    ]


def resume_tensors_path(run_dir: Path, name: object) -> Path:
    """``run_dir / name`` for a resume tensors file name from resume.json, refusing any other.

    The name must be ``resume-state-epoch-<N>.pt`` itself: no folder part, so a crafted
    resume.json cannot point the trainer at a file outside its run folder.
    """
    if not isinstance(name, str) or not re.fullmatch(r"resume-state-epoch-\d+\.pt", name):
        raise TrainingError(
            f"{run_dir / RESUME_FILE}: refusing tensors file name {name!r} (expected "
            f"{RESUME_TENSORS.format(epoch='<N>')} inside {run_dir}); delete that resume.json "
            "to start over"
        )
    return run_dir / name


def _load_resume_state(checkpoints_dir: Path, fingerprint: str) -> dict[str, Any] | None:
    """The newest unfinished run with this fingerprint whose tensors file is present."""
    candidates = []
    for path in checkpoints_dir.glob(f"*/{RESUME_FILE}"):
        try:
            state = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if (
            state.get("fingerprint") == fingerprint
            and state.get("status") == "in_progress"
            and resume_tensors_path(path.parent, state.get("tensors")).exists()
        ):
            for record in state.get("history", []):
                checkpoint = Path(str(record.get("checkpoint")))
                if checkpoint.parent.resolve() != path.parent.resolve():
                    raise TrainingError(
                        f"{path}: refusing checkpoint {str(checkpoint)!r} outside the run "
                        f"folder {path.parent}; delete that resume.json to start over"
                    )
            candidates.append((path.stat().st_mtime, state))
    return max(candidates, key=lambda c: c[0])[1] if candidates else None


def _save_resume_state(
    run_dir: Path,
    state: dict[str, Any],
    optimizer: torch.optim.Optimizer | None,
) -> None:
    """Tensors first (named by epoch), then the JSON naming them, then drop older tensors.

    A kill between the two writes leaves the JSON pointing at the previous,
    still complete, pair of checkpoint and optimizer state.
    """
    name = RESUME_TENSORS.format(epoch=state["last_epoch"])
    if optimizer is not None:
        with atomic_path(run_dir / name) as tmp:
            torch.save(
                {
                    "epoch": state["last_epoch"],
                    "optimizer": optimizer.state_dict(),
                    "torch_rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state_all()
                    if torch.cuda.is_available()
                    else None,
                },
                tmp,
            )
        state = {**state, "tensors": name}
    write_text_atomic(run_dir / RESUME_FILE, json.dumps(state, indent=1))
    for old in run_dir.glob(RESUME_TENSORS.format(epoch="*")):
        if old.name != state.get("tensors"):
            old.unlink(missing_ok=True)  # optimizer state weighs 2x the model


# --------------------------------------------------------------------------- main entry


@dataclass
class _Session:
    """What one training call shares between its phases."""

    config: TrainConfig
    inputs: TrainInputs
    data: TrainingData
    device: torch.device
    client: Any  # MlflowClient
    experiment_id: str
    run_id: str
    fingerprint: str
    val_fingerprint: str
    report: Callable[[TrainingProgress], None]
    hooks: TrainingHooks
    history: list[EpochRecord]
    resumed_from_epoch: int
    prior_wall_s: float
    wall_start: float

    @property
    def run_dir(self) -> Path:
        return self.inputs.checkpoints_dir / self.run_id

    def wall_time_s(self) -> float:
        return self.prior_wall_s + time.perf_counter() - self.wall_start

    def state(self, status: str = "in_progress") -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "experiment_id": self.experiment_id,
            "fingerprint": self.fingerprint,
            "status": status,
            "last_epoch": self.history[-1].epoch if self.history else 0,
            "history": [asdict(r) for r in self.history],
            "wall_time_s": self.wall_time_s(),
        }


def train(
    config: TrainConfig,
    inputs: TrainInputs,
    *,
    dagster_run_id: str | None = None,
    on_progress: ProgressCallback | None = None,
    hooks: TrainingHooks | None = None,
) -> TrainingResult:
    """Fine-tune, track in MLflow, register the best epoch, write ``training.json``.

    Resumes the newest interrupted run with the same config and data (when
    ``config.resume``) from its last completed epoch, in the same MLflow run.
    """
    config.validate()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-shard bars would flood the run log
    wall_start = time.perf_counter()

    def report(p: TrainingProgress) -> None:
        if on_progress:
            on_progress(p)

    data = TrainingData.load(
        inputs.prompts_path,
        inputs.waveforms_dir,
        inputs.duckdb_path,
        split_mode=config.split,
        seed=config.seed,
        batch_size=config.batch_size,
        feedback_weight=config.feedback_weight,
    )
    report(TrainingProgress(message=f"data: {data.describe_counts()}"))
    device = pick_device(config.device)
    _autocast(device, config.precision)  # an impossible precision fails before any run exists
    fingerprint = _fingerprint(
        {
            "config": config.numeric_dict(),
            "model": inputs.model_source,
            "device": device.type,
            "prompts": data.prompts_version,
            "waveforms": data.index.data_version,
            "splits": data.splits.as_dict(),
        }
    )
    mlflow_client = tracking.client(inputs.tracking_uri)
    experiment_id = tracking.configure(inputs.tracking_uri, inputs.experiment)
    state = _resumable_state(mlflow_client, inputs.checkpoints_dir, fingerprint, config.resume)
    history = [EpochRecord(**r) for r in state["history"]] if state else []
    # Weights: the last completed epoch of an interrupted run, else CLAP_MODEL.
    loaded = load_clap(history[-1].checkpoint if history else inputs.model_source)
    if state:
        run_id = state["run_id"]
        mlflow_client.update_run(run_id, status="RUNNING")
        report(TrainingProgress(message=f"resuming MLflow run {run_id} after epoch {len(history)}"))
    else:
        run_id = mlflow_client.create_run(
            experiment_id,
            run_name=f"clap-{time.strftime('%Y%m%d-%H%M%S')}",
            tags={"mlflow.source.name": "clap_pipeline.training"},
        ).info.run_id
    tracking.close_abandoned_runs(mlflow_client, experiment_id, run_id)  # after kill -9
    session = _Session(
        config=config,
        inputs=inputs,
        data=data,
        device=device,
        client=mlflow_client,
        experiment_id=experiment_id,
        run_id=run_id,
        fingerprint=fingerprint,
        val_fingerprint=data.validation_fingerprint(),
        report=report,
        hooks=hooks or TrainingHooks(),
        history=history,
        resumed_from_epoch=history[-1].epoch if history else 0,
        prior_wall_s=float(state["wall_time_s"]) if state else 0.0,
        wall_start=wall_start,
    )

    # From here on the MLflow run exists: every exit closes it with a status.
    status, monitor = "FAILED", None
    threads_before = torch.get_num_threads()
    if config.cpu_threads:
        torch.set_num_threads(config.cpu_threads)
    try:
        _log_run_setup(session, dagster_run_id)
        monitor = _start_system_metrics(config, run_id, inputs.tracking_uri, resumed=bool(state))
        result = _fit(session, loaded, resume_tensors=state["tensors"] if state else None)
        status = "FINISHED"
        return result
    except NonFiniteLossError as exc:
        mlflow_client.set_tag(run_id, "failure", str(exc))
        raise
    except RuntimeError as exc:
        # torch.OutOfMemoryError, or cuBLAS/MPS errors that only say "out of memory".
        if not isinstance(exc, _oom_types()) and "out of memory" not in str(exc).lower():
            raise
        mlflow_client.set_tag(run_id, "failure", "out of memory")
        raise TrainingError(
            f"out of memory on {device} at batch_size={config.batch_size}: lower batch_size "
            f"(e.g. {max(2, config.batch_size // 2)}) in the clap_model config"
        ) from exc
    except BaseException as exc:
        if not isinstance(exc, Exception):  # Ctrl-C, Dagster run termination
            status = "KILLED"
        raise
    finally:
        torch.set_num_threads(threads_before)
        if monitor is not None:
            with contextlib.suppress(Exception):
                monitor.finish()
        mlflow_client.set_terminated(run_id, status=status)


def _selection_json(selection: Selection | None) -> dict[str, Any] | None:
    if selection is None:
        return None
    return {
        "data_version": selection.data_version,
        "tracks_sha256": selection.tracks_sha256,
        "track_ids": list(selection.track_ids),
    }


def _resumable_state(
    mlflow_client, checkpoints_dir: Path, fingerprint: str, enabled: bool
) -> dict[str, Any] | None:
    if not enabled:
        return None
    state = _load_resume_state(checkpoints_dir, fingerprint)
    if state is None:
        return None
    history = state["history"]
    if history and not (Path(history[-1]["checkpoint"]) / "config.json").exists():
        return None  # its last checkpoint was deleted: start over
    try:
        run = mlflow_client.get_run(state["run_id"])
    except Exception:  # the MLflow store was wiped: start over
        return None
    return None if run.info.lifecycle_stage == "deleted" else state


def _fit(session: _Session, loaded, *, resume_tensors: str | None) -> TrainingResult:
    """The epochs (from the last completed one), then registration and the report."""
    config, data, device, history = session.config, session.data, session.device, session.history
    session.run_dir.mkdir(parents=True, exist_ok=True)
    remove_orphaned_temps(session.run_dir.glob(".*.tmp"))  # of a trainer killed mid-save
    model = loaded.model.to(device)
    features = CachedFeatures(
        _features_module(loaded.feature_extractor, device), config.feature_cache_mb
    )
    tokenizer = loaded.tokenizer
    prepare_logit_scales(model)
    optimizer = torch.optim.AdamW(
        optimizer_groups(model, config.weight_decay), lr=config.learning_rate
    )
    set_seed(config.seed)  # after loading: from_pretrained may draw random numbers
    if resume_tensors:
        # weights_only: tensors and plain containers only, never unpickled code.
        saved = torch.load(resume_tensors_path(session.run_dir, resume_tensors), weights_only=True)
        optimizer.load_state_dict(saved["optimizer"])
        torch.set_rng_state(saved["torch_rng"])
        if saved.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(saved["cuda_rng"])
    else:
        _save_resume_state(session.run_dir, session.state(), optimizer)

    epoch = history[-1].epoch if history else 0
    while epoch < config.max_epochs and not should_stop(history, config.patience):
        epoch += 1
        stats = _train_epoch(
            model=model,
            optimizer=optimizer,
            features=features,
            tokenizer=tokenizer,
            data=data,
            config=config,
            epoch=epoch,
            device=device,
            hooks=session.hooks,
            report=session.report,
            epochs_left_after=config.max_epochs - epoch,
        )
        t_eval = time.perf_counter()
        val_loss, metrics = evaluate_split(
            model,
            features,
            tokenizer,
            data,
            "validation",
            config.batch_size,
            device,
            config.precision,
        )
        if not math.isfinite(val_loss):
            raise NonFiniteLossError(epoch, None, val_loss, phase="validation")
        eval_seconds = time.perf_counter() - t_eval
        checkpoint = _save_checkpoint(model, loaded.processor, session.run_dir / f"epoch-{epoch}")
        record = EpochRecord(
            epoch=epoch,
            train_loss=stats.loss,
            val_loss=val_loss,
            metrics=metrics,
            checkpoint=str(checkpoint),
            train_clips=stats.clips,
            train_seconds=stats.seconds,
            data_seconds=stats.data_seconds,
            eval_seconds=eval_seconds,
            logit_scale_a=float(model.logit_scale_a.detach()),
            logit_scale_t=float(model.logit_scale_t.detach()),
        )
        _log_epoch(session.client, session.run_id, record, config.log_checkpoints)
        history.append(record)
        # The epoch counts as done only once its checkpoint and the resume state are on disk.
        _save_resume_state(session.run_dir, session.state(), optimizer)
        session.report(
            TrainingProgress(
                message=(
                    f"epoch {epoch} done: train loss {stats.loss:.4f}, val loss "
                    f"{val_loss:.4f}, val R@1/5/10 text→audio "
                    f"{metrics['text_to_audio_recall_at_1']:.3f}/"
                    f"{metrics['text_to_audio_recall_at_5']:.3f}/"
                    f"{metrics['text_to_audio_recall_at_10']:.3f}, "
                    f"{stats.clips / max(stats.seconds, 1e-9):.1f} clips/s"
                ),
                epoch=epoch,
            )
        )
        if session.hooks.after_epoch:
            session.hooks.after_epoch(record)

    result = _finish(session, features, tokenizer)
    _save_resume_state(session.run_dir, session.state("completed"), None)  # drops the tensors
    return result


def _save_checkpoint(model, processor, target: Path) -> Path:
    with atomic_path(target) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)
    return target.resolve()


def _log_run_setup(session: _Session, dagster_run_id: str | None) -> None:
    """Params (the whole config, data versions, sizes, commit) and tags of the run."""
    from mlflow.entities import Param, RunTag

    config, data, mlflow_client, run_id = (
        session.config,
        session.data,
        session.client,
        session.run_id,
    )
    params = {
        **{f"config.{k}": v for k, v in config.to_dict().items()},
        "model_source": session.inputs.model_source,
        "device": str(session.device),
        "n_train": len(data.splits.train),
        "n_val": len(data.splits.validation),
        "n_test": len(data.splits.test),
        "n_from_fma_split": data.splits.n_from_fma,
        "data_version_prompts": data.prompts_version,
        "data_version_waveforms": data.index.data_version,
        "git_commit": git_commit(),
    }
    if session.inputs.selection is not None:
        params["data_version"] = session.inputs.selection.data_version
        params["n_selected"] = len(session.inputs.selection.track_ids)
    # A resumed run already has its params; non-numeric settings may have changed.
    existing = mlflow_client.get_run(run_id).data.params
    new = [Param(k, str(v)) for k, v in params.items() if k not in existing]
    tags = {
        "training_fingerprint": session.fingerprint,
        tracking.TAG_VAL_FINGERPRINT: session.val_fingerprint,
        "mlflow.source.git.commit": params["git_commit"],
    }
    if dagster_run_id:
        tags["dagster_run_id"] = dagster_run_id
        previous = mlflow_client.get_run(run_id).data.tags.get("dagster_run_ids", "")
        ids = [i for i in previous.split(",") if i]
        tags["dagster_run_ids"] = ",".join(
            [*ids, dagster_run_id] if dagster_run_id not in ids else ids
        )
    if session.resumed_from_epoch:
        tags["resumed_from_epoch"] = str(session.resumed_from_epoch)
    mlflow_client.log_batch(run_id, params=new, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def _start_system_metrics(config: TrainConfig, run_id: str, tracking_uri: str, resumed: bool):
    import importlib.util
    import os

    if not config.system_metrics or importlib.util.find_spec("psutil") is None:
        return None
    if os.environ.get("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "").lower() in ("false", "0"):
        return None
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(run_id, resume_logging=resumed, tracking_uri=tracking_uri)
        monitor.start()
        return monitor
    except Exception:  # monitoring is best effort; training goes on
        return None


def _log_epoch(mlflow_client, run_id: str, record: EpochRecord, log_checkpoint: bool) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric(k, float(v), now, record.epoch) for k, v in record.mlflow_metrics().items()]
    mlflow_client.log_batch(run_id, metrics=metrics)
    if log_checkpoint and record.checkpoint:
        mlflow_client.log_artifacts(run_id, record.checkpoint, f"checkpoints/epoch-{record.epoch}")


def champion_recall(
    mlflow_client,
    name: str,
    val_fingerprint: str,
    score: Callable[[Path], float],
    report: Callable[[TrainingProgress], None] = lambda p: None,
    tracking_uri: str | None = None,
) -> tuple[Any, float | None]:
    """The champion version of ``name`` and its val R@5 on *this* validation set.

    The tagged value when the champion was validated on the same set, else
    ``score(champion_folder)`` (new tracks changed the set). None when there is
    no champion, or its files are gone (then the new model replaces it).
    """
    champion = tracking.alias_version(mlflow_client, name, tracking.CHAMPION)
    if champion is None:
        return None, None
    if champion.tags.get(tracking.TAG_VAL_FINGERPRINT) == val_fingerprint:
        return champion, float(champion.tags[tracking.TAG_VAL_R5])
    try:
        folder = tracking.version_local_dir(champion, tracking_uri=tracking_uri)
    except Exception as exc:
        report(TrainingProgress(message=f"champion v{champion.version} unavailable ({exc})"))
        return champion, None
    report(TrainingProgress(message=f"scoring champion v{champion.version} on this validation set"))
    return champion, score(folder)


def _register(session: _Session, best: EpochRecord, features, tokenizer) -> tuple[str, str]:
    """Register the best checkpoint; alias champion if it beats the champion, else challenger."""
    config, client = session.config, session.client
    run = client.get_run(session.run_id)
    source = (
        f"{run.info.artifact_uri}/checkpoints/epoch-{best.epoch}"
        if config.log_checkpoints
        else str(best.checkpoint)
    )
    version = tracking.register_checkpoint(
        client,
        config.registered_model,
        run_id=session.run_id,
        source=source,
        tags={
            tracking.TAG_LOCAL_CHECKPOINT: str(best.checkpoint),
            tracking.TAG_VAL_R5: repr(best.val_recall_at_5),
            tracking.TAG_VAL_FINGERPRINT: session.val_fingerprint,
            tracking.TAG_EPOCH: str(best.epoch),
            "training_fingerprint": session.fingerprint,
        },
    )

    def score(folder: Path) -> float:
        model = load_clap(folder).model.to(session.device)
        _, metrics = evaluate_split(
            model, features, tokenizer, session.data, "validation", config.batch_size,
            session.device, config.precision,
        )  # fmt: skip
        return metrics[SELECTION_METRIC]

    champion, champion_r5 = champion_recall(
        client,
        config.registered_model,
        session.val_fingerprint,
        score,
        session.report,
        session.inputs.tracking_uri,
    )
    if champion is not None and str(champion.version) == version:
        alias = tracking.CHAMPION  # resumed after the promotion: keep it
    else:
        alias = tracking.choose_alias(best.val_recall_at_5, champion_r5)
    client.set_registered_model_alias(config.registered_model, alias, version)
    detail = (
        "no champion yet"
        if champion is None or champion_r5 is None
        else f"champion v{champion.version} val R@5 {champion_r5:.3f}"
    )
    client.set_model_version_tag(
        config.registered_model,
        version,
        "alias_decision",
        f"{alias}: val R@5 {best.val_recall_at_5:.3f} vs {detail}",
    )
    client.set_tag(session.run_id, "registered_model_version", version)
    client.set_tag(session.run_id, "registered_model_alias", alias)
    session.report(
        TrainingProgress(
            message=(
                f"best epoch {best.epoch} (val R@5 {best.val_recall_at_5:.3f}) registered as "
                f"{config.registered_model} v{version} @{alias} ({detail})"
            )
        )
    )
    return version, alias


def _finish(session: _Session, features, tokenizer) -> TrainingResult:
    """Best-epoch metrics, registry alias, curve, ``training.json`` (+ MLflow artifacts)."""
    from mlflow.entities import Metric, Param

    config, data, inputs, client = session.config, session.data, session.inputs, session.client
    history = session.history
    best = best_epoch(history)
    wall_time_s = session.wall_time_s()
    clips_per_second = sum(r.train_clips for r in history) / max(
        sum(r.train_seconds for r in history), 1e-9
    )
    now = int(time.time() * 1000)
    existing = client.get_run(session.run_id).data.params
    client.log_batch(
        session.run_id,
        metrics=[
            Metric("best_epoch", best.epoch, now, 0),
            Metric(f"best_val_{SELECTION_METRIC}", best.val_recall_at_5, now, 0),
            Metric("best_val_loss", best.val_loss, now, 0),
            Metric("wall_time_s", wall_time_s, now, 0),
            Metric("train_clips_per_second", clips_per_second, now, 0),
        ],
        params=[Param("best_epoch", str(best.epoch))] if "best_epoch" not in existing else [],
    )
    version, alias = _register(session, best, features, tokenizer)

    png = training_curve_png(history, best.epoch)
    manifest = {
        "mlflow_run_id": session.run_id,
        "model_source": inputs.model_source,
        "device": str(session.device),
        "best_epoch": best.epoch,
        "best_checkpoint": str(best.checkpoint),
        "epochs": [r.manifest_row() for r in history],
        "splits": data.splits.as_dict(),
        "registered_model": {"name": config.registered_model, "version": version, "alias": alias},
        "config": config.to_dict(),
        # Extras beyond the contract, for reports and the comparison asset.
        "mlflow_tracking_uri": inputs.tracking_uri,
        "mlflow_experiment_id": session.experiment_id,
        "split_mode": data.splits.mode,
        "validation_fingerprint": session.val_fingerprint,
        "data_versions": {"prompts": data.prompts_version, "waveforms": data.index.data_version},
        "selection": _selection_json(inputs.selection),
        "stopped_early": history[-1].epoch < config.max_epochs,
        "wall_time_s": wall_time_s,
        "train_clips_per_second": clips_per_second,
    }
    write_text_atomic(inputs.manifest_path, json.dumps(manifest, indent=1))
    with atomic_path(inputs.manifest_path.parent / "training_curve.png") as tmp:
        tmp.write_bytes(png)
    with tempfile.TemporaryDirectory() as tmp_dir:
        png_path = Path(tmp_dir) / "training_curve.png"
        png_path.write_bytes(png)
        client.log_artifact(session.run_id, str(png_path))
    client.log_artifact(session.run_id, str(inputs.manifest_path))

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
        stopped_early=manifest["stopped_early"],
        n_train=len(data.splits.train),
        n_val=len(data.splits.validation),
        n_test=len(data.splits.test),
        manifest=manifest,
    )


# --------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m clap_pipeline.training",
        description="Fine-tune CLAP on the prompts + waveforms under $CLAP_DATA_DIR "
        "(the `clap_model` asset without Dagster).",
    )
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{f.metadata['help']} (default {f.default})"
        if isinstance(f.default, bool):
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_text
            )
        elif f.name == "split":
            parser.add_argument(flag, choices=SPLIT_MODES, default=f.default, help=help_text)
        else:
            parser.add_argument(flag, type=type(f.default), default=f.default, help=help_text)
    parser.add_argument("--data-dir", help="default $CLAP_DATA_DIR (or ./data)")
    parser.add_argument("--model", help="hub id or save_pretrained folder (default $CLAP_MODEL)")
    parser.add_argument("--tracking-uri", help="default $MLFLOW_TRACKING_URI or mlruns/mlflow.db")
    parser.add_argument("--experiment", help="default $CLAP_MLFLOW_EXPERIMENT")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    return parser


def main(argv: list[str] | None = None) -> int:
    from clap_pipeline.config import ConfigError
    from clap_pipeline.training.data import TrainingDataError
    from clap_pipeline.training.model import ModelLoadError

    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        if args.data_dir or args.model:
            settings = Settings.build(
                data_dir=args.data_dir or settings.data_dir,
                metadata_dir=settings.metadata_dir,
                audio_dir=settings.audio_dir,
                model=args.model or settings.model,
                max_tracks=settings.max_tracks,
                mlflow_tracking_uri=settings.mlflow_tracking_uri,
                mlflow_experiment=settings.mlflow_experiment,
            )
        config = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})
        inputs = TrainInputs.from_settings(settings, args.tracking_uri, args.experiment)

        def show(p: TrainingProgress) -> None:
            if not args.quiet:
                print(p.message, flush=True)

        result = train(config, inputs, on_progress=show)
    except (ConfigError, ModelLoadError, TrainingDataError, TrainingError) as exc:
        print(f"training failed: {exc}", file=sys.stderr)
        return 2
    print(
        json.dumps(
            {
                "mlflow_run_id": result.run_id,
                "run_url": result.run_url,
                "best_epoch": result.best_epoch,
                "best_checkpoint": str(result.best_checkpoint),
                "registered_model": result.manifest["registered_model"],
                "manifest": str(result.manifest_path),
                "wall_time_s": round(result.wall_time_s, 1),
                "train_clips_per_second": round(result.clips_per_second, 2),
            },
            indent=1,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
