"""`make stack`'s settings and the Dagster files it writes (no server started here)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from clap_pipeline import stack
from clap_pipeline.config import REPO_ROOT, ConfigError, StackSettings


def test_settings_name_the_variable_that_is_wrong(tmp_path: Path) -> None:
    s = StackSettings.from_env({"CLAP_DATA_DIR": str(tmp_path), "CLAP_STACK_MLFLOW_PORT": "6001"})
    assert s.mlflow_url == "http://127.0.0.1:6001"
    assert s.dagster_home == tmp_path / "dagster" and s.postgres_dir == tmp_path / "postgres"
    with pytest.raises(ConfigError, match="CLAP_STACK_DAGSTER_PORT"):
        StackSettings.from_env({"CLAP_STACK_DAGSTER_PORT": "70000"})
    with pytest.raises(ConfigError, match="CLAP_POSTGRES_URL"):
        StackSettings.from_env({"CLAP_POSTGRES_URL": "mysql://x@y/z"})
    with pytest.raises(ConfigError, match="CLAP_STACK_MAX_CONCURRENT_RUNS"):
        StackSettings.from_env({"CLAP_STACK_MAX_CONCURRENT_RUNS": "0"})


def test_an_existing_server_gets_the_two_databases_and_no_password_file(tmp_path: Path) -> None:
    s = StackSettings.from_env(
        {"CLAP_DATA_DIR": str(tmp_path), "CLAP_POSTGRES_URL": "postgresql://u:p%40ss@db:6543/x"}
    )
    assert stack.database_url(s, "mlflow") == "postgresql://u:p%40ss@db:6543/mlflow"
    assert stack.sqlalchemy_url(s, "dagster").startswith("postgresql+psycopg2://u:p%40ss@db:6543/")
    assert stack.redact(stack.database_url(s, "mlflow")) == "postgresql://u:***@db:6543/mlflow"
    assert not (s.stack_dir / "postgres.password").exists()


def test_the_instance_keeps_the_repository_settings_on_postgres(tmp_path: Path) -> None:
    s = StackSettings.from_env(
        {"CLAP_DATA_DIR": str(tmp_path), "CLAP_STACK_MAX_CONCURRENT_RUNS": "2"}
    )
    stack.write_dagster_home(s)
    written = yaml.safe_load((s.dagster_home / "dagster.yaml").read_text())
    repo = yaml.safe_load((REPO_ROOT / ".dagster" / "dagster.yaml").read_text())
    for key in ("run_coordinator", "run_monitoring", "telemetry"):
        assert written[key] == repo[key]
    assert written["concurrency"]["pools"] == repo["concurrency"]["pools"]  # `gpu` at 1
    assert written["concurrency"]["runs"]["max_concurrent_runs"] == 2
    url = written["storage"]["postgres"]["postgres_url"]
    assert url.startswith("postgresql+psycopg2://clap:") and url.endswith(
        f":{s.postgres_port}/dagster"
    )
    assert (s.dagster_home / "dagster.yaml").stat().st_mode & 0o077 == 0  # holds the password
    # Dagster itself loads the file in test_stack.py (the stack on a real PostgreSQL).
    workspace = yaml.safe_load((s.dagster_home / "workspace.yaml").read_text())
    (server,) = [entry["grpc_server"] for entry in workspace["load_from"]]
    assert server == {
        "host": "127.0.0.1",
        "port": s.code_server_port,
        "location_name": "clap_pipeline",
    }
