"""The automation chain on real data: new tracks -> ingest -> decode per folder -> retrain.

Each sensor is evaluated against a real Dagster instance, and the runs it requests are
executed for real (in process), so this is also the end-to-end test of every asset on the
FMA-format demo dataset with the tiny CLAP.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import duckdb
import pytest
from dagster import (
    DagsterEventType,
    DagsterInstance,
    RunRequest,
    SkipReason,
    build_run_status_sensor_context,
    build_sensor_context,
)

from clap_pipeline.config import Settings
from clap_pipeline.definitions import build_defs
from clap_pipeline.defs.automation import (
    DECODE_TOTAL_TAG,
    INGEST_TAG,
    decode_after_ingest,
    new_tracks_sensor,
    retrain_after_decode,
)
from clap_pipeline.defs.resources import resources_for
from clap_pipeline.demo import write_demo_dataset
from clap_pipeline.tracking import resolve_champion

# The tiny model starts from random weights: it needs larger and more steps than the
# reference recipe (which fine-tunes pre-trained weights). Same recipe as `make demo`.
TRAIN_CONFIG = {
    "ops": {
        "clap_model": {
            "config": {
                "batch_size": 8,
                "learning_rate": 2e-3,
                "max_epochs": 12,
                "patience": 4,
                "cpu_threads": 1,
            }
        }
    }
}


def _success_event(instance: DagsterInstance, run_id: str):
    records = instance.get_records_for_run(run_id, of_type=DagsterEventType.RUN_SUCCESS).records
    assert records, f"run {run_id} did not succeed"
    return records[0].event_log_entry.dagster_event


def _run_status_context(sensor_name: str, instance: DagsterInstance, result):
    return build_run_status_sensor_context(
        sensor_name=sensor_name,
        dagster_instance=instance,
        dagster_run=result.dagster_run,
        dagster_event=_success_event(instance, result.run_id),
    )


@pytest.mark.slow
def test_new_tracks_drive_ingest_decode_and_retrain(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    data = tmp_path / "data"
    write_demo_dataset(data, n_tracks=120, seed=0)
    settings = Settings.build(
        data_dir=data,
        model=str(tiny_model_dir),
        mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}",
    )
    resources = resources_for(settings)
    defs = build_defs(resources)
    instance = DagsterInstance.ephemeral()

    # 1. The sensor notices the inputs once, then stays quiet while they are unchanged.
    context = build_sensor_context(instance=instance, resources=resources, definitions=defs)
    request = new_tracks_sensor(context)
    assert isinstance(request, RunRequest) and request.run_key.startswith("ingest-")
    cursor = context.cursor
    again = new_tracks_sensor(
        build_sensor_context(
            instance=instance, resources=resources, cursor=cursor, definitions=defs
        )
    )
    assert isinstance(again, SkipReason)

    # 2. Ingest: tracks + prompts, which registers the audio folders as partitions.
    ingest = defs.resolve_job_def("ingest").execute_in_process(instance=instance, tags=request.tags)
    assert ingest.success
    folders = sorted(instance.get_dynamic_partitions("audio_folders"))
    on_disk = sorted(p.name for p in settings.audio_dir.iterdir() if p.is_dir())
    assert folders == on_disk and len(folders) >= 2

    # 3. One decode run per folder, all tagged with the ingest run.
    decode_requests = decode_after_ingest(
        _run_status_context("decode_after_ingest", instance, ingest)
    )
    assert sorted(r.partition_key for r in decode_requests) == folders
    assert {r.tags[INGEST_TAG] for r in decode_requests} == {ingest.run_id}
    assert {r.tags[DECODE_TOTAL_TAG] for r in decode_requests} == {str(len(folders))}

    decode_job = defs.resolve_job_def("decode_waveforms")
    retrain_requests = []
    for request in decode_requests:
        result = decode_job.execute_in_process(
            instance=instance, partition_key=request.partition_key, tags=request.tags
        )
        assert result.success
        retrain_requests.append(
            retrain_after_decode(_run_status_context("retrain_after_decode", instance, result))
        )
    # Retraining waits until the last folder is decoded, then is requested once.
    assert all(isinstance(r, SkipReason) for r in retrain_requests[:-1])
    final = retrain_requests[-1]
    assert isinstance(final, RunRequest) and final.run_key == f"retrain-{ingest.run_id}"

    # 4. Retrain: clap_model -> evaluation and track_embeddings.
    retrain = defs.resolve_job_def("retrain").execute_in_process(
        instance=instance, tags=final.tags, run_config=TRAIN_CONFIG
    )
    assert retrain.success
    manifest = json.loads(settings.training_manifest_path.read_text())
    assert Path(manifest["best_checkpoint"], "model.safetensors").exists()
    # Fine-tuning learned something measurable on the demo data: the best epoch's validation
    # text->audio R@5 beats both the untrained model and a random ranking.
    best = next(e for e in manifest["epochs"] if e["epoch"] == manifest["best_epoch"])
    report = json.loads((settings.reports_dir / "evaluation.json").read_text())
    validation = report["splits"]["validation"]
    untrained = validation["models"]["zero_shot"]["text_to_audio_recall_at_5"]["value"]
    random_r5 = validation["random"]["exact"]["text_to_audio_recall_at_5"]
    assert validation["n"] == len(manifest["splits"]["validation"]) >= 10
    assert best["val_text_to_audio_recall_at_5"] > max(untrained, random_r5), (best, untrained)
    champion = resolve_champion(settings.mlflow_tracking_uri)
    with duckdb.connect(str(settings.duckdb_path), read_only=True) as con:
        n_embeddings, versions = con.execute(
            "SELECT count(*), list(DISTINCT model_version) FROM track_embeddings"
        ).fetchone()
        n_waveforms = con.execute(
            f"SELECT count(*) FROM read_parquet('{settings.waveforms_dir}/*.parquet')"
        ).fetchone()[0]
        n_failures = con.execute("SELECT count(*) FROM decode_failures").fetchone()[0]
    assert n_embeddings == n_waveforms > 0
    assert n_failures >= 2  # the demo's defective clips are recorded, not fatal
    assert versions == [str(champion.version)]

    # 5. A new clip in a new folder: the sensor requests a new ingest.
    new_folder = settings.audio_dir / "150"
    new_folder.mkdir()
    first_clip = next(settings.audio_dir.glob("*/*.mp3"))
    shutil.copy(first_clip, new_folder / "150000.mp3")
    os.utime(settings.audio_dir / "150")
    fresh = new_tracks_sensor(
        build_sensor_context(
            instance=instance, resources=resources, cursor=cursor, definitions=defs
        )
    )
    assert isinstance(fresh, RunRequest) and fresh.run_key != request.run_key
