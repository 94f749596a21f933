"""deploy/: the Helm values, the code location image and the GPU tags, checked without a cluster.

Nothing here renders the chart or builds the image (no helm, no registry on these
machines): the files parse, name what exists in the project, and dagster-k8s reads the
GPU request from the tags as the K8sRunLauncher will.
"""

from __future__ import annotations

import json
import re

import yaml
from dagster_k8s.job import get_user_defined_k8s_config

from clap_pipeline.config import REPO_ROOT
from clap_pipeline.definitions import defs

DEPLOY = REPO_ROOT / "deploy"


def test_helm_values_launch_the_project_on_kubernetes_with_postgres_from_a_secret() -> None:
    values = yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert values["postgresql"]["enabled"] is False
    assert values["global"]["postgresqlSecretName"]
    assert values["generatePostgresqlPasswordSecret"] is False
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    module = deployment["dagsterApiGrpcArgs"][deployment["dagsterApiGrpcArgs"].index("-m") + 1]
    assert module == "clap_pipeline.definitions"
    queue = values["dagsterDaemon"]["runCoordinator"]
    assert queue["type"] == "QueuedRunCoordinator"
    repo_instance = yaml.safe_load((REPO_ROOT / ".dagster" / "dagster.yaml").read_text())
    config = queue["config"]["queuedRunCoordinator"]
    assert (
        config["maxConcurrentRuns"] == repo_instance["concurrency"]["runs"]["max_concurrent_runs"]
    )
    job_names = set(defs.get_repository_def().job_names)
    limited = {limit["value"] for limit in config["tagConcurrencyLimits"]}
    assert limited and limited <= job_names, (limited, job_names)
    # The image the values name serves the same module on the same port.
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", dockerfile, re.M).group(1))
    assert cmd[cmd.index("-m") + 1] == module
    assert cmd[cmd.index("-p") + 1] == str(deployment["port"])
    for source in re.findall(r"^COPY (.+) \./?\S*$", dockerfile, re.M):
        for path in source.split():
            assert (REPO_ROOT / path).exists(), f"Dockerfile copies {path}: not in the repo"


def test_gpu_tags_ask_kubernetes_for_a_gpu_on_the_training_runs() -> None:
    tags = yaml.safe_load((DEPLOY / "clap_model_gpu_tags.yaml").read_text())
    as_run_tags = {key: json.dumps(value) for key, value in tags.items()}
    k8s = get_user_defined_k8s_config(as_run_tags)
    resources = k8s.container_config["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == "1"
    assert resources["requests"]["nvidia.com/gpu"] == "1"
    # `retrain` (what the sensors launch) and `clap_model` exist under these names.
    assert "retrain" in defs.get_repository_def().job_names
    assert any(key.to_user_string() == "clap_model" for key in defs.resolve_all_asset_keys())
