"""MLflow helpers on a real SQLite store: experiment location, registry aliases, champion, UI."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from clap_pipeline import run_names, tracking
from clap_pipeline.tracking import ChampionNotFoundError, choose_alias, resolve_champion
from clap_pipeline_tests.training_fixtures import mlflow_store


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    return mlflow_store(tmp_path_factory.mktemp("mlruns"))


def test_experiment_gets_an_explicit_artifact_location_next_to_the_store(store: str) -> None:
    exp_id = tracking.configure(store, "tracking test")
    assert tracking.configure(store, "tracking test") == exp_id  # idempotent
    exp = tracking.client(store).get_experiment(exp_id)
    db_dir = tracking.sqlite_path(store).parent
    assert Path(exp.artifact_location) == db_dir / "artifacts" / "tracking_test"
    # Artifacts of runs land there, whatever the working directory.
    run = tracking.client(store).create_run(exp_id)
    assert run.info.artifact_uri.startswith(str(db_dir / "artifacts" / "tracking_test"))


def test_metric_history_returns_every_epoch(store: str) -> None:
    mlflow_client = tracking.client(store)
    run = mlflow_client.create_run(tracking.configure(store, "history"))
    for step, value in ((2, 0.5), (1, 0.25), (3, 0.75)):
        mlflow_client.log_metric(run.info.run_id, "val_loss", value, step=step)
    assert tracking.metric_history(store, run.info.run_id, "val_loss") == [
        (1, 0.25),
        (2, 0.5),
        (3, 0.75),
    ]


def test_choose_alias_needs_a_strict_improvement() -> None:
    assert choose_alias(0.3, None) == tracking.CHAMPION
    assert choose_alias(0.6, 0.5) == tracking.CHAMPION
    assert choose_alias(0.5, 0.5) == tracking.CHALLENGER
    assert choose_alias(0.4, 0.5) == tracking.CHALLENGER


def test_resolve_champion_without_one_names_the_asset(store: str) -> None:
    with pytest.raises(ChampionNotFoundError, match="materialize the `clap_model` asset"):
        resolve_champion(store, name="never-registered")


def test_registry_versions_and_champion_folder(store: str, tmp_path: Path) -> None:
    mlflow_client = tracking.client(store)
    run_id = mlflow_client.create_run(tracking.configure(store, "registry")).info.run_id
    checkpoint = tmp_path / "epoch-2"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text("{}")
    mlflow_client.log_artifacts(run_id, str(checkpoint), "checkpoints/epoch-2")
    source = f"{mlflow_client.get_run(run_id).info.artifact_uri}/checkpoints/epoch-2"
    tags = {run_names.VERSION_CHECKPOINT_TAG: str(checkpoint), run_names.VERSION_EPOCH_TAG: "2"}

    version = tracking.register_checkpoint(
        mlflow_client, "reg-test", run_id=run_id, source=source, tags=tags
    )
    # Registering the same run+epoch again (a resumed run) reuses the version.
    assert (
        tracking.register_checkpoint(
            mlflow_client, "reg-test", run_id=run_id, source=source, tags=tags
        )
        == version
    )
    assert tracking.alias_version(mlflow_client, "reg-test", tracking.CHAMPION) is None
    mlflow_client.set_registered_model_alias("reg-test", tracking.CHAMPION, version)

    champion = resolve_champion(store, name="reg-test")
    assert (champion.version, champion.run_id) == (version, run_id)
    assert champion.local_dir == checkpoint  # the training checkpoint itself, no copy

    # Without the local checkpoint, the files come from the run's artifacts.
    shutil.rmtree(checkpoint)
    downloaded = resolve_champion(store, name="reg-test", cache_dir=tmp_path / "cache")
    assert (downloaded.local_dir / "config.json").read_text() == "{}"


def test_ui_command_serves_the_project_store(store: str) -> None:
    cmd = tracking.ui_command("127.0.0.1", 5123, store)
    assert cmd[1:4] == ["-m", "mlflow", "server"]
    assert cmd[cmd.index("--backend-store-uri") + 1] == store
    root = tracking.sqlite_path(store).parent / "artifacts"
    assert cmd[cmd.index("--default-artifact-root") + 1] == str(root)
    assert cmd[cmd.index("--port") + 1] == "5123"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ui_entry_point_starts_mlflow_server(store: str, tmp_path: Path) -> None:
    """`clap-pipeline mlflow-ui` (what `make mlflow-ui` runs) answers on its port."""
    mlflow_client = tracking.client(store)
    run_id = mlflow_client.create_run(tracking.configure(store, "ui-check")).info.run_id
    (tmp_path / "training_curve.png").write_bytes(b"png")
    mlflow_client.log_artifact(run_id, str(tmp_path / "training_curve.png"))
    port = _free_port()
    env = {"MLFLOW_TRACKING_URI": store, "CLAP_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "clap_pipeline.cli", "mlflow-ui", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    assert r.status == 200
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    out = proc.stdout.read().decode() if proc.stdout else ""
                    pytest.fail(f"mlflow server did not answer on {port}: {out[-2000:]}")
                time.sleep(0.5)
        url = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/get-by-name?experiment_name=ui-check"
        with urllib.request.urlopen(url, timeout=10) as r:
            assert b"ui-check" in r.read()  # the project's store, not a fresh one
        # The UI can list the run's artifacts (checkpoints, curve) from their location.
        url = f"http://127.0.0.1:{port}/api/2.0/mlflow/artifacts/list?run_id={run_id}"
        with urllib.request.urlopen(url, timeout=10) as r:
            assert b"training_curve.png" in r.read()
    finally:
        # mlflow server starts worker processes: stop the whole group this test created.
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
