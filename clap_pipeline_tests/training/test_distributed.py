"""Data-parallel training: gathered loss = one big batch, disjoint shards, torchrun end to end."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from clap_pipeline import tracking
from clap_pipeline.model.clap import load_clap, tokenize
from clap_pipeline.training.config import TrainConfig, TrainingError
from clap_pipeline.training.data import TrainingData, shuffled_batches
from clap_pipeline.training.distributed import Ranks
from clap_pipeline.training.loop import train, train_step
from clap_pipeline.training.loss import optimizer_groups, prepare_logit_scales
from clap_pipeline.training.resume import RESUME_FILE
from clap_pipeline_tests.training_fixtures import (
    SyntheticData,
    mlflow_store,
    training_inputs,
    write_training_dataset,
)

GLOBAL_BATCH = 16
WORLD = 2


def _step_inputs(model_dir: Path) -> tuple[torch.Tensor, list[str]]:
    """16 fixed (features, prompt) rows: the same on every process."""
    generator = torch.Generator().manual_seed(7)
    features = torch.randn(GLOBAL_BATCH, 1, 1001, 64, generator=generator) * 10 - 40
    texts = [f"{('drone', 'whistle', 'noise', 'clicks')[i % 4]} music {i}" for i in range(16)]
    return features, texts


def _model_and_optimizer(model_dir: Path):
    loaded = load_clap(model_dir)
    model = loaded.model
    prepare_logit_scales(model)
    # Dropout masks and batch-norm batch statistics are per process by nature; the
    # equivalence is about the loss and gradient arithmetic, so they are held fixed.
    model.eval()
    return loaded, model


def _one_step(model, loaded, features, texts, ranks: Ranks) -> float:
    # Plain SGD: the parameters move by lr * gradient, so equal parameters mean equal
    # gradients. (AdamW's first step is ~lr * g / (|g| + 1e-8): an element whose gradient
    # is ~1e-8 would turn float rounding into a visible difference.)
    optimizer = torch.optim.SGD(optimizer_groups(model_of(model), 0.0), lr=1.0)
    tokens = tokenize(loaded.tokenizer, texts, torch.device("cpu"))
    return train_step(
        model, optimizer, features, tokens, torch.device("cpu"), precision="fp32", ranks=ranks
    )


def model_of(model):
    return model.module if isinstance(model, DistributedDataParallel) else model


def _rank_main(rank: int, model_dir: str, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        ranks = Ranks(rank=rank, world_size=WORLD, local_rank=rank)
        features, texts = _step_inputs(Path(model_dir))
        per_rank = GLOBAL_BATCH // WORLD
        rows = slice(rank * per_rank, (rank + 1) * per_rank)
        loaded, model = _model_and_optimizer(Path(model_dir))
        ddp = DistributedDataParallel(model)
        loss = _one_step(ddp, loaded, features[rows], texts[rows], ranks)
        params = {k: v.detach().clone() for k, v in model.named_parameters()}
        grads = {k: v.grad.clone() for k, v in model.named_parameters() if v.grad is not None}
        torch.save(
            {"loss": loss, "params": params, "grads": grads}, Path(out_dir) / f"rank{rank}.pt"
        )
    finally:
        dist.destroy_process_group()


def test_two_ranks_of_eight_step_like_one_process_of_sixteen(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    features, texts = _step_inputs(tiny_model_dir)
    loaded, model = _model_and_optimizer(tiny_model_dir)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    single_loss = _one_step(model, loaded, features, texts, Ranks.single())

    mp.start_processes(
        _rank_main,
        args=(str(tiny_model_dir), str(tmp_path / "rendezvous"), str(tmp_path)),
        nprocs=WORLD,
        join=True,
        start_method="spawn",
    )
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    for result in results:
        assert result["loss"] == pytest.approx(single_loss, abs=1e-5)
        grads = {n: v.grad for n, v in model.named_parameters() if v.grad is not None}
        assert set(result["grads"]) == set(grads)
        for name, grad in grads.items():
            torch.testing.assert_close(result["grads"][name], grad, atol=1e-6, rtol=1e-4)
        for name, value in model.named_parameters():
            torch.testing.assert_close(result["params"][name], value.detach(), atol=1e-5, rtol=0)

    # The step moved the weights (else equal parameters would prove nothing) ...
    moved = [n for n, v in model.named_parameters() if not torch.equal(before[n], v.detach())]
    assert "logit_scale_a" in moved and len(moved) > 10
    # ... and a rank that saw only its own 8 rows would have stepped elsewhere.
    local_loaded, local_model = _model_and_optimizer(tiny_model_dir)
    local_loss = _one_step(local_model, local_loaded, features[:8], texts[:8], Ranks.single())
    assert abs(local_loss - single_loss) > 1e-3


# ----------------------------------------------------------------------------- shards


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> SyntheticData:
    return write_training_dataset(tmp_path_factory.mktemp("ddp-data"))


def _load(synthetic: SyntheticData) -> TrainingData:
    d = synthetic.data_dir
    return TrainingData.load(
        d / "prompts.parquet", d / "waveforms", d / "clap.duckdb",
        split_mode="fma", seed=0, batch_size=4,
    )  # fmt: skip


def test_ranks_read_disjoint_shards_that_cover_the_training_rows(
    synthetic: SyntheticData,
) -> None:
    data = _load(synthetic)
    train_ids = set(synthetic.ids("train"))
    for epoch in (1, 2):
        shards = []
        for rank in range(WORLD):
            batches = list(
                shuffled_batches(
                    data.index, data.index.positions(data.splits.train), 1, seed=0,
                    epoch=epoch, buffer_clips=8, rank=rank, world_size=WORLD,
                )
            )  # fmt: skip
            shards.append({int(t) for pos, _ in batches for t in data.index.track_ids[pos]})
        assert shards[0].isdisjoint(shards[1])
        assert shards[0] | shards[1] == train_ids
        assert abs(len(shards[0]) - len(shards[1])) <= 1
    assert data.n_train_batches(4, WORLD) == len(train_ids) // WORLD // 4
    # One process reads what it always read.
    positions = data.index.positions(data.splits.train)
    one = list(shuffled_batches(data.index, positions, 4, seed=0, epoch=1, buffer_clips=8))
    assert {int(t) for pos, _ in one for t in data.index.track_ids[pos]} == train_ids


def test_resume_with_another_world_size_is_refused(
    synthetic: SyntheticData, tiny_model_dir: Path, tmp_path: Path
) -> None:
    store = mlflow_store(tmp_path / "mlruns")
    inputs = training_inputs(synthetic.data_dir, tiny_model_dir, store, tmp_path)
    config = TrainConfig(batch_size=8, max_epochs=1, system_metrics=False, log_checkpoints=False)
    train(config, inputs)
    (state_path,) = inputs.checkpoints_dir.glob(f"*/{RESUME_FILE}")
    # As if a 2-process launch had been killed after epoch 1 of 2.
    state = json.loads(state_path.read_text())
    state.update(status="in_progress", world_size=2)
    tensors = state_path.parent / "resume-state-epoch-1.pt"
    torch.save({"optimizer": {}, "torch_rng": torch.get_rng_state()}, tensors)
    state["tensors"] = tensors.name
    state_path.write_text(json.dumps(state))
    with pytest.raises(TrainingError, match=r"world_size 2 .*this launch has world_size 1"):
        train(config, inputs)


# ----------------------------------------------------------------------------- torchrun


def torchrun_command(synthetic: SyntheticData, model_dir: Path, store: str, *extra: str):
    """`torchrun --standalone --nproc_per_node 2 -m clap_pipeline.training` on CPU, and its env."""
    env = {
        **os.environ,
        "CLAP_DATA_DIR": str(synthetic.data_dir),
        "OMP_NUM_THREADS": "1",
        "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING": "false",
    }
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "clap_pipeline.training", "--data-dir", str(synthetic.data_dir),
        "--model", str(model_dir), "--tracking-uri", store, "--experiment", "ddp",
        "--device", "cpu", "--batch-size", "4", "--patience", "5",
        "--learning-rate", "5e-3", "--no-log-checkpoints", "--no-system-metrics",
        "--cpu-threads", "1", *extra,
    ]  # fmt: skip
    return command, env


def test_torchrun_two_processes_make_one_mlflow_run(
    synthetic: SyntheticData, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """The real `torchrun --standalone --nproc_per_node 2 -m clap_pipeline.training` on CPU."""
    store = mlflow_store(tmp_path / "mlruns")
    command, env = torchrun_command(synthetic, tiny_model_dir, store, "--max-epochs", "2")
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout[done.stdout.index("\n{\n") :])
    assert summary["world_size"] == 2
    client = tracking.client(store)
    experiment = client.get_experiment_by_name("ddp")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    (run,) = runs
    assert run.info.status == "FINISHED" and run.info.run_id == summary["mlflow_run_id"]
    assert run.data.params["world_size"] == "2"
    assert run.data.params["global_batch_size"] == "8"
    history = client.get_metric_history(run.info.run_id, "val_text_to_audio_recall_at_5")
    assert sorted(m.step for m in history) == [1, 2]
    # 32 training clips, 2 ranks x 4 per step: 4 steps of the global batch of 8 per epoch.
    clips = client.get_metric_history(run.info.run_id, "train_loss")
    assert len(clips) == 2 and all(np.isfinite(m.value) for m in clips)
    assert done.stdout.count("epoch 1 done") == 1  # only rank 0 reports
    manifest = json.loads(Path(summary["manifest"]).read_text())
    assert manifest["world_size"] == 2
    assert [e["epoch"] for e in manifest["epochs"]] == [1, 2]


def _resumable(checkpoints: Path) -> bool:
    for path in checkpoints.glob(f"*/{RESUME_FILE}"):
        state = json.loads(path.read_text())
        if state.get("status") == "in_progress" and state.get("world_size") == 2:
            return True
    return False


def test_a_killed_torchrun_launch_resumes_with_the_same_world_size(
    synthetic: SyntheticData, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """kill -9 of the launch (torchrun and its ranks) mid-training; the same command resumes."""
    store = mlflow_store(tmp_path / "mlruns")
    # Epochs take about a second here: 8 leave time to kill the launch in the middle.
    command, env = torchrun_command(
        synthetic, tiny_model_dir, store, "--max-epochs", "8", "--patience", "8"
    )
    first = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        seen = []
        for line in first.stdout:
            seen.append(line)
            if line.startswith("epoch 1 done"):
                break
        assert any(line.startswith("epoch 1 done") for line in seen), "".join(seen)[-3000:]
        deadline = time.monotonic() + 60  # until rank 0 has saved the resume state
        while not _resumable(synthetic.data_dir / "checkpoints"):
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        # torchrun starts each rank in a session of its own: kill the ranks, then torchrun.
        for proc in [*psutil.Process(first.pid).children(recursive=True), first]:
            with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError):
                proc.kill()
        first.wait()

    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = re.search(r"after epoch (\d+)", done.stdout)
    assert resumed is not None, done.stdout[-3000:] + done.stderr[-3000:]
    resumed_after = int(resumed[1])
    assert 1 <= resumed_after < 8 and "epoch 1 done" not in done.stdout
    assert f"epoch {resumed_after + 1} done" in done.stdout
    summary = json.loads(done.stdout[done.stdout.index("\n{\n") :])
    client = tracking.client(store)
    (run,) = client.search_runs([client.get_experiment_by_name("ddp").experiment_id])
    assert run.info.run_id == summary["mlflow_run_id"] and run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "val_text_to_audio_recall_at_5")
    assert sorted(m.step for m in history) == list(range(1, 9))
    manifest = json.loads(Path(summary["manifest"]).read_text())
    assert manifest["world_size"] == 2
    assert [e["epoch"] for e in manifest["epochs"]] == list(range(1, 9))
