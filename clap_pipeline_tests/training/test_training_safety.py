"""Hostile resume files and runs abandoned by a killed trainer (issue 13, items 2 and 6)."""

from __future__ import annotations

import json
import os
import pickle
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import torch

from clap_pipeline import tracking
from clap_pipeline.training.config import TrainConfig, TrainingError
from clap_pipeline.training.loop import TrainingHooks, train
from clap_pipeline_tests.training_fixtures import (
    mlflow_store,
    one_torch_thread,  # noqa: F401 (autouse fixture)
    training_inputs,
    write_training_dataset,
)

QUICK = TrainConfig(
    batch_size=16, learning_rate=1e-3, max_epochs=2, patience=5, system_metrics=False
)


class SimulatedKill(Exception):
    pass


class _RunsCode:
    """Unpickling this object writes a file: what a crafted resume file would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code ran"))


@pytest.fixture(scope="module")
def killed_after_epoch_1(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path):
    """A run interrupted after epoch 1: its folder holds resume.json and the tensors file."""
    root = tmp_path_factory.mktemp("resume")
    data = write_training_dataset(root / "data").data_dir
    store = mlflow_store(root / "mlruns")
    inputs = training_inputs(data, tiny_model_dir, store, root, experiment="safety-tests")

    def kill(record) -> None:
        if record.epoch == 1:
            raise SimulatedKill

    with pytest.raises(SimulatedKill):
        train(QUICK, inputs, hooks=TrainingHooks(after_epoch=kill))
    (state_file,) = inputs.checkpoints_dir.glob("*/resume.json")
    return inputs, state_file


def _edited(state_file: Path, **changes) -> str:
    original = state_file.read_text()
    state = json.loads(original)
    state.update(changes)
    state_file.write_text(json.dumps(state))
    return original


def test_resume_tensors_are_loaded_without_unpickling_code(
    killed_after_epoch_1, tmp_path: Path
) -> None:
    inputs, state_file = killed_after_epoch_1
    tensors = state_file.parent / json.loads(state_file.read_text())["tensors"]
    genuine = tensors.read_bytes()
    marker = tmp_path / "pwned"
    torch.save({"optimizer": _RunsCode(marker)}, tensors)
    try:
        with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
            train(QUICK, inputs)
    finally:
        tensors.write_bytes(genuine)
    assert not marker.exists()


@pytest.mark.parametrize("name", ["../../outside.pt", "/tmp/resume-state-epoch-1.pt", 7])
def test_resume_tensors_outside_the_run_folder_are_refused(killed_after_epoch_1, name) -> None:
    inputs, state_file = killed_after_epoch_1
    original = _edited(state_file, tensors=name)
    try:
        with pytest.raises(TrainingError, match="refusing tensors file name") as err:
            train(QUICK, inputs)
    finally:
        state_file.write_text(original)
    assert str(state_file) in str(err.value) and repr(name) in str(err.value)


def test_resume_checkpoints_outside_the_run_folder_are_refused(
    killed_after_epoch_1, tmp_path: Path
) -> None:
    inputs, state_file = killed_after_epoch_1
    state = json.loads(state_file.read_text())
    history = [{**state["history"][0], "checkpoint": str(tmp_path / "elsewhere" / "epoch-1")}]
    original = _edited(state_file, history=history)
    try:
        with pytest.raises(TrainingError, match="refusing checkpoint"):
            train(QUICK, inputs)
    finally:
        state_file.write_text(original)


def test_the_genuine_resume_file_still_resumes(killed_after_epoch_1) -> None:
    inputs, state_file = killed_after_epoch_1
    result = train(QUICK, inputs)
    assert result.run_id == state_file.parent.name
    assert result.resumed_from_epoch == 1
    assert [r.epoch for r in result.epochs] == [1, 2]


def _dead_pid() -> tuple[int, float]:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    started = psutil.Process(proc.pid).create_time()
    proc.wait()
    return proc.pid, started


def test_abandoned_running_runs_are_marked_killed_with_a_note(tmp_path: Path) -> None:
    uri = mlflow_store(tmp_path / "mlruns")
    client = tracking.client(uri)
    experiment = tracking.configure(uri, "abandoned")

    def running(tags: dict[str, str]) -> str:
        return client.create_run(experiment, tags=tags).info.run_id

    host = socket.gethostname()
    pid, started = _dead_pid()
    dead = running(
        {
            tracking.TAG_TRAINER_PID: str(pid),
            tracking.TAG_TRAINER_HOST: host,
            tracking.TAG_TRAINER_STARTED: f"{started:.3f}",
        }
    )
    unrecorded = running({})
    me = psutil.Process(os.getpid())
    alive = running(
        {
            tracking.TAG_TRAINER_PID: str(me.pid),
            tracking.TAG_TRAINER_HOST: host,
            tracking.TAG_TRAINER_STARTED: f"{me.create_time():.3f}",
        }
    )
    elsewhere = running(
        {
            tracking.TAG_TRAINER_PID: str(pid),
            tracking.TAG_TRAINER_HOST: "another-host",
            tracking.TAG_TRAINER_STARTED: f"{started:.3f}",
        }
    )
    finished = running({})
    client.set_terminated(finished, status="FINISHED")
    current = running({})

    killed = tracking.close_abandoned_runs(client, experiment, current)

    assert sorted(killed) == sorted([dead, unrecorded])
    status = {r: client.get_run(r).info.status for r in (dead, unrecorded, alive, elsewhere)}
    assert status == {
        dead: "KILLED",
        unrecorded: "KILLED",
        alive: "RUNNING",
        elsewhere: "RUNNING",
    }
    note = client.get_run(dead).data.tags[tracking.TAG_KILLED_NOTE]
    assert f"pid {pid}" in note and current in note
    assert client.get_run(dead).data.tags["mlflow.note.content"] == note
    assert client.get_run(finished).info.status == "FINISHED"
    assert client.get_run(current).data.tags[tracking.TAG_TRAINER_PID] == str(os.getpid())
