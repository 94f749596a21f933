"""The `clap_model` asset materialized by Dagster over the synthetic training set."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import pytest
from dagster import DagsterInstance, RunConfig, load_assets_from_modules, materialize

from clap_pipeline import tracking
from clap_pipeline.defs import training as training_defs
from clap_pipeline.defs.resources import ClapSettings
from clap_pipeline.defs.training import ClapTrainingConfig, clap_model
from clap_pipeline.training.config import TrainConfig
from clap_pipeline_tests.training_fixtures import (
    mlflow_store,
    one_torch_thread,  # noqa: F401 (autouse fixture)
    write_training_dataset,
)


def test_asset_definition() -> None:
    (assets,) = load_assets_from_modules([training_defs])
    (spec,) = assets.specs
    assert spec.key.to_user_string() == "clap_model"
    assert spec.group_name == "training"
    assert {d.asset_key.to_user_string() for d in spec.deps} == {"prompts", "waveforms"}
    assert assets.op.pool == "gpu"


def test_config_exposes_every_training_setting_with_the_same_defaults() -> None:
    dagster_defaults = ClapTrainingConfig()
    core_defaults = TrainConfig()
    for f in fields(TrainConfig):
        assert getattr(dagster_defaults, f.name) == getattr(core_defaults, f.name), f.name
    assert dagster_defaults.to_group() == core_defaults


def test_materialize_clap_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    write_training_dataset(data_dir)
    store = mlflow_store(tmp_path / "mlruns")
    resources = {
        "clap_settings": ClapSettings(
            data_dir=str(data_dir),
            model=str(tiny_model_dir),
            mlflow_tracking_uri=store,
            mlflow_experiment="dagster-training",
        ),
    }
    config = ClapTrainingConfig(
        batch_size=16, learning_rate=1e-3, max_epochs=1, cpu_threads=1, system_metrics=False
    )
    result = materialize(
        [clap_model],
        resources=resources,
        run_config=RunConfig(ops={"clap_model": config}),
        instance=DagsterInstance.ephemeral(),
    )
    assert result.success
    (event,) = result.get_asset_materialization_events()
    metadata = event.materialization.metadata

    manifest = json.loads((data_dir / "reports" / "training.json").read_text())
    assert metadata["best_epoch"].value == manifest["best_epoch"]
    assert metadata["best_checkpoint"].value == manifest["best_checkpoint"]
    assert Path(manifest["best_checkpoint"]).parent.parent == data_dir / "checkpoints"
    assert (Path(manifest["best_checkpoint"]) / "model.safetensors").exists()
    rows = metadata["epochs"].value.records
    assert [(row.data["epoch"], row.data["best"]) for row in rows] == [(1, True)]
    assert metadata["training_curve"].value.startswith("![training curve](data:image/png;base64,")
    assert metadata["mlflow_run"].value.endswith(f"/runs/{metadata['mlflow_run_id'].value}")
    assert (
        metadata["registered_model"].value
        == f"clap-fma v{manifest['registered_model']['version']} @champion"
    )
    assert metadata["wall_time_s"].value > 0 and metadata["train_clips_per_second"].value > 0
    assert metadata["n_val"].value == 16

    run = tracking.client(store).get_run(manifest["mlflow_run_id"])
    assert run.data.tags["dagster_run_id"] == result.run_id
    assert run.data.params["config.max_epochs"] == "1"
    assert manifest["config"]["learning_rate"] == pytest.approx(1e-3)
