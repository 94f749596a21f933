"""Shared fixtures. Domain fixtures live next to their tests (``*_fixtures.py`` helpers)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests never reach the Hugging Face hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The offline tiny CLAP, saved once per test session with ``save_pretrained``."""
    from clap_pipeline.model.tiny import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny-clap", seed=0)


@pytest.fixture(scope="session")
def ffmpeg() -> str:
    from clap_pipeline.audio.ffmpeg_bin import ffmpeg_exe

    return ffmpeg_exe()
