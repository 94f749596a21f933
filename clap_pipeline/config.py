"""The project's settings: one place that turns the documented env vars into paths.

Dagster resources (``clap_pipeline.defs.resources``) and the CLI both build a
``Settings`` from here, so defaults live only in this module.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MODEL = "laion/clap-htsat-unfused"
DEFAULT_MAX_TRACKS = 500
DEFAULT_EXPERIMENT = "clap-fma"
REPO_ROOT = Path(__file__).resolve().parent.parent


class ConfigError(ValueError):
    """A setting is missing or invalid; the message names the env var to change."""


def default_tracking_uri(root: Path = REPO_ROOT) -> str:
    """SQLite store under ``mlruns/`` (MLflow >= 3.13 refuses the plain folder store)."""
    return f"sqlite:///{(root / 'mlruns' / 'mlflow.db').as_posix()}"


def default_artifact_root(root: Path = REPO_ROOT) -> Path:
    return root / "mlruns" / "artifacts"


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    metadata_dir: Path
    audio_dir: Path
    model: str = DEFAULT_MODEL
    max_tracks: int = DEFAULT_MAX_TRACKS
    mlflow_tracking_uri: str = ""
    mlflow_experiment: str = DEFAULT_EXPERIMENT

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        data_dir = Path(get("CLAP_DATA_DIR") or "data")
        raw_max = get("CLAP_MAX_TRACKS") or str(DEFAULT_MAX_TRACKS)
        try:
            max_tracks = int(raw_max)
        except ValueError as exc:
            raise ConfigError(f"CLAP_MAX_TRACKS must be an integer, got {raw_max!r}") from exc
        return cls.build(
            data_dir=data_dir,
            metadata_dir=get("FMA_METADATA_DIR"),
            audio_dir=get("FMA_AUDIO_DIR"),
            model=get("CLAP_MODEL") or DEFAULT_MODEL,
            max_tracks=max_tracks,
            mlflow_tracking_uri=get("MLFLOW_TRACKING_URI"),
            mlflow_experiment=get("CLAP_MLFLOW_EXPERIMENT") or DEFAULT_EXPERIMENT,
        )

    @classmethod
    def build(
        cls,
        data_dir: str | Path = "data",
        metadata_dir: str | Path | None = None,
        audio_dir: str | Path | None = None,
        model: str = DEFAULT_MODEL,
        max_tracks: int = DEFAULT_MAX_TRACKS,
        mlflow_tracking_uri: str | None = None,
        mlflow_experiment: str = DEFAULT_EXPERIMENT,
    ) -> Settings:
        """Fill the derived defaults (metadata/audio under the data dir, SQLite MLflow store)."""
        if max_tracks < 1:
            raise ConfigError(f"CLAP_MAX_TRACKS must be >= 1, got {max_tracks}")
        data = Path(data_dir).expanduser().resolve()
        return cls(
            data_dir=data,
            metadata_dir=Path(metadata_dir).expanduser().resolve()
            if metadata_dir
            else data / "fma_metadata",
            audio_dir=Path(audio_dir).expanduser().resolve() if audio_dir else data / "fma_audio",
            model=model,
            max_tracks=max_tracks,
            mlflow_tracking_uri=mlflow_tracking_uri or default_tracking_uri(),
            mlflow_experiment=mlflow_experiment,
        )

    # Derived locations: every module asks here instead of joining paths itself.
    @property
    def tracks_csv(self) -> Path:
        return self.metadata_dir / "tracks.csv"

    @property
    def genres_csv(self) -> Path:
        return self.metadata_dir / "genres.csv"

    @property
    def duckdb_path(self) -> Path:
        return self.data_dir / "clap.duckdb"

    @property
    def prompts_path(self) -> Path:
        return self.data_dir / "prompts.parquet"

    @property
    def waveforms_dir(self) -> Path:
        return self.data_dir / "waveforms"

    @property
    def checkpoints_dir(self) -> Path:
        return self.data_dir / "checkpoints"

    @property
    def reports_dir(self) -> Path:
        return self.data_dir / "reports"

    @property
    def training_manifest_path(self) -> Path:
        """JSON written by the latest `clap_model` materialization (see training.py)."""
        return self.reports_dir / "training.json"

    @property
    def tiny_model_dir(self) -> Path:
        return self.data_dir / "models" / "tiny-clap"
