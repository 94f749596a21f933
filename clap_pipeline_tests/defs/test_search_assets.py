"""`track_embeddings` end to end: waveforms + tracks + a champion in a real MLflow SQLite store."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.dataset as ds
import pytest
import torch
from dagster import DagsterInstance, RunConfig, materialize

from clap_pipeline import run_names, tracking
from clap_pipeline.cli import main
from clap_pipeline.config import DEFAULT_REGISTERED_MODEL
from clap_pipeline.dataset import audio_path
from clap_pipeline.defs.resources import ClapSettings
from clap_pipeline.defs.search import (
    TrackEmbeddingsConfig,
    track_embeddings,
    track_embeddings_complete_and_normalised,
)
from clap_pipeline.model.clap import audio_embeddings, load_clap
from clap_pipeline.model.tiny import save_tiny_model
from clap_pipeline.search.text_encoder import encode_query
from clap_pipeline.waveform_reader import WaveformRows
from clap_pipeline_tests.search_fixtures import write_tracks_table, write_waveforms

TRACK_IDS = [2, 5, 10, 1001, 1002]  # two waveforms partitions: 000 and 001


def register_champion(tracking_uri: str, model_dir: Path) -> str:
    """What `clap_model` does at the end of training: a run, a version, the alias."""
    client = tracking.client(tracking_uri)
    run = client.create_run(tracking.configure(tracking_uri, "search-test"))
    client.set_terminated(run.info.run_id)
    version = tracking.register_checkpoint(
        client,
        DEFAULT_REGISTERED_MODEL,
        run_id=run.info.run_id,
        source=str(model_dir),
        tags={run_names.VERSION_CHECKPOINT_TAG: str(model_dir), run_names.VERSION_EPOCH_TAG: "1"},
    )
    client.set_registered_model_alias(DEFAULT_REGISTERED_MODEL, tracking.CHAMPION, version)
    return version


def reference_embeddings(model_dir: Path, waveforms_dir: Path) -> np.ndarray:
    """Independent path: the numpy ClapFeatureExtractor, one clip at a time."""
    clap = load_clap(model_dir)
    table = ds.dataset(waveforms_dir, format="parquet").to_table()
    windows = WaveformRows(table.sort_by([("track_id", "ascending"), ("start_s", "ascending")]), "")
    rows = []
    with torch.no_grad():
        for wave in windows.clips(windows.first_windows()):
            feats = clap.feature_extractor(
                [np.asarray(wave, np.float32)], sampling_rate=48_000, return_tensors="pt"
            )["input_features"]
            rows.append(audio_embeddings(clap.model.eval(), feats)[0].numpy())
    return np.stack(rows)


def materialize_embeddings(resources: dict, instance: DagsterInstance):
    return materialize(
        [track_embeddings, track_embeddings_complete_and_normalised],
        resources=resources,
        instance=instance,
        run_config=RunConfig({"track_embeddings": TrackEmbeddingsConfig(batch_size=2)}),
    )


def table_rows(duckdb_path: Path) -> list[tuple]:
    with duckdb.connect(str(duckdb_path), read_only=True) as con:
        return con.execute(
            "SELECT track_id, embedding, title, audio_path, model_version, model_run_id "
            "FROM track_embeddings ORDER BY track_id"
        ).fetchall()


def test_track_embeddings_asset_with_champion_then_new_champion(
    tmp_path: Path,
    tiny_model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data_dir, audio_dir = tmp_path / "data", tmp_path / "data" / "fma_audio"
    duckdb_path = data_dir / "clap.duckdb"
    tracking_uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    write_tracks_table(duckdb_path, TRACK_IDS)
    write_waveforms(data_dir / "waveforms", audio_dir, TRACK_IDS)
    resources = {
        "clap_settings": ClapSettings(
            data_dir=str(data_dir),
            audio_dir=str(audio_dir),
            mlflow_tracking_uri=tracking_uri,
            mlflow_experiment="search-test",
        ),
    }
    instance = DagsterInstance.ephemeral()

    # No champion yet: the error names the asset to materialize.
    with pytest.raises(Exception) as err:
        materialize_embeddings(resources, instance)
    assert "`clap_model`" in f"{err.value} {err.value.__cause__}"
    monkeypatch.setenv("CLAP_DATA_DIR", str(data_dir))
    monkeypatch.setenv("FMA_AUDIO_DIR", str(audio_dir))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    assert main(["search", "jazz"]) == 2
    assert "materialize the `clap_model` asset" in capsys.readouterr().err

    version = register_champion(tracking_uri, tiny_model_dir)
    result = materialize_embeddings(resources, instance)
    assert result.success
    meta = result.asset_materializations_for_node("track_embeddings")[0].metadata
    assert (meta["count"].value, meta["dim"].value) == (len(TRACK_IDS), 32)
    assert meta["model_version"].value == version
    assert meta["search_windows_rule"].value == "mean"  # no evaluation yet: the default
    # One track per genre: no genre has the 3 tracks a genre search needs (the
    # end-to-end retrain test checks the numbers on a real collection).
    assert "genre_search_precision_at_10" not in meta
    (check,) = result.get_asset_check_evaluations()
    assert check.passed and check.metadata["rows"].value == len(TRACK_IDS)

    rows = table_rows(duckdb_path)
    expected = reference_embeddings(tiny_model_dir, data_dir / "waveforms")
    assert [r[0] for r in rows] == TRACK_IDS
    np.testing.assert_allclose(np.array([r[1] for r in rows]), expected, atol=2e-4)
    assert [r[2] for r in rows] == [f"Song {t}" for t in TRACK_IDS]
    assert [r[3] for r in rows] == [str(audio_path(audio_dir, t)) for t in TRACK_IDS]
    assert {r[4] for r in rows} == {version} and rows[0][5]

    # The CLI with the champion (no --model), DuckDB read-only.
    query = "folk country music"
    assert main(["search", query, "-k", "3", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    q = encode_query(load_clap(tiny_model_dir), query)
    best = np.argsort(-(expected @ q), kind="stable")[:3]
    assert [h["track_id"] for h in hits] == [TRACK_IDS[i] for i in best]
    # Ranked by the window store the asset filled for the champion's weights: each result
    # says where it matches (these 5-s clips have one window).
    assert [(h["moment"]["start_s"], h["moment"]["end_s"]) for h in hits] == [(0.0, 5.0)] * 3

    # A new champion: searching the old embeddings is refused until re-materialized.
    new_model = save_tiny_model(tmp_path / "tiny-clap-2", seed=1)
    new_version = register_champion(tracking_uri, new_model)
    assert main(["search", query]) == 2
    err_text = capsys.readouterr().err
    assert f"version {version}" in err_text and "`track_embeddings`" in err_text
    # ... while the registry version that built them still serves.
    assert (
        main(["search", query, "-k", "3", "--json", "--model", f"models:/clap-fma/{version}"]) == 0
    )
    assert json.loads(capsys.readouterr().out) == hits

    assert materialize_embeddings(resources, instance).success
    rows = table_rows(duckdb_path)
    assert [r[0] for r in rows] == TRACK_IDS and {r[4] for r in rows} == {new_version}
    np.testing.assert_allclose(
        np.array([r[1] for r in rows]),
        reference_embeddings(new_model, data_dir / "waveforms"),
        atol=2e-4,
    )
    assert main(["search", query, "-k", "10", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == len(TRACK_IDS)
