"""The `evaluation` asset and its checks through Dagster (ephemeral instance, real resources)."""

from __future__ import annotations

import base64
import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
from dagster import AssetCheckSeverity, DagsterInstance, RunConfig, materialize

from clap_pipeline import tracking
from clap_pipeline.defs.evaluation import (
    EvaluationConfig,
    evaluation,
    evaluation_beats_random,
    evaluation_metrics_in_range,
)
from clap_pipeline.defs.resources import ClapSettings
from clap_pipeline.evaluation.comparison import collect_runs
from clap_pipeline.evaluation.report import load_report
from clap_pipeline.metrics import KS, recall_key
from clap_pipeline_tests.evaluation_fixtures import TEST_IDS, EvalSetup, build_evaluation_setup


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> EvalSetup:
    return build_evaluation_setup(tmp_path_factory.mktemp("evaluation-asset"), tiny_model_dir)


def resources_for(setup: EvalSetup) -> dict:
    return {
        "clap_settings": ClapSettings(
            data_dir=str(setup.data_dir),
            mlflow_tracking_uri=setup.tracking_uri,
            mlflow_experiment="evaluation-test",
        ),
    }


@pytest.fixture(scope="module")
def materialized(setup: EvalSetup):
    return materialize(
        [evaluation, evaluation_metrics_in_range, evaluation_beats_random],
        resources=resources_for(setup),
        instance=DagsterInstance.ephemeral(),
        run_config=RunConfig(
            {
                "evaluation": EvaluationConfig(
                    batch_size=6, n_bootstrap=200, random_rounds=200, qualitative_clips=3
                )
            }
        ),
    )


def test_asset_metadata_report_and_mlflow(setup: EvalSetup, materialized) -> None:
    assert materialized.success
    meta = materialized.asset_materializations_for_node("evaluation")[0].metadata
    report = load_report(setup.data_dir / "reports" / "evaluation.json")
    assert meta["report"].value == str(setup.data_dir / "reports" / "evaluation.json")
    assert (meta["n_test"].value, meta["n_validation"].value) == (12, 6)
    assert report.config.n_bootstrap == 200  # run config reached the work
    test = report.splits["test"]
    for k in (1, 5, 10):
        key = f"text_to_audio_recall_at_{k}"
        assert meta[f"test_{key}"].value == test.stat("fine_tuned", key).value
        assert meta[f"zeroshot_test_{key}"].value == test.stat("zero_shot", key).value
        assert meta[f"random_test_recall_at_{k}"].value == pytest.approx(min(k, 12) / 12)

    table = meta["retrieval"].value
    r5 = test.stat("fine_tuned", "text_to_audio_recall_at_5")
    row = next(line for line in table.splitlines() if line.startswith("| text->audio | R@5 |"))
    assert f"{r5.value:.3f} [{r5.ci_low:.3f}, {r5.ci_high:.3f}]" in row
    assert "**test split (N = 12 of 12)**" in table and "**validation split" in table

    chart = meta["comparison_chart"].value
    png = base64.b64decode(re.fullmatch(r"!\[.*\]\(data:image/png;base64,(.+)\)", chart).group(1))
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5_000

    qualitative = meta["qualitative"].value.splitlines()
    assert qualitative[2].startswith("| track | true prompt | zero-shot | epoch 1 | epoch 2 |")
    body = [line for line in qualitative if re.match(r"\| \d+ \|", line)]
    assert [int(line.split("|")[1]) for line in body] == TEST_IDS[:3]
    assert all("| not kept |" in line for line in body)  # epoch 2's checkpoint was deleted
    assert "This audio is a {genre} song." in meta["genre_classification"].value

    logged = tracking.client(setup.tracking_uri).get_run(setup.run_id).data.metrics
    assert logged["eval_test_text_to_audio_recall_at_5"] == r5.value
    assert logged["eval_test_n"] == 12 and logged["eval_val_n"] == 6
    # The reader of every run (evaluation/comparison.py) finds the test recall logged here.
    (summary,) = collect_runs(setup.tracking_uri, "evaluation-test")
    assert summary.test_recall == {k: test.stat("fine_tuned", recall_key(k)).value for k in KS}


def test_checks_in_range_and_random_warning(setup: EvalSetup, materialized) -> None:
    checks = {c.check_name: c for c in materialized.get_asset_check_evaluations()}
    assert set(checks) == {"evaluation_metrics_in_range", "evaluation_beats_random"}
    in_range = checks["evaluation_metrics_in_range"]
    assert in_range.passed and in_range.severity == AssetCheckSeverity.ERROR
    assert in_range.metadata["n_test"].value == in_range.metadata["test_split_size"].value == 12

    report = load_report(setup.data_dir / "reports" / "evaluation.json")
    r5 = report.splits["test"].stat("fine_tuned", "text_to_audio_recall_at_5").value
    vs_random = checks["evaluation_beats_random"]
    assert vs_random.severity == AssetCheckSeverity.WARN
    assert vs_random.passed == (r5 > 5 / 12)
    assert vs_random.metadata["random_r5"].value == pytest.approx(5 / 12)


def test_checks_on_a_changed_split_and_a_better_model(
    setup: EvalSetup, materialized, tmp_path: Path
) -> None:
    assert materialized.success
    settings = ClapSettings(data_dir=str(setup.data_dir))
    manifest_text = setup.manifest_path.read_text()
    report_path = setup.data_dir / "reports" / "evaluation.json"
    report_text = report_path.read_text()
    try:
        # Training re-ran with a bigger test split: the report no longer matches it.
        manifest = json.loads(manifest_text)
        manifest["splits"]["test"] = [*TEST_IDS, 5000]
        setup.manifest_path.write_text(json.dumps(manifest))
        result = evaluation_metrics_in_range(clap_settings=settings)
        assert not result.passed
        assert "test N = 12 but the test split has 13 clips" in result.description

        # A fine-tuned model well above 5/N passes the random check.
        report = load_report(report_path)
        metrics = report.splits["test"].models["fine_tuned"].metrics
        key = "text_to_audio_recall_at_5"
        metrics[key] = replace(metrics[key], value=1.0)
        report.write(report_path)
        result = evaluation_beats_random(clap_settings=settings)
        assert result.passed and "beats random 0.417" in result.description
    finally:
        setup.manifest_path.write_text(manifest_text)
        report_path.write_text(report_text)

    empty = ClapSettings(data_dir=str(tmp_path))
    missing = evaluation_beats_random(clap_settings=empty)
    assert not missing.passed and missing.severity == AssetCheckSeverity.WARN
    assert "materialize the `evaluation` asset" in missing.metadata["problem"].value
