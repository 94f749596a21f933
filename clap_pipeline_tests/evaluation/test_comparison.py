"""Run comparison over a real MLflow SQLite store: table, recommendation, chart, files, CLI."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import pytest

from clap_pipeline import run_names, tracking
from clap_pipeline.cli import main
from clap_pipeline.evaluation import comparison
from clap_pipeline.evaluation.comparison import (
    RunSummary,
    collect_runs,
    comparison_markdown,
    comparison_png,
    comparison_text,
    recommend_max_epochs,
    write_comparison,
)
from clap_pipeline_tests.comparison_fixtures import DATA_VERSION, RunsStore, build_runs_store
from clap_pipeline_tests.training_fixtures import mlflow_store


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> RunsStore:
    return build_runs_store(tmp_path_factory.mktemp("comparison"))


@pytest.fixture(scope="module")
def runs(store: RunsStore) -> list[RunSummary]:
    return collect_runs(store.tracking_uri, store.experiment)


def _names(runs: list[RunSummary] | tuple[RunSummary, ...]) -> list[str]:
    return [r.run_name for r in runs]


def _md_row(markdown: str, run_name: str) -> list[str]:
    """The cells of a run's row in the runs table (the first table of the report)."""
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == len(comparison.RUN_HEADERS) and cells[1] == run_name:
            return cells
    raise AssertionError(f"no row for {run_name}")


def _cell(row: list[str], header: str) -> str:
    return row[comparison.RUN_HEADERS.index(header)]


def _png_size(png: bytes) -> tuple[int, int]:
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and png[12:16] == b"IHDR"
    return struct.unpack(">II", png[16:24])


# --------------------------------------------------------------------------- reading MLflow


def test_collect_runs_reads_training_runs_oldest_first(
    store: RunsStore, runs: list[RunSummary]
) -> None:
    # The notebook run (no training source tag) and the deleted run are left out.
    assert _names(runs) == ["r1", "r2", "r3", "r4", "r5"]
    assert [r.run_id for r in runs] == [store.run_ids[n] for n in _names(runs)]
    assert [r.status for r in runs] == ["FINISHED", "FINISHED", "FAILED", "FINISHED", "RUNNING"]
    assert [r.best_epoch for r in runs] == [2, 4, None, 3, None]
    r1, r2, r3, r4, r5 = runs
    assert r2.start_time.isoformat() == "2024-03-01T13:00:00+00:00"
    assert (r1.data_version, r2.data_version) == (None, DATA_VERSION)
    assert (r1.n_train, r2.n_train) == (80, 96)
    assert r4.params == {
        "config.learning_rate": "0.002",
        "config.batch_size": "8",
        "config.max_epochs": "5",
        "config.patience": "2",
    }
    assert [(p.epoch, p.val_loss, p.val_recall) for p in r1.epochs] == [
        (1, 1.0, {1: 0.1, 5: 0.3, 10: 0.5}),
        (2, 0.8, {1: 0.2, 5: 0.6, 10: 0.8}),
        (3, 0.9, {1: 0.15, 5: 0.5, 10: 0.7}),
    ]
    assert [len(r.epochs) for r in runs] == [3, 4, 1, 4, 2]
    assert r1.test_recall == {1: 0.125, 5: 0.375, 10: 0.625}
    assert r4.test_recall is None and r5.test_recall is None
    # Registry: r2 holds champion now, although r1's run tag still says champion.
    assert [r.is_champion for r in runs] == [False, True, False, False, False]
    assert [(r.registered_version, r.aliases) for r in runs] == [
        ("1", []),
        ("2", ["champion"]),
        (None, []),
        ("3", ["challenger"]),
        (None, []),
    ]
    assert r3.best_point is None and r2.best_point.epoch == 4


def test_missing_experiment_or_store_is_an_empty_list(store: RunsStore, tmp_path: Path) -> None:
    assert collect_runs(store.tracking_uri, "never-created") == []
    missing_db = tmp_path / "nowhere" / "mlflow.db"
    assert collect_runs(f"sqlite:///{missing_db}", "clap-fma") == []
    assert not missing_db.parent.exists()  # reading does not create a store


