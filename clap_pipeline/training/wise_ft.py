"""WiSE-FT: interpolate the fine-tuned weights back toward the pre-trained ones.

Fine-tuning forgets what pre-training knew (open_clip #740, #826). Wortsman et al.'s
weight-space ensembles (WiSE-FT, CVPR 2022) answer it with one line of arithmetic::

    θ(α) = (1 − α) · θ_zero-shot + α · θ_fine-tuned

For each α of a grid (``TrainConfig.wise_ft_steps``: α = 0, 1/steps, …, 1) the
interpolated model is scored on the validation split; the α with the best selection
metric is kept (``loss.SELECTION_METRIC``; ties: lower validation loss, then the larger
α, so α = 1, plain fine-tuning, wins a tie). Its weights are the registered version.
Float tensors are interpolated, others (integer position ids) come from the fine-tuned
model; both models must share one architecture, as a fine-tuned copy does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from clap_pipeline.metrics import SELECTION_METRIC
from clap_pipeline.model.clap import load_clap
from clap_pipeline.reporting import Log
from clap_pipeline.training.config import TrainingError
from clap_pipeline.training_report import AlphaScore, WiseFt

FOLDER = "wise-ft"  # theta(alpha) next to the run's epoch-<k> checkpoints (alpha < 1)
# (val loss, validation retrieval metrics) of the model as it is loaded now.
Score = Callable[[torch.nn.Module], tuple[float, dict[str, float]]]


def alpha_grid(steps: int) -> list[float]:
    """``steps + 1`` evenly spaced α from 0 (zero-shot) to 1 (fine-tuned)."""
    return [round(i / steps, 6) for i in range(steps + 1)]


def interpolate(
    zero_shot: Mapping[str, torch.Tensor], fine_tuned: Mapping[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """θ(α) of two state dicts of one architecture."""
    if zero_shot.keys() != fine_tuned.keys():
        differ = sorted(set(zero_shot) ^ set(fine_tuned))
        raise TrainingError(
            f"WiSE-FT needs the pre-trained and fine-tuned models to share one architecture; "
            f"their weights differ in {differ[:5]}: set wise_ft_steps 0 to skip interpolation"
        )
    out = {}
    for name, tuned in fine_tuned.items():
        zero = zero_shot[name]
        if tuned.is_floating_point() and zero.shape == tuned.shape:
            out[name] = torch.lerp(zero.to(tuned.dtype), tuned, alpha)
        else:
            out[name] = tuned
    return out


def _selection_key(score: AlphaScore) -> tuple[float, float, float]:
    return (score.metrics[SELECTION_METRIC], -score.val_loss, score.alpha)


def choose_alpha(grid: list[AlphaScore]) -> AlphaScore:
    """The α kept: best selection metric, then lower validation loss, then the larger α."""
    return max(grid, key=_selection_key)


def interpolate_weights(
    model: torch.nn.Module,
    zero_shot_source: str,
    fine_tuned_checkpoint: str,
    steps: int,
    score: Score,
    save: Callable[[torch.nn.Module], str],
    log: Log,
) -> WiseFt:
    """Score θ(α) on validation for each α of the grid, keep the best.

    ``model`` (the trained ``ClapModel``, on its device) is loaded with each θ(α) in turn
    and ends with the chosen one; ``save`` writes it when α < 1 (α = 1 is the
    fine-tuned checkpoint itself).
    """
    zero = {k: v.detach().cpu() for k, v in load_clap(zero_shot_source).model.state_dict().items()}
    tuned = {
        k: v.detach().cpu() for k, v in load_clap(fine_tuned_checkpoint).model.state_dict().items()
    }
    grid = []
    for alpha in alpha_grid(steps):
        model.load_state_dict(interpolate(zero, tuned, alpha))
        val_loss, metrics = score(model)
        grid.append(AlphaScore(alpha=alpha, val_loss=val_loss, metrics=metrics))
        log(
            f"WiSE-FT alpha {alpha:.2f}: val loss {val_loss:.4f}, val text->audio R@5 "
            f"{metrics[SELECTION_METRIC]:.3f}"
        )
    chosen = choose_alpha(grid)
    model.load_state_dict(interpolate(zero, tuned, chosen.alpha))
    checkpoint = fine_tuned_checkpoint if chosen.alpha == 1 else save(model)
    log(
        f"WiSE-FT: alpha {chosen.alpha:.2f} kept (val text->audio R@5 "
        f"{chosen.metrics[SELECTION_METRIC]:.3f}; alpha 1 = plain fine-tuning "
        f"{grid[-1].metrics[SELECTION_METRIC]:.3f})"
    )
    return WiseFt(alpha=chosen.alpha, checkpoint=str(checkpoint), grid=tuple(grid))
