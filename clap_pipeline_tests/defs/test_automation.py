"""End to end: new tracks arrive -> the sensor requests `retrain` -> one run does everything.

Real Dagster instance, real DuckDB, ffmpeg, MLflow (SQLite) and the tiny CLAP on the
FMA-format demo dataset. The runs the sensor requests are executed in process with
the run config the sensor attached (CLAP_RETRAIN_RUN_CONFIG).
"""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest
import yaml
from dagster import DagsterInstance, SensorResult, build_sensor_context

from clap_pipeline import tracking
from clap_pipeline.config import REPO_ROOT, Settings
from clap_pipeline.definitions import build_defs
from clap_pipeline.defs.automation import new_tracks_sensor
from clap_pipeline.defs.resources import resources_for
from clap_pipeline.demo.collection import add_demo_tracks, write_demo_dataset
from clap_pipeline.evaluation.report import load_report
from clap_pipeline.metadata.retrain import NEW_TRACKS_TAG

# The tiny model's recipe, as `make demo` and `make dev` use it.
TINY_RUN_CONFIG = REPO_ROOT / "scripts" / "tiny_model_run_config.yaml"


def _write_run_config(path: Path, max_epochs: int) -> None:
    config = yaml.safe_load(TINY_RUN_CONFIG.read_text())
    config["ops"]["clap_model"]["config"].update(max_epochs=max_epochs, cpu_threads=1)
    path.write_text(yaml.safe_dump(config))


def _tick(instance: DagsterInstance, settings: Settings, cursor: str | None):
    context = build_sensor_context(
        instance=instance, resources=resources_for(settings), cursor=cursor
    )
    return new_tracks_sensor(context)


def _execute(defs, instance: DagsterInstance, result: SensorResult):
    """What the daemon does with a sensor result: add partitions, launch the run."""
    for request in result.dynamic_partitions_requests:
        instance.add_dynamic_partitions(request.partitions_def_name, request.partition_keys)
    (request,) = result.run_requests
    run = defs.resolve_job_def("retrain").execute_in_process(
        instance=instance, run_config=request.run_config, tags=request.tags
    )
    assert run.success
    return request, run


def _metadata(run, node: str) -> dict:
    materializations = run.asset_materializations_for_node(node)
    assert materializations, f"{node} was not materialized"
    return {k: v.value for k, v in materializations[0].metadata.items()}


