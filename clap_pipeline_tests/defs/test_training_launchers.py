"""`clap_model` through Dagster Pipes: torchrun child processes, and the documented run configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from dagster import (
    DagsterEventType,
    DagsterInstance,
    Definitions,
    RunConfig,
    define_asset_job,
    materialize,
    validate_run_config,
)

from clap_pipeline import tracking
from clap_pipeline.config import REPO_ROOT, Settings
from clap_pipeline.defs.resources import ClapSettings
from clap_pipeline.defs.training import (
    ClapTrainingConfig,
    clap_model,
    k8s_pod_spec,
    torchrun_command,
)
from clap_pipeline.training.config import TrainInputs
from clap_pipeline_tests.training_fixtures import (
    mlflow_store,
    one_torch_thread,  # noqa: F401 (autouse fixture)
    write_training_dataset,
)

RUN_CONFIGS = ("torchrun_run_config.yaml", "k8s_run_config.yaml", "tiny_model_run_config.yaml")


def _materialize(data_dir: Path, model_dir: Path, store: str, config: ClapTrainingConfig):
    resources = {
        "clap_settings": ClapSettings(
            data_dir=str(data_dir),
            model=str(model_dir),
            mlflow_tracking_uri=store,
            mlflow_experiment="launchers",
        )
    }
    instance = DagsterInstance.ephemeral()
    result = materialize(
        [clap_model],
        resources=resources,
        run_config=RunConfig(ops={"clap_model": config}),
        instance=instance,
    )
    assert result.success
    logs = [
        e.user_message
        for e in instance.all_logs(result.run_id)
        if e.dagster_event is None or e.dagster_event.event_type == DagsterEventType.LOGS_CAPTURED
    ]
    (event,) = result.get_asset_materialization_events()
    return result, event.materialization.metadata, logs


def test_torchrun_launcher_reports_like_the_in_process_one(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    write_training_dataset(data_dir)
    common = {
        "batch_size": 8,
        "learning_rate": 1e-3,
        "max_epochs": 1,
        "cpu_threads": 1,
        "system_metrics": False,
        "log_checkpoints": False,
    }
    _, local, local_logs = _materialize(
        data_dir, tiny_model_dir, mlflow_store(tmp_path / "a"), ClapTrainingConfig(**common)
    )
    store = mlflow_store(tmp_path / "b")
    config = ClapTrainingConfig(**common, launcher="torchrun", nproc_per_node=2)
    result, piped, piped_logs = _materialize(data_dir, tiny_model_dir, store, config)

    # The same metadata entries, of the same kinds, as the in-process materialization.
    assert set(piped) == set(local)
    for name in local:
        assert type(piped[name]) is type(local[name]), name
    assert piped["world_size"].value == 2 and local["world_size"].value == 1
    assert [r.data["epoch"] for r in piped["epochs"].value.records] == [1]
    assert piped["training_curve"].value.startswith("![training curve](data:image/png;base64,")
    # Progress lines arrive as Dagster logs, as in process.
    for logs in (local_logs, piped_logs):
        assert any(m.startswith("epoch 1 done: train loss") for m in logs), logs
        assert any("registered as clap-fma" in m for m in logs)
    # One MLflow run, tagged with the Dagster run, trained by 2 ranks.
    manifest = json.loads((data_dir / "reports" / "training.json").read_text())
    run = tracking.client(store).get_run(piped["mlflow_run_id"].value)
    assert run.info.status == "FINISHED" and manifest["mlflow_run_id"] == run.info.run_id
    assert run.data.tags["dagster_run_id"] == result.run_id
    assert run.data.params["world_size"] == "2" and run.data.params["global_batch_size"] == "16"


@pytest.mark.parametrize("name", RUN_CONFIGS)
def test_documented_run_configs_validate_against_the_asset(name: str) -> None:
    run_config = yaml.safe_load((REPO_ROOT / "scripts" / name).read_text())
    job = Definitions(
        assets=[clap_model],
        jobs=[define_asset_job("train", selection="clap_model")],
        resources={"clap_settings": ClapSettings()},
    ).resolve_job_def("train")
    validate_run_config(job, run_config)  # raises on an unknown or mistyped setting


def test_k8s_config_builds_a_pod_and_a_torchrun_command(tmp_path: Path) -> None:
    run_config = yaml.safe_load((REPO_ROOT / "scripts" / "k8s_run_config.yaml").read_text())
    config = ClapTrainingConfig(**run_config["ops"]["clap_model"]["config"])
    settings = Settings.build(data_dir=tmp_path / "data", mlflow_tracking_uri="http://mlflow:5000")
    spec = k8s_pod_spec(config, settings)
    kubernetes = pytest.importorskip("kubernetes")  # dagster-k8s' dependency ([k8s] extra)
    from dagster_k8s.models import k8s_model_from_dict

    pod = k8s_model_from_dict(kubernetes.client.V1PodSpec, spec)
    (container,) = pod.containers
    assert container.resources.limits == {"nvidia.com/gpu": "2"}
    assert container.volume_mounts[0].mount_path == str(settings.data_dir)
    assert pod.volumes[0].persistent_volume_claim.claim_name == "clap-data"

    inputs = TrainInputs.from_settings(settings)
    command = torchrun_command(config, inputs, "dagster-run-1", python="python")
    assert command[:3] == ["python", "-m", "torch.distributed.run"]
    launcher = command[command.index("--nproc_per_node") :]
    assert launcher[:4] == ["--nproc_per_node", "2", "-m", "clap_pipeline.training"]
    assert command[command.index("--batch-size") + 1] == "64"
    assert command[command.index("--precision") + 1] == "bf16"
    assert "--resample-templates" not in command and "--no-resample-templates" in command
