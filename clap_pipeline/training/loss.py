"""The contrastive loss (one process or gathered over ranks), the logit-scale clamp, AdamW
groups and the epoch selection rule (best validation R@5, early stopping)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from clap_pipeline import run_names
from clap_pipeline.metrics import SELECTION_METRIC
from clap_pipeline.training_report import EpochRow

LOGIT_SCALE_MAX = math.log(100)  # LAION / CLIP clamp the learned temperature to <= 100


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


def contrastive_loss_rows(
    text_embeds: torch.Tensor,
    audio_embeds: torch.Tensor,
    all_text_embeds: torch.Tensor,
    all_audio_embeds: torch.Tensor,
    logit_scale: torch.Tensor,
    first_row: int,
) -> torch.Tensor:
    """This rank's rows of the global-batch symmetric InfoNCE (open_clip's ``local_loss``).

    ``text_embeds``/``audio_embeds`` are this rank's (b, d) pairs, rows ``first_row`` ..
    ``first_row + b - 1`` of the gathered (N, d) ``all_*`` tensors. Each local audio is
    scored against all N texts and each local text against all N audios, so the mean of
    this value over the ranks is ``contrastive_loss`` of the whole global batch, and
    with ``distributed.gather_with_grad`` DDP's gradient average is that loss's gradient,
    the logit scale's included.
    """
    scale = logit_scale.float().exp()
    logits_per_audio = scale * audio_embeds.float() @ all_text_embeds.float().T
    logits_per_text = scale * text_embeds.float() @ all_audio_embeds.float().T
    labels = first_row + torch.arange(logits_per_audio.shape[0], device=logits_per_audio.device)
    return (
        F.cross_entropy(logits_per_audio, labels) + F.cross_entropy(logits_per_text, labels)
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
        """The epoch's row of training.json (``training_report.EpochRow``)."""
        row = EpochRow(self.epoch, self.checkpoint, self.train_loss, self.val_loss, self.metrics)
        return row.to_dict()

    def mlflow_metrics(self) -> dict[str, float]:
        out = {
            "train_loss": self.train_loss,
            run_names.VAL_LOSS: self.val_loss,
            "train_clips_per_second": self.train_clips / max(self.train_seconds, 1e-9),
            "epoch_train_seconds": self.train_seconds,
            "epoch_data_seconds": self.data_seconds,
            "epoch_eval_seconds": self.eval_seconds,
            "logit_scale_a": self.logit_scale_a,
            "logit_scale_t": self.logit_scale_t,
        }
        out.update({run_names.val_metric(k): v for k, v in self.metrics.items()})
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