def test_deleted_experiment_is_an_empty_list(tmp_path: Path) -> None:
    uri = mlflow_store(tmp_path / "mlruns")
    mlflow_client = tracking.client(uri)
    experiment_id = tracking.configure(uri, "gone")
    mlflow_client.create_run(experiment_id, tags={"mlflow.source.name": "clap_pipeline.training"})
    assert len(collect_runs(uri, "gone")) == 1
    mlflow_client.delete_experiment(experiment_id)
    assert collect_runs(uri, "gone") == []


# --------------------------------------------------------------------------- recommendation


def test_recommendation_is_the_median_high_best_epoch_of_recent_finished_runs(
    runs: list[RunSummary],
) -> None:
    # Finished runs with a best epoch: r1 (2), r2 (4), r4 (3); r3 failed, r5 is running.
    rec = recommend_max_epochs(runs)
    assert rec.max_epochs == 3 and _names(rec.runs) == ["r1", "r2", "r4"]
    # The two most recent: best epochs 4 and 3 -> median_high 4 (not 3.5).
    rec2 = recommend_max_epochs(runs, recent=2)
    assert rec2.max_epochs == 4 and _names(rec2.runs) == ["r2", "r4"]
    assert recommend_max_epochs(runs, recent=1).max_epochs == 3
    # r2's best epoch was its max_epochs: flagged as possibly still improving.
    assert _names(rec.at_cap) == ["r2"]
    assert rec.to_dict()["based_on"] == [
        {"run_id": r.run_id, "best_epoch": r.best_epoch} for r in rec.runs
    ]


def test_no_recommendation_without_a_finished_run(runs: list[RunSummary]) -> None:
    unfinished = [r for r in runs if not r.finished]
    assert _names(unfinished) == ["r3", "r5"]
    rec = recommend_max_epochs(unfinished)
    assert rec.max_epochs is None and rec.runs == ()
    assert recommend_max_epochs([]).max_epochs is None
    with pytest.raises(ValueError, match="recent must be >= 1"):
        recommend_max_epochs(runs, recent=0)


# --------------------------------------------------------------------------- reports


def test_markdown_table_marks_the_champion_and_missing_values(
    store: RunsStore, runs: list[RunSummary]
) -> None:
    md = comparison_markdown(
        runs,
        recommend_max_epochs(runs),
        experiment=store.experiment,
        tracking_uri=store.tracking_uri,
        retrain_run_config=Path("/etc/clap/retrain.yaml"),
    )
    r1, r2, r3, r4, r5 = (_md_row(md, n) for n in ("r1", "r2", "r3", "r4", "r5"))
    assert [row[0] for row in (r1, r2, r3, r4, r5)] == ["", "★", "", "", ""]
    assert r2[1:6] == ["r2", "2024-03-01 13:00", "FINISHED", DATA_VERSION, "96"]
    assert [_cell(r2, h) for h in ("lr", "batch", "max ep", "patience", "best epoch")] == [
        "0.002",
        "8",
        "4",
        "2",
        "4",
    ]
    # Val R@k at the best epoch, then test R@k, then the registry.
    assert r2[-7:] == ["0.400", "0.800", "1.000", "0.250", "0.500", "0.875", "v2 @champion"]
    assert r1[-7:] == ["0.200", "0.600", "0.800", "0.125", "0.375", "0.625", "v1"]
    assert r4[-7:] == ["0.100", "0.500", "0.500", "-", "-", "-", "v3 @challenger"]
    assert _cell(r1, "data version") == "-"
    assert (_cell(r3, "status"), _cell(r3, "best epoch"), _cell(r3, "test R@5")) == (
        "FAILED",
        "-",
        "-",
    )
    assert (_cell(r5, "status"), _cell(r5, "model")) == ("RUNNING", "-")
    assert f"run r2 ({store.run_ids['r2']})" in md
    # Per-epoch table: every logged epoch, the best one flagged.
    assert "| r1 | 2 (best) | 0.8000 | 0.200 | 0.600 | 0.800 |" in md
    assert "| r5 | 2 | 1.0000 | 0.100 | 0.300 | 0.500 |" in md
    assert "| r3 | 1 | 1.5000 | 0.000 | 0.100 | 0.200 |" in md
    # Recommendation, where to set it, and the at-cap warning.
    assert "Recommended `max_epochs` for the next run: 3" in md
    assert "r1 (2), r2 (4), r4 (3)" in md
    assert "`CLAP_RETRAIN_RUN_CONFIG` (now /etc/clap/retrain.yaml)" in md
    assert "Launchpad" in md
    assert "```yaml\nops:\n  clap_model:\n    config:\n      max_epochs: 3\n```" in md
    assert "peaked at their last allowed epoch (r2)" in md


