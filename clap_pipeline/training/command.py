"""The standalone trainer behind ``clap-pipeline train`` / ``python -m clap_pipeline.training``
(what torchrun launches; the flags are parsed in ``cli/train.py``).

Settings come from the environment (``Settings.from_env``) with the command line's
overrides. Under torchrun every rank runs this; rank 0 prints progress and the
result. Started by Dagster through Pipes (the `clap_model` asset's ``torchrun``
launcher), rank 0 sends its progress lines as Dagster logs and the result as the
asset's materialization metadata; ``dagster_pipes`` is imported only then, so the
core never imports Dagster.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict
from typing import Any

from mlflow.exceptions import MlflowException

from clap_pipeline.config import ConfigError, started_by_dagster_pipes
from clap_pipeline.dataset import TrainingDataError
from clap_pipeline.model.clap import ModelLoadError
from clap_pipeline.reporting import pipes_metadata
from clap_pipeline.training.config import TrainConfig, TrainingError, TrainInputs
from clap_pipeline.training.distributed import Ranks
from clap_pipeline.training.loop import train
from clap_pipeline.training.report import TrainingResult, result_metadata


class _Reporter:
    """Where rank 0's lines and result go: stdout (+ Dagster through Pipes when it started us)."""

    def __init__(self, ranks: Ranks, quiet: bool, pipes: Any = None) -> None:
        self.ranks, self.quiet, self.pipes = ranks, quiet, pipes

    def line(self, message: str) -> None:
        if self.quiet or not self.ranks.is_main:
            return
        print(message, flush=True)
        if self.pipes is not None:
            self.pipes.log.info(message)

    def error(self, message: str) -> None:
        print(f"training failed (rank {self.ranks.rank}): {message}", file=sys.stderr, flush=True)
        if self.pipes is not None:
            self.pipes.log.error(f"training failed: {message}")

    def result(self, result: TrainingResult) -> None:
        print(json.dumps(_summary(result), indent=1), flush=True)
        if self.pipes is not None:
            self.pipes.report_asset_materialization(
                metadata=pipes_metadata(result_metadata(result))
            )


@contextlib.contextmanager
def _reporter(ranks: Ranks, quiet: bool) -> Iterator[_Reporter]:
    """Only rank 0 opens Pipes: one log stream and one materialization per launch."""
    if not (ranks.is_main and started_by_dagster_pipes()):
        yield _Reporter(ranks, quiet)
        return
    from dagster_pipes import open_dagster_pipes

    with open_dagster_pipes() as pipes:
        yield _Reporter(ranks, quiet, pipes)


def _summary(result: TrainingResult) -> dict[str, Any]:
    return {
        "mlflow_run_id": result.run_id,
        "run_url": result.run_url,
        "best_epoch": result.best_epoch,
        "best_checkpoint": str(result.best_checkpoint),
        "registered_model": asdict(result.report.registered_model)
        if result.report.registered_model
        else None,
        "manifest": str(result.manifest_path),
        "world_size": result.report.world_size,
        "wall_time_s": round(result.wall_time_s, 1),
        "train_clips_per_second": round(result.clips_per_second, 2),
    }


def _lost_a_peer(exc: RuntimeError) -> bool:
    """A collective failed because another rank went away (gloo/NCCL connection errors)."""
    import torch.distributed as dist

    text = str(exc).lower()
    return isinstance(exc, dist.DistError) or any(
        word in text for word in ("gloo", "nccl", "connection closed", "connection reset")
    )


def run_training(
    read_inputs: Callable[[], tuple[TrainConfig, TrainInputs]],
    *,
    dagster_run_id: str | None = None,
    quiet: bool = False,
) -> int:
    """Train with what ``read_inputs`` returns; the exit status (2: inputs, 3: MLflow, 4: a peer).

    ``read_inputs`` runs inside the reporter, so a setting's error reaches Dagster too.
    """
    ranks = Ranks.from_env()
    with _reporter(ranks, quiet) as reporter:
        try:
            config, inputs = read_inputs()
            result = train(
                config,
                inputs,
                dagster_run_id=dagster_run_id,
                on_progress=lambda p: reporter.line(p.message),
                ranks=ranks,
            )
        except (ConfigError, ModelLoadError, TrainingDataError, TrainingError) as exc:
            reporter.error(str(exc))
            return 2
        except RuntimeError as exc:
            if not (ranks.distributed and _lost_a_peer(exc)):
                raise
            reporter.error(
                f"rank {ranks.rank} of {ranks.world_size} lost the other ranks ({exc}): a "
                "process of this launch, on this host or another, died. Start the same "
                "launch again on every host: training resumes after the last completed epoch."
            )
            return 4
        except MlflowException as exc:  # e.g. the tracking server was gone past the retries
            reporter.error(
                f"the MLflow tracking store {inputs.tracking_uri} failed: {exc}. "
                "Checkpoints of completed epochs are kept; run again once it answers and the "
                "training resumes in the same MLflow run."
            )
            return 3
        if result is not None:
            reporter.result(result)
    return 0
