"""Helpers for the training tests: MLflow stores, a one-thread torch, TrainInputs, waveform files.

The synthetic training set itself (audio that depends on its text) is
``clap_pipeline.demo.training_set``, shared with the benchmarks.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

import pytest

from clap_pipeline.demo.training_set import (  # noqa: F401 (re-exported for the tests)
    SyntheticData,
    write_training_dataset,
)
from clap_pipeline.training.config import TrainInputs


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny-model steps run 3-6x faster on one thread on a shared 2-core machine
    (measured: 6.6 s vs 23-41 s for the same 3-epoch fine-tune); restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


_EMPTY_STORE: Path | None = None


def training_inputs(
    data_dir: Path, model_dir: Path, store: str, out: Path, experiment: str = "training-tests"
) -> TrainInputs:
    """Where a test training reads (a written dataset) and writes (``out``)."""
    return TrainInputs(
        model_source=str(model_dir),
        prompts_path=data_dir / "prompts.parquet",
        waveforms_dir=data_dir / "waveforms",
        duckdb_path=data_dir / "clap.duckdb",
        checkpoints_dir=out / "checkpoints",
        manifest_path=out / "reports" / "training.json",
        tracking_uri=store,
        experiment=experiment,
    )


def mlflow_store(directory: Path) -> str:
    """A fresh MLflow SQLite store in ``directory``; returns its tracking URI.

    Creating the schema takes seconds (migrations), so it is done once per test
    process and the empty database file is copied for each store.
    """
    global _EMPTY_STORE
    if _EMPTY_STORE is None:
        from mlflow import MlflowClient

        folder = Path(tempfile.mkdtemp(prefix="mlflow-template-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        template = folder / "mlflow.db"
        MlflowClient(tracking_uri=f"sqlite:///{template}").search_experiments()
        _EMPTY_STORE = template
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_EMPTY_STORE, directory / "mlflow.db")
    return f"sqlite:///{directory / 'mlflow.db'}"
