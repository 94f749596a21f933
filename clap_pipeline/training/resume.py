"""Resume state: ``resume.json`` + optimizer/RNG tensors beside the checkpoints of a run."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import torch

from clap_pipeline.storage import atomic_path, write_text_atomic
from clap_pipeline.training.config import TrainingError

RESUME_FILE = "resume.json"
RESUME_TENSORS = "resume-state-epoch-{epoch}.pt"  # optimizer + RNG after that epoch


def training_fingerprint(payload: dict[str, Any]) -> str:
    """Identifies a run's numbers (config, model, data): equal fingerprints may resume."""
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


def load_resume_state(checkpoints_dir: Path, fingerprint: str) -> dict[str, Any] | None:
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


def save_resume_state(
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


def resumable_state(
    mlflow_client, checkpoints_dir: Path, fingerprint: str, enabled: bool, world_size: int = 1
) -> dict[str, Any] | None:
    """The interrupted run to continue, or None (start a new one).

    A run trained by another number of processes is refused: its global batch, shards
    and optimizer steps differ, so it cannot continue the same schedule.
    """
    if not enabled:
        return None
    state = load_resume_state(checkpoints_dir, fingerprint)
    if state is None:
        return None
    history = state["history"]
    if history and not (Path(history[-1]["checkpoint"]) / "config.json").exists():
        return None  # its last checkpoint was deleted: start over
    try:
        run = mlflow_client.get_run(state["run_id"])
    except Exception:  # the MLflow store was wiped: start over
        return None
    if run.info.lifecycle_stage == "deleted":
        return None
    saved_world = int(state.get("world_size", 1))
    if saved_world != world_size:
        raise TrainingError(
            f"MLflow run {state['run_id']} was interrupted after epoch {state['last_epoch']} "
            f"with world_size {saved_world} ({checkpoints_dir / state['run_id'] / RESUME_FILE}); "
            f"this launch has world_size {world_size}. Resume it with the same number of "
            f"processes (torchrun --nproc_per_node/--nnodes giving {saved_world}), or start "
            "a new run with --no-resume (resume: false in the clap_model config)."
        )
    return state
