"""What one training call shares between its phases, and how it reports progress.

``loop.py`` drives a ``Session`` through set-up, epochs and registration; ``report.py``
logs and writes what it holds. Both import it from here, so neither imports the other's
internals.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from clap_pipeline.training.config import TrainConfig, TrainInputs
from clap_pipeline.training.data import TrainingData
from clap_pipeline.training.distributed import Ranks
from clap_pipeline.training.loss import EpochRecord


@dataclass(frozen=True)
class TrainingProgress:
    message: str
    epoch: int = 0
    step: int = 0
    steps_per_epoch: int = 0


ProgressCallback = Callable[[TrainingProgress], None]


@dataclass
class TrainingHooks:
    """Observers of the loop (monitoring, and fault injection in tests)."""

    before_step: Callable[[int, int, torch.nn.Module], None] | None = None
    after_epoch: Callable[[EpochRecord], None] | None = None


@dataclass
class Session:
    """What one training call shares between its phases (``client`` is None off rank 0)."""

    config: TrainConfig
    inputs: TrainInputs
    data: TrainingData
    device: torch.device
    ranks: Ranks
    client: Any  # MlflowClient on rank 0
    experiment_id: str
    run_id: str
    fingerprint: str
    val_fingerprint: str
    report: ProgressCallback
    hooks: TrainingHooks
    history: list[EpochRecord]
    resumed_from_epoch: int
    prior_wall_s: float
    wall_start: float
    resume_tensors: str | None = None
    monitor: Any = None
    status: str = "FAILED"

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
            "world_size": self.ranks.world_size,
            "status": status,
            "last_epoch": self.history[-1].epoch if self.history else 0,
            "history": [asdict(r) for r in self.history],
            "wall_time_s": self.wall_time_s(),
        }