@pytest.mark.slow
def test_new_tracks_retrain_without_a_click(tmp_path: Path, tiny_model_dir: Path) -> None:
    data = tmp_path / "data"
    # Large enough that the test split (about 32 clips) can show what fine-tuning does with a
    # random window per epoch (chance R@5 = 5/N falls as N grows, and the interval narrows).
    write_demo_dataset(data, n_tracks=320, seed=0, log=None)
    run_config = tmp_path / "retrain.yaml"
    max_epochs = yaml.safe_load(TINY_RUN_CONFIG.read_text())["ops"]["clap_model"]["config"][
        "max_epochs"
    ]
    _write_run_config(run_config, max_epochs=max_epochs)
    settings = Settings.build(
        data_dir=data,
        model=str(tiny_model_dir),
        mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}",
        retrain_run_config=run_config,
    )
    defs = build_defs(settings)
    instance = DagsterInstance.ephemeral()

    # 1. Nothing trained yet: one request for the whole chain, every folder a partition.
    first = _tick(instance, settings, None)
    assert isinstance(first, SensorResult) and len(first.run_requests) == 1
    _, run1 = _execute(defs, instance, first)
    assert instance.get_dynamic_partitions("audio_folders") == ["000", "001"]
    waveforms1 = _metadata(run1, "waveforms")
    # Every selected clip was decoded; the demo's defective ones are recorded failures.
    assert waveforms1["decoded"] == waveforms1["selected"] > 200
    assert waveforms1["rows"] == waveforms1["selected"] - waveforms1["failures"]
    assert waveforms1["failures"] >= 2

    manifest = json.loads(settings.training_manifest_path.read_text())
    best = next(e for e in manifest["epochs"] if e["epoch"] == manifest["best_epoch"])
    report = load_report(settings.reports_dir / "evaluation.json")
    validation = report.splits["validation"]
    untrained = validation.stat("zero_shot", "text_to_audio_recall_at_5").value
    random_r5 = validation.random.exact["text_to_audio_recall_at_5"]
    # Fine-tuning learned something measurable: better than untrained and than random...
    assert best["val_text_to_audio_recall_at_5"] > max(untrained, random_r5), (best, untrained)
    # ... also on the test split, which chose nothing: both directions, and genre search.
    test = report.splits["test"]
    assert test.n >= 20
    for direction in ("text_to_audio", "audio_to_text"):
        key = f"{direction}_recall_at_5"
        tuned = test.stat("fine_tuned", key)
        zero_shot = test.stat("zero_shot", key).value
        chance = test.random.exact[key]
        assert tuned.value >= 1.5 * chance and tuned.value > zero_shot, (key, tuned)
    # The headline direction's interval does not reach below chance even on ~32 clips.
    t2a = test.stat("fine_tuned", "text_to_audio_recall_at_5")
    assert t2a.ci_low >= test.random.exact["text_to_audio_recall_at_5"], t2a
    search = report.genre_search.splits["test"]
    tuned_p10 = search.models["fine_tuned"]["genre_music"].scores["precision_at_10"]
    prior_p10 = search.prior.scores["precision_at_10"].value
    assert tuned_p10.value > 1.5 * prior_p10, (tuned_p10, prior_p10)
    # Searching the whole collection for "<genre> music" finds that genre well above its share.
    embeddings = _metadata(run1, "track_embeddings")
    assert (
        embeddings["genre_search_precision_at_10"]
        > 1.5 * embeddings["genre_search_prior_precision_at_10"]
    ), embeddings
    with duckdb.connect(str(settings.duckdb_path), read_only=True) as con:
        n_embeddings = con.execute("SELECT count(*) FROM track_embeddings").fetchone()[0]
    assert n_embeddings == waveforms1["rows"]

    # 2. The training recorded what it trained on: the sensor sees nothing new, even
    #    with a fresh cursor (the daemon restarted).
    for cursor in (first.cursor, None):
        quiet = _tick(instance, settings, cursor)
        assert not getattr(quiet, "run_requests", None)

    # 3. Ten tracks arrive (rows in tracks.csv, clips in a new folder 002).
    added = add_demo_tracks(data, 10, log=None)
    assert added.folder.name == "002"
    _write_run_config(run_config, max_epochs=4)  # e.g. the recommended epoch count
    second = _tick(instance, settings, first.cursor)
    request, run2 = _execute(defs, instance, second)
    assert request.tags[NEW_TRACKS_TAG] == "10"
    assert instance.get_dynamic_partitions("audio_folders") == ["000", "001", "002"]
    waveforms2 = _metadata(run2, "waveforms")
    # Only the new files were decoded; the others came from the existing Parquet files.
    assert waveforms2["decoded"] == 10
    assert waveforms2["reused"] == waveforms1["rows"]
    assert waveforms2["rows"] == waveforms1["rows"] + 10

    # 4. A second MLflow run with its own best epoch, and both in the comparison.
    client = tracking.client(settings.mlflow_tracking_uri)
    experiment = client.get_experiment_by_name(settings.mlflow_experiment)
    runs = client.search_runs([experiment.experiment_id], order_by=["start_time ASC"])
    assert len(runs) == 2
    assert [r.data.params["config.max_epochs"] for r in runs] == [str(max_epochs), "4"]
    best_epochs = [int(r.data.metrics["best_epoch"]) for r in runs]
    assert 1 <= best_epochs[1] <= 4
    assert runs[1].data.params["n_train"] != runs[0].data.params["n_train"]
    comparison = _metadata(run2, "model_comparison")
    assert comparison["n_runs"] == 2
    for run in runs:
        assert f"| {run.info.run_name} |" in comparison["comparison"]
    new_manifest = json.loads(settings.training_manifest_path.read_text())
    assert new_manifest["mlflow_run_id"] == runs[1].info.run_id
    assert set(added.track_ids) <= set(new_manifest["selection"]["track_ids"])
