"""Examples a person can read: the top-1 prompt each model retrieves for the first clips.

Columns: zero-shot, then a sample of the epochs (first, best, last and evenly spaced
ones between, at most ``MAX_EPOCH_COLUMNS``): loading all 40 checkpoints of a long run
for ten clips cost more than the rest of the evaluation. Only those clips and the
split's prompts are embedded per checkpoint; an epoch whose checkpoint was not kept is
shown as such.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from clap_pipeline.dataset import WaveformIndex
from clap_pipeline.evaluation.inputs import EvalConfig, SplitClips
from clap_pipeline.evaluation.report import (
    QualitativeColumn,
    QualitativeReport,
    QualitativeRow,
    Top1,
)
from clap_pipeline.reporting import Log
from clap_pipeline.training_report import TrainingReport

if TYPE_CHECKING:  # the encoder module loads torch
    import torch

    from clap_pipeline.evaluation.encoder import Embedded

MAX_EPOCH_COLUMNS = 6
ZERO_SHOT = "zero-shot"


def top1_rows(text: np.ndarray, audio_first: np.ndarray, split: SplitClips) -> list[Top1]:
    scores = audio_first @ text.T  # (Q, N): clip q against every prompt of the split
    best = np.argmax(scores, axis=1)  # ties: the lowest track_id's prompt
    return [
        Top1(
            top1_track_id=split.track_ids[j],
            top1_prompt=split.prompts[j],
            score=float(scores[q, j]),
            # Correct = the clip's own prompt text (identical prompts of other clips count).
            correct=split.prompts[j] == split.prompts[q],
        )
        for q, j in enumerate(best.tolist())
    ]


def sample_epochs(epochs: list[int], best: int, limit: int = MAX_EPOCH_COLUMNS) -> list[int]:
    """First, best and last epoch, then evenly spaced ones between, ``limit`` at most."""
    ordered = sorted(set(epochs) | {best})
    if len(ordered) <= limit:
        return ordered
    chosen = {ordered[0], best, ordered[-1]}
    spots = np.linspace(0, len(ordered) - 1, limit)
    for spot in sorted(spots, key=lambda s: abs(s - (len(ordered) - 1) / 2)):  # middle first
        if len(chosen) >= limit:
            break
        chosen.add(ordered[round(spot)])
    return sorted(chosen)


def _columns(manifest: TrainingReport) -> tuple[list[tuple[QualitativeColumn, str | None]], int]:
    """(column, checkpoint) for zero-shot and the sampled epochs; the number of epochs."""
    best_epoch = manifest.best_epoch
    checkpoint_of = {r.epoch: r.checkpoint for r in manifest.epochs}
    checkpoint_of[best_epoch] = manifest.best_checkpoint
    columns = [(QualitativeColumn(ZERO_SHOT, 0, True), manifest.model_source)]
    for epoch in sample_epochs(list(checkpoint_of), best_epoch):
        checkpoint = checkpoint_of[epoch]
        kept = bool(checkpoint) and (Path(checkpoint) / "config.json").exists()
        name = f"epoch {epoch}" + (" (best)" if epoch == best_epoch else "")
        columns.append((QualitativeColumn(name, epoch, kept), checkpoint if kept else None))
    return columns, len(checkpoint_of)


def evaluate_qualitative(
    manifest: TrainingReport,
    clips: Mapping[str, SplitClips],
    embedded: Mapping[str, Embedded],
    index: WaveformIndex,
    device: torch.device,
    config: EvalConfig,
    say: Log,
) -> QualitativeReport:
    """The test split's first clips (validation's when test is empty) per column."""
    from clap_pipeline.evaluation.encoder import embed_first_clips  # loads torch

    split = clips["test"] if clips["test"].track_ids else clips.get("validation")
    q = min(config.qualitative_clips, len(split.track_ids)) if split else 0
    report = QualitativeReport(split=split.name if split else None)
    if not q:
        return report
    columns, report.n_epochs = _columns(manifest)
    results: dict[str, list[Top1] | None] = {}
    for column, checkpoint in columns:
        if column.name == ZERO_SHOT or column.name.endswith("(best)"):
            run = embedded["zero_shot" if column.name == ZERO_SHOT else "fine_tuned"]
            results[column.name] = top1_rows(run.text[split.name], run.audio[split.name][:q], split)
        elif checkpoint is None:
            results[column.name] = None
        else:
            say(f"qualitative: {column.name} from {checkpoint}")
            text, audio = embed_first_clips(checkpoint, split, q, index, device, config.batch_size)
            results[column.name] = top1_rows(text, audio, split)
    report.columns = [column for column, _ in columns]
    report.rows = [
        QualitativeRow(
            track_id=tid,
            prompt=split.prompts[i],
            results={name: None if rows is None else rows[i] for name, rows in results.items()},
        )
        for i, tid in enumerate(split.track_ids[:q])
    ]
    return report