def test_text_has_the_same_content_aligned(store: RunsStore, runs: list[RunSummary]) -> None:
    text = comparison_text(
        runs,
        recommend_max_epochs(runs),
        experiment=store.experiment,
        tracking_uri=store.tracking_uri,
    )
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if "started (UTC)" in line)
    header, table = lines[start], lines[start + 2 : start + 7]  # header, rule, five runs
    rows = {line.lstrip("* ").split()[0]: line for line in table}
    assert list(rows) == ["r1", "r2", "r3", "r4", "r5"] and lines[start + 7] == ""
    # Columns line up: every run row has its status under the header's "status".
    col = header.index("status")
    for name, status in (("r1", "FINISHED"), ("r3", "FAILED"), ("r5", "RUNNING")):
        assert rows[name][col:].startswith(status)
    assert rows["r2"].startswith("*  r2 ") and not rows["r1"].startswith("*")
    assert DATA_VERSION in rows["r2"] and rows["r2"].rstrip().endswith("v2 @champion")
    assert rows["r4"].rstrip().endswith("-         -         -          v3 @challenger")
    assert "Recommended max_epochs for the next run: 3" in text
    assert "(not set)" in text  # no CLAP_RETRAIN_RUN_CONFIG given
    assert "      max_epochs: 3" in text and "`" not in text and "★" not in text


def test_no_runs_says_so(tmp_path: Path) -> None:
    rec = recommend_max_epochs([])
    names = {"experiment": "empty", "tracking_uri": "sqlite:///x.db"}
    for render, asset in ((comparison_markdown, "`clap_model`"), (comparison_text, "clap_model")):
        out = render([], rec, **names)
        assert "No training runs in MLflow experiment 'empty'" in out
        assert f"materialize the {asset} asset" in out
    assert _png_size(comparison_png([])) == (900, 360)
    files = write_comparison([], rec, tmp_path, **names)
    assert files.mlflow_run_id is None  # nothing to log to
    assert json.loads(files.json.read_text())["runs"] == []


def test_png_is_a_two_panel_chart(runs: list[RunSummary]) -> None:
    png = comparison_png(runs)
    assert _png_size(png) == (900, 360)  # 10 x 4 in at 90 dpi
    assert len(png) > 10_000  # lines, not a blank canvas


def test_files_written_and_logged_to_the_latest_finished_run(
    store: RunsStore, runs: list[RunSummary], tmp_path: Path
) -> None:
    rec = recommend_max_epochs(runs)
    files = write_comparison(
        runs,
        rec,
        tmp_path / "reports",
        experiment=store.experiment,
        tracking_uri=store.tracking_uri,
    )
    assert files.markdown == tmp_path / "reports" / "model_comparison.md"
    assert files.markdown.read_text() == comparison_markdown(
        runs, rec, experiment=store.experiment, tracking_uri=store.tracking_uri
    )
    _png_size(files.png.read_bytes())
    report = json.loads(files.json.read_text())
    assert report["champion_run_id"] == store.run_ids["r2"]
    assert report["recommendation"]["max_epochs"] == 3
    assert [r["run_name"] for r in report["runs"]] == ["r1", "r2", "r3", "r4", "r5"]
    assert report["runs"][0]["test_recall"] == {"1": 0.125, "5": 0.375, "10": 0.625}
    assert not [p for p in (tmp_path / "reports").iterdir() if p.name.startswith(".")]
    # r5 is still running: the artifacts go to r4, the most recent finished run.
    assert files.mlflow_run_id == store.run_ids["r4"]
    logged = tracking.client(store.tracking_uri).list_artifacts(
        store.run_ids["r4"], "model_comparison"
    )
    assert sorted(a.path for a in logged) == [
        "model_comparison/model_comparison.json",
        "model_comparison/model_comparison.md",
        "model_comparison/model_comparison.png",
    ]


