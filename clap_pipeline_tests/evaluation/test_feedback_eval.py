"""Held-out feedback scores: pairwise accuracy and liked rank, and the `feedback_evaluation` asset."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
from dagster import materialize

from clap_pipeline import run_names, tracking
from clap_pipeline.config import DEFAULT_REGISTERED_MODEL, Settings
from clap_pipeline.defs.feedback import feedback_evaluation
from clap_pipeline.defs.resources import resources_for
from clap_pipeline.evaluation.feedback_eval import score_rankings, served_version, verdict
from clap_pipeline.feedback import Feedback, is_heldout, record_feedback
from clap_pipeline.model.tiny import save_tiny_model
from clap_pipeline_tests.training_fixtures import mlflow_store, write_training_dataset

T0 = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


def row(query: str, track: int, relevant: bool, version: str | None = "1") -> Feedback:
    return Feedback(query, track, relevant, version, T0)


def test_pairwise_accuracy_and_liked_rank_from_scores() -> None:
    pool = np.array([10, 20, 30, 40])
    heldout = [
        row("a", 10, True),
        row("a", 20, False),
        row("a", 30, False),
        row("b", 40, True),
        row("b", 99, False),  # not in the pool (no decoded audio): ignored
    ]
    table = {"a": [0.9, 0.1, 0.95, 0.0], "b": [0.5, 0.6, 0.7, 0.8]}

    def scores(queries: list[str]) -> np.ndarray:
        return np.array([table[q] for q in queries])

    s = score_rankings("new", "2", heldout, pool, scores)
    assert (s.queries, s.liked, s.disliked, s.pairs, s.pool) == (2, 2, 2, 2, 4)
    assert s.pairwise_accuracy == 0.5  # 10 above 20, not above 30
    assert s.liked_mean_rank == 1.5  # 10 is 2nd for "a", 40 is 1st for "b"
    flipped = score_rankings("old", "1", heldout, pool, lambda q: -scores(q))
    assert flipped.pairwise_accuracy == 0.5 and flipped.liked_mean_rank == 3.5  # 3rd, 4th
    assert "higher than version 1 (mean rank 1.50 vs 3.50)" in verdict(s, flipped)
    assert (
        served_version([row("a", 1, True, "3"), row("b", 1, True, "3"), row("c", 1, True, "4")])
        == "3"
    )
    assert served_version([row("a", 1, True, None)]) is None


def test_asset_compares_the_new_version_with_the_served_one(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    data_dir = tmp_path / "data"
    write_training_dataset(data_dir)
    store = mlflow_store(tmp_path / "mlruns")
    mlflow_client = tracking.client(store)
    run_id = mlflow_client.create_run(tracking.configure(store, "fb-eval")).info.run_id
    other = save_tiny_model(tmp_path / "tiny-2", seed=1)
    versions = []
    for epoch, folder in ((1, tiny_model_dir), (2, other)):
        versions.append(
            tracking.register_checkpoint(
                mlflow_client,
                DEFAULT_REGISTERED_MODEL,
                run_id=run_id,
                source=str(folder),
                tags={
                    run_names.VERSION_CHECKPOINT_TAG: str(folder),
                    run_names.VERSION_EPOCH_TAG: str(epoch),
                },
            )
        )
    settings = Settings.build(data_dir=data_dir, mlflow_tracking_uri=store)
    settings.reports_dir.mkdir(parents=True, exist_ok=True)
    manifest = {
        "mlflow_run_id": run_id,
        "best_checkpoint": str(other),
        "registered_model": {"name": DEFAULT_REGISTERED_MODEL, "version": versions[1]},
        "splits": {"training": [], "validation": [], "test": []},
        "epochs": [],
        "best_epoch": 2,
        "model_source": "tiny",
        "device": "cpu",
        "config": {},
    }
    settings.training_manifest_path.write_text(json.dumps(manifest))
    # Held-out verdicts given while version 1 served.
    track_ids = [2 + 37 * i for i in range(12)]
    written, judged = 0, set()
    for i in range(400):
        query, track = f"song {i}", track_ids[i % len(track_ids)]
        if is_heldout(query, track) and written < 12:
            record_feedback(
                settings.duckdb_path,
                query=query,
                track_id=track,
                relevant=written % 2 == 0,
                model_version=versions[0],
            )
            written += 1
            judged.add(track)

    result = materialize([feedback_evaluation], resources=resources_for(settings))
    assert result.success
    metadata = result.asset_materializations_for_node("feedback_evaluation")[0].metadata
    assert metadata["heldout_rows"].value == 12
    report = json.loads((settings.reports_dir / "feedback_evaluation.json").read_text())
    labels = [(s["label"], s["model_version"]) for s in report["scores"]]
    assert labels == [("new", versions[1]), ("served", versions[0])]
    assert all(s["liked"] == 6 and s["pool"] == len(judged) for s in report["scores"])
    assert (
        f"version {versions[1]}" in report["verdict"]
        and f"version {versions[0]}" in report["verdict"]
    )
    logged = mlflow_client.get_run(run_id).data.metrics
    assert logged["feedback_heldout_liked_mean_rank"] == report["scores"][0]["liked_mean_rank"]
    assert (
        logged["feedback_heldout_liked_mean_rank_served"] == report["scores"][1]["liked_mean_rank"]
    )
