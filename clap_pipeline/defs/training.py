"""Asset `clap_model`: a thin wrapper over ``clap_pipeline.training.train``.

All training settings are run config (``ClapTrainingConfig``, derived from ``TrainConfig``'s
knobs, plus where the training runs); paths come from
the ``clap_settings`` resource, the DuckDB file from ``duckdb`` and the MLflow
store from ``mlflow``. The work, the MLflow run and ``reports/training.json``
are done by the training package, which also runs standalone.

``launcher`` picks where the training runs: ``in_process`` (in the Dagster run's
process, the default), ``torchrun`` (``torchrun -m clap_pipeline.training`` as a
child process through Dagster Pipes, ``nproc_per_node`` data-parallel ranks) or
``k8s`` (the same command in a Kubernetes pod through dagster-k8s'
``PipesK8sClient``). Either way the progress lines arrive as Dagster logs and the
same materialization metadata is recorded.
"""

import sys
from dataclasses import replace
from typing import Any

from dagster import (
    AssetExecutionContext,
    MaterializeResult,
    PipesSubprocessClient,
    asset,
)
from pydantic import Field

from clap_pipeline.config import LAUNCHED_BY_RUN_VARIABLE, Settings
from clap_pipeline.defs.knob_config import KnobConfig, config_class
from clap_pipeline.defs.metadata_values import dagster_metadata
from clap_pipeline.defs.resources import ClapSettings
from clap_pipeline.knobs import to_flags
from clap_pipeline.training.config import TrainConfig, TrainInputs
from clap_pipeline.training.loop import train
from clap_pipeline.training.report import result_metadata

LAUNCHERS = ("in_process", "torchrun", "k8s")
# Run config only Dagster has: where the training runs (the knobs are TrainConfig's).
_LAUNCHER_FIELDS: dict[str, tuple[Any, Any]] = {
    "launcher": (
        str,
        Field(
            "in_process",
            description="in_process: train in this run's process | torchrun: a torchrun child "
            "process through Dagster Pipes | k8s: torchrun in a Kubernetes pod through Pipes "
            "(dagster-k8s)",
        ),
    ),
    "nproc_per_node": (
        int,
        Field(1, ge=1, description="torchrun/k8s: training processes (one per GPU) per node"),
    ),
    "torchrun_args": (
        list[str],
        Field(
            default_factory=lambda: ["--standalone"],
            description="torchrun/k8s: rendezvous arguments before -m, e.g. ['--nnodes', '2', "
            "'--rdzv-backend', 'c10d', '--rdzv-endpoint', 'head:29400', '--rdzv-id', 'clap']",
        ),
    ),
    "k8s_image": (str, Field("", description="k8s: container image with this project installed")),
    "k8s_namespace": (str, Field("default", description="k8s: namespace of the training pod")),
    "k8s_gpus": (int, Field(0, ge=0, description="k8s: nvidia.com/gpu limit of the pod (0: none)")),
    "k8s_data_claim": (
        str,
        Field(
            "",
            description="k8s: PersistentVolumeClaim mounted at the data dir's path in the pod "
            "(waveforms, prompts, checkpoints, and a SQLite MLflow store under it)",
        ),
    ),
}
ClapTrainingConfig = config_class(
    TrainConfig,
    "ClapTrainingConfig",
    "Training settings (TrainConfig's knobs; defaults = the reference recipe) and the launcher.",
    __name__,
    extra=_LAUNCHER_FIELDS,
)


def training_arguments(config: KnobConfig) -> list[str]:
    """``python -m clap_pipeline.training`` flags for every training setting of ``config``."""
    return to_flags(config.to_group())


def settings_environment(settings: Settings, inputs: TrainInputs) -> dict[str, str]:
    """The env vars ``Settings.from_env`` reads, so the child sees this run's settings."""
    resolved = replace(
        settings,
        model=inputs.model_source,
        mlflow_tracking_uri=inputs.tracking_uri,
        mlflow_experiment=inputs.experiment,
    )
    return resolved.environment()


