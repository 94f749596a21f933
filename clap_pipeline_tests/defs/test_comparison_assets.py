"""The `model_comparison` asset through Dagster over a real MLflow store (no training)."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest
from dagster import DagsterInstance, RunConfig, load_assets_from_modules, materialize

from clap_pipeline import tracking
from clap_pipeline.config import Settings
from clap_pipeline.defs import comparison as comparison_defs
from clap_pipeline.defs.comparison import ModelComparisonConfig, model_comparison
from clap_pipeline.defs.resources import resources_for
from clap_pipeline_tests.comparison_fixtures import DATA_VERSION, RunsStore, build_runs_store


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> RunsStore:
    return build_runs_store(tmp_path_factory.mktemp("comparison-asset"))


def _materialize(data_dir: Path, uri: str, experiment: str, recent: int = 5):
    settings = Settings.build(
        data_dir=data_dir,
        mlflow_tracking_uri=uri,
        mlflow_experiment=experiment,
        retrain_run_config=data_dir / "retrain.yaml",
    )
    result = materialize(
        [model_comparison],
        resources=resources_for(settings),
        run_config=RunConfig(ops={"model_comparison": ModelComparisonConfig(recent=recent)}),
        instance=DagsterInstance.ephemeral(),
    )
    assert result.success
    (event,) = result.get_asset_materialization_events()
    return event.materialization.metadata


def test_asset_definition() -> None:
    (assets,) = load_assets_from_modules([comparison_defs])
    (spec,) = assets.specs
    assert spec.key.to_user_string() == "model_comparison"
    assert spec.group_name == "evaluation"
    assert {d.asset_key.to_user_string() for d in spec.deps} == {
        "clap_model",
        "evaluation",
        "feedback_evaluation",
    }
    assert assets.required_resource_keys - {"io_manager"} == {"clap_settings"}


def test_materialize_model_comparison(store: RunsStore, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    meta = _materialize(data_dir, store.tracking_uri, store.experiment)

    assert meta["n_runs"].value == 5
    assert meta["recommended_max_epochs"].value == 3  # median_high of r1 (2), r2 (4), r4 (3)
    assert meta["champion_run_id"].value == store.run_ids["r2"]
    assert meta["mlflow_run_id"].value == store.run_ids["r4"]  # latest finished run

    table = meta["comparison"].value
    reports = data_dir / "reports"
    assert table == (reports / "model_comparison.md").read_text()
    champion_row = next(line for line in table.splitlines() if line.startswith("| ★ |"))
    assert f"| r2 | 2024-03-01 13:00 | FINISHED | {DATA_VERSION} | 96 |" in champion_row
    assert champion_row.endswith("| 0.250 | 0.500 | 0.875 | v2 @champion |")
    assert "| FAILED |" in table and "| RUNNING |" in table
    assert f"`CLAP_RETRAIN_RUN_CONFIG` (now {data_dir.resolve() / 'retrain.yaml'})" in table

    chart = meta["chart"].value
    png = base64.b64decode(re.fullmatch(r"!\[.*\]\(data:image/png;base64,(.+)\)", chart).group(1))
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert png == (reports / "model_comparison.png").read_bytes()

    assert meta["report"].value == str(reports / "model_comparison.md")
    assert meta["chart_png"].value == str(reports / "model_comparison.png")
    report = json.loads(Path(meta["report_json"].value).read_text())
    assert report["recommendation"]["max_epochs"] == 3
    assert report["experiment"] == store.experiment

    logged = tracking.client(store.tracking_uri).list_artifacts(
        store.run_ids["r4"], "model_comparison"
    )
    assert {Path(a.path).name for a in logged} == {
        "model_comparison.md",
        "model_comparison.png",
        "model_comparison.json",
    }


def test_run_config_recent_changes_the_recommendation(store: RunsStore, tmp_path: Path) -> None:
    meta = _materialize(tmp_path / "data", store.tracking_uri, store.experiment, recent=2)
    assert meta["recommended_max_epochs"].value == 4  # median_high of r2 (4), r4 (3)


def test_materialize_without_runs(store: RunsStore, tmp_path: Path) -> None:
    meta = _materialize(tmp_path / "data", store.tracking_uri, "no-runs-yet")
    assert meta["n_runs"].value == 0
    assert meta["recommended_max_epochs"].value is None
    assert (meta["champion_run_id"].value, meta["mlflow_run_id"].value) == ("", "")
    assert "No training runs in MLflow experiment 'no-runs-yet'" in meta["comparison"].value