# --------------------------------------------------------------------------- CLI


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, store: RunsStore, tmp_path: Path) -> RunsStore:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.tracking_uri)
    monkeypatch.setenv("CLAP_MLFLOW_EXPERIMENT", store.experiment)
    monkeypatch.setenv("CLAP_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("CLAP_RETRAIN_RUN_CONFIG", raising=False)
    return store


def test_cli_runs_prints_the_table(
    cli_env: RunsStore, runs: list[RunSummary], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["runs"]) == 0
    out = capsys.readouterr().out
    assert out == comparison_text(
        runs,
        recommend_max_epochs(runs),
        experiment=cli_env.experiment,
        tracking_uri=cli_env.tracking_uri,
    )
    assert re.search(r"^\*\s+r2\s+2024-03-01 13:00\s+FINISHED", out, re.M)

    assert main(["runs", "--recent", "2"]) == 0
    assert "Recommended max_epochs for the next run: 4" in capsys.readouterr().out


def test_cli_runs_without_runs_is_not_an_error(
    cli_env: RunsStore, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CLAP_MLFLOW_EXPERIMENT", "nothing-here")
    assert main(["runs"]) == 0
    assert "No training runs in MLflow experiment 'nothing-here'" in capsys.readouterr().out


def test_cli_runs_unreadable_store_is_an_error(
    cli_env: RunsStore,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bad = tmp_path / "mlflow.db"
    bad.write_text("not a database")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{bad}")
    assert main(["runs"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("clap-pipeline runs: error: cannot read the MLflow store sqlite:///")
    assert "not a database" in err and "Traceback" not in err
    with pytest.raises(SystemExit):
        main(["runs", "--recent", "0"])


def test_feedback_section_shows_the_run_and_the_served_model(tmp_path: Path) -> None:
    store = build_runs_store(tmp_path)
    client = tracking.client(store.tracking_uri)
    runs = collect_runs(store.tracking_uri, store.experiment)
    kwargs = {"experiment": store.experiment, "tracking_uri": store.tracking_uri}
    plain = comparison_markdown(runs, recommend_max_epochs(runs), **kwargs)
    assert "Held-out search feedback" not in plain  # no run was scored on feedback
    client.log_metric(store.run_ids["r2"], run_names.feedback_metric("pairwise_accuracy"), 0.75)
    client.log_metric(
        store.run_ids["r2"], run_names.feedback_metric("pairwise_accuracy", served=True), 0.5
    )
    client.log_metric(store.run_ids["r4"], run_names.feedback_metric("pairwise_accuracy"), 0.625)
    runs = collect_runs(store.tracking_uri, store.experiment)
    markdown = comparison_markdown(runs, recommend_max_epochs(runs), **kwargs)
    section = markdown[markdown.index("Held-out search feedback") :]
    assert "| r2 | v2 @champion | 0.750 | 0.500 |" in section
    assert "| r4 | v3 @challenger | 0.625 | - |" in section
    text = comparison_text(runs, recommend_max_epochs(runs), **kwargs)
    assert re.search(r"r2\s+v2 @champion\s+0\.750\s+0\.500", text)


def test_runs_evaluated_under_the_old_metric_names_keep_their_test_recall(
    tmp_path: Path,
) -> None:
    store = build_runs_store(tmp_path)
    client = tracking.client(store.tracking_uri)
    for k, value in ((1, 0.25), (5, 0.5), (10, 0.75)):  # r4 was never evaluated (eval_*)
        client.log_metric(store.run_ids["r4"], f"test_text_to_audio_recall_at_{k}", value)
    by_name = {r.run_name: r for r in collect_runs(store.tracking_uri, store.experiment)}
    assert by_name["r4"].test_recall == {1: 0.25, 5: 0.5, 10: 0.75}
    assert by_name["r1"].test_recall == {1: 0.125, 5: 0.375, 10: 0.625}  # eval_* names
    assert by_name["r5"].test_recall is None
