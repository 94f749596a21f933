"""WiSE-FT's arithmetic and its choice of alpha (the training run itself: test_training.py)."""

from __future__ import annotations

import pytest
import torch

from clap_pipeline.training.config import TrainConfig, TrainingError
from clap_pipeline.training.wise_ft import alpha_grid, choose_alpha, interpolate
from clap_pipeline.training_report import AlphaScore


def test_the_grid_runs_from_zero_shot_to_fine_tuned() -> None:
    assert alpha_grid(4) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert alpha_grid(3) == [0.0, 0.333333, 0.666667, 1.0]
    TrainConfig(wise_ft_steps=0).validate()  # off
    with pytest.raises(TrainingError, match="wise_ft_steps must be in"):
        TrainConfig(wise_ft_steps=101).validate()


def test_interpolation_mixes_float_weights_and_keeps_integer_buffers() -> None:
    zero = {"w": torch.tensor([0.0, 2.0]), "ids": torch.tensor([0, 1, 2])}
    tuned = {"w": torch.tensor([4.0, -2.0]), "ids": torch.tensor([5, 6, 7])}
    assert torch.equal(interpolate(zero, tuned, 0.0)["w"], zero["w"])
    assert torch.equal(interpolate(zero, tuned, 1.0)["w"], tuned["w"])
    mixed = interpolate(zero, tuned, 0.25)
    assert mixed["w"].tolist() == [1.0, 1.0]
    assert mixed["ids"] is tuned["ids"]  # never averaged: ids, counters
    with pytest.raises(TrainingError, match=r"share one architecture.*'extra'"):
        interpolate(zero, {**tuned, "extra": torch.zeros(1)}, 0.5)


def test_alpha_is_chosen_by_recall_then_loss_then_the_larger_alpha() -> None:
    def score(alpha: float, r5: float, loss: float) -> AlphaScore:
        return AlphaScore(alpha, loss, {"text_to_audio_recall_at_5": r5})

    assert (
        choose_alpha([score(0.0, 0.2, 3.0), score(0.5, 0.4, 3.0), score(1.0, 0.3, 2.0)]).alpha
        == 0.5
    )
    assert choose_alpha([score(0.5, 0.4, 2.9), score(1.0, 0.4, 3.0)]).alpha == 0.5
    # A full tie goes to plain fine-tuning's side.
    assert choose_alpha([score(0.5, 0.4, 3.0), score(1.0, 0.4, 3.0)]).alpha == 1.0