def torchrun_command(
    config: ClapTrainingConfig,
    inputs: TrainInputs,
    dagster_run_id: str,
    python: str = sys.executable,
) -> list[str]:
    """``torchrun [rendezvous] --nproc_per_node N -m clap_pipeline.training <settings>``.

    ``python -m torch.distributed.run`` is torchrun itself, from the same environment.
    """
    if config.nproc_per_node < 1:
        raise ValueError(f"nproc_per_node must be >= 1, got {config.nproc_per_node}")
    return [
        python, "-m", "torch.distributed.run", *config.torchrun_args,
        "--nproc_per_node", str(config.nproc_per_node),
        "-m", "clap_pipeline.training", *training_arguments(config),
        "--duckdb", str(inputs.duckdb_path), "--dagster-run-id", dagster_run_id,
    ]  # fmt: skip


def k8s_pod_spec(config: ClapTrainingConfig, settings: Settings) -> dict[str, Any]:
    """``base_pod_spec`` for ``PipesK8sClient``: GPUs and the data volume at the same path."""
    container: dict[str, Any] = {"name": "clap-training"}
    if config.k8s_gpus:
        container["resources"] = {"limits": {"nvidia.com/gpu": str(config.k8s_gpus)}}
    spec: dict[str, Any] = {"containers": [container], "restart_policy": "Never"}
    if config.k8s_data_claim:
        container["volume_mounts"] = [{"name": "clap-data", "mount_path": str(settings.data_dir)}]
        spec["volumes"] = [
            {
                "name": "clap-data",
                "persistent_volume_claim": {"claim_name": config.k8s_data_claim},
            }
        ]
    return spec


def _launch(
    context: AssetExecutionContext,
    config: ClapTrainingConfig,
    settings: Settings,
    inputs: TrainInputs,
) -> MaterializeResult:
    """Run ``torchrun`` through Pipes; rank 0 reports the logs and the materialization."""
    command = torchrun_command(config, inputs, context.run_id)
    env = {**settings_environment(settings, inputs), LAUNCHED_BY_RUN_VARIABLE: context.run_id}
    if config.launcher == "torchrun":
        invocation = PipesSubprocessClient().run(context=context, command=command, env=env)
    else:
        try:
            from dagster_k8s import PipesK8sClient
        except ImportError as exc:
            raise RuntimeError(
                "launcher 'k8s' needs dagster-k8s: pip install 'clap-pipeline[k8s]'"
            ) from exc
        if not config.k8s_image:
            raise ValueError("launcher 'k8s' needs k8s_image (an image with clap-pipeline)")
        command[0] = "python"  # the image's interpreter, not this one's path
        invocation = PipesK8sClient().run(
            context=context,
            image=config.k8s_image,
            command=command,
            namespace=config.k8s_namespace,
            env=env,
            base_pod_spec=k8s_pod_spec(config, settings),
        )
    return invocation.get_materialize_result()


@asset(
    group_name="training",
    deps=["prompts", "waveforms"],
    pool="gpu",
    kinds={"pytorch", "mlflow"},
    description="Fine-tune CLAP on the prompts + waveforms (symmetric InfoNCE, early stopping on "
    "val R@5); MLflow run, checkpoints, `clap-fma` registry alias, reports/training.json.",
)
def clap_model(
    context: AssetExecutionContext,
    config: ClapTrainingConfig,
    clap_settings: ClapSettings,
) -> MaterializeResult:
    if config.launcher not in LAUNCHERS:
        raise ValueError(f"launcher must be one of {LAUNCHERS}, got {config.launcher!r}")
    settings = clap_settings.settings()
    inputs = TrainInputs.from_settings(settings)
    if config.launcher != "in_process":
        return _launch(context, config, settings, inputs)
    result = train(
        config.to_group(),
        inputs,
        dagster_run_id=context.run_id,
        on_progress=lambda p: context.log.info(p.message),
    )
    if result is None:  # only ranks other than 0 of a torchrun launch return None
        raise RuntimeError("in-process training returned no result")
    return MaterializeResult(metadata=dagster_metadata(result_metadata(result)))
