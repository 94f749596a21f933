"""Registered versions are standard MLflow pyfunc models: load_model and `mlflow models serve`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from clap_pipeline import run_names, tracking
from clap_pipeline.audio.decode import decode_window
from clap_pipeline.config import DEFAULT_REGISTERED_MODEL
from clap_pipeline.model.clap import audio_embeddings, load_clap
from clap_pipeline.model.features import LogMelFeatures
from clap_pipeline.search.text_encoder import encode_query
from clap_pipeline_tests.audio_fixtures import run_ffmpeg
from clap_pipeline_tests.serve_fixtures import free_port, stop_process
from clap_pipeline_tests.training_fixtures import mlflow_store

CHAMPION_URI = f"models:/{DEFAULT_REGISTERED_MODEL}@{tracking.CHAMPION}"
TEXTS = ["folk country music", "warm lo-fi guitar"]


@pytest.fixture(scope="module")
def champion(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> tuple[str, Path]:
    """A store whose champion was registered from a checkpoint that is gone afterwards."""
    root = tmp_path_factory.mktemp("pyfunc")
    store = mlflow_store(root)
    checkpoint = root / "checkpoint"
    shutil.copytree(tiny_model_dir, checkpoint)
    mlflow_client = tracking.client(store)
    run_id = mlflow_client.create_run(tracking.configure(store, "pyfunc-test")).info.run_id
    version = tracking.register_checkpoint(
        mlflow_client,
        DEFAULT_REGISTERED_MODEL,
        run_id=run_id,
        source=str(checkpoint),
        tags={run_names.VERSION_CHECKPOINT_TAG: str(checkpoint), run_names.VERSION_EPOCH_TAG: "3"},
    )
    mlflow_client.set_registered_model_alias(DEFAULT_REGISTERED_MODEL, tracking.CHAMPION, version)
    shutil.rmtree(checkpoint)  # loading must not rely on the training machine's folder
    return store, root


def test_champion_loads_with_the_standard_client_and_embeds_text_and_audio(
    champion: tuple[str, Path], tiny_model_dir: Path, ffmpeg: str
) -> None:
    import mlflow

    store, root = champion
    mlflow.set_tracking_uri(store)
    mlflow.set_registry_uri(store)
    model = mlflow.pyfunc.load_model(CHAMPION_URI)

    schema = model.metadata.get_input_schema()
    assert schema.input_names() == ["text", "audio_path"]
    assert [spec.shape for spec in model.metadata.get_output_schema().inputs] == [(-1, 32)]

    reference = load_clap(tiny_model_dir)
    emb = model.predict(pd.DataFrame({"text": TEXTS}))
    assert emb.shape == (2, 32) and emb.dtype == np.float32
    for row, text in zip(emb, TEXTS, strict=True):
        np.testing.assert_allclose(row, encode_query(reference, text), atol=1e-5)

    clip = root / "tone.mp3"
    run_ffmpeg(ffmpeg, "-f", "lavfi", "-i", "sine=frequency=330:duration=6", str(clip))
    mixed = model.predict(pd.DataFrame({"text": [None, TEXTS[0]], "audio_path": [str(clip), None]}))
    features = LogMelFeatures(reference.feature_extractor, seed=0)
    with torch.inference_mode():
        expected = audio_embeddings(
            reference.model.eval(), features(decode_window(clip).samples[None])
        )[0].numpy()
    np.testing.assert_allclose(mixed[0], expected, atol=1e-5)
    np.testing.assert_allclose(mixed[1], emb[0], atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(mixed, axis=1), 1.0, atol=1e-5)
    with pytest.raises(Exception, match="neither"):
        model.predict(pd.DataFrame({"text": ["   "]}))

    # The search code finds the save_pretrained folder inside the downloaded model.
    local = tracking.resolve_champion(
        store, DEFAULT_REGISTERED_MODEL, cache_dir=root / "cache"
    ).local_dir
    assert (local / "config.json").exists() and (local / "model.safetensors").exists()


def test_mlflow_models_serve_answers_on_loopback(
    champion: tuple[str, Path], tiny_model_dir: Path
) -> None:
    store, root = champion
    port = free_port()
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    # As in an activated venv: the scoring server starts `uvicorn` from PATH.
    path = f"{mlflow_cli.parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "PATH": path, "MLFLOW_TRACKING_URI": store, "MLFLOW_REGISTRY_URI": store}
    log_path = root / "serve.log"
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(
            [
                str(mlflow_cli),
                "models",
                "serve",
                "-m",
                CHAMPION_URI,
                "--env-manager",
                "local",
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-w",
                "1",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    body = json.dumps({"dataframe_split": {"columns": ["text"], "data": [[t] for t in TEXTS]}})
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, log_path.read_text()
            try:
                request = urllib.request.Request(
                    f"http://127.0.0.1:{port}/invocations",
                    data=body.encode(),
                    headers={"Content-Type": "application/json"},
                )
                with urllib.request.urlopen(request, timeout=30) as response:
                    predictions = json.load(response)["predictions"]
                break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline, f"no answer in 180 s:\n{log_path.read_text()}"
                time.sleep(0.5)
    finally:
        stop_process(proc)
    reference = load_clap(tiny_model_dir)
    assert np.array(predictions).shape == (2, 32)
    for row, text in zip(predictions, TEXTS, strict=True):
        np.testing.assert_allclose(row, encode_query(reference, text), atol=1e-5)
