"""Dagster resources, built from the documented env vars via ``Settings.from_env``.

Assets receive paths and services through these resources, never by reading
env vars themselves.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import duckdb
from dagster import ConfigurableResource

from clap_pipeline.config import (
    DEFAULT_EXPERIMENT,
    DEFAULT_MAX_TRACKS,
    DEFAULT_MODEL,
    DEFAULT_RETRAIN_MIN_FEEDBACK,
    DEFAULT_RETRAIN_MIN_NEW_TRACKS,
    Settings,
)
from clap_pipeline.storage import duckdb_connection


class ClapSettings(ConfigurableResource):
    """Locations of inputs and outputs, the model to fine-tune and the experiment's size."""

    data_dir: str = "data"
    metadata_dir: str | None = None
    audio_dir: str | None = None
    model: str = DEFAULT_MODEL
    max_tracks: int = DEFAULT_MAX_TRACKS
    retrain_min_new_tracks: int = DEFAULT_RETRAIN_MIN_NEW_TRACKS
    retrain_min_feedback: int = DEFAULT_RETRAIN_MIN_FEEDBACK
    retrain_run_config: str | None = None

    def settings(self) -> Settings:
        return Settings.build(
            data_dir=self.data_dir,
            metadata_dir=self.metadata_dir,
            audio_dir=self.audio_dir,
            model=self.model,
            max_tracks=self.max_tracks,
            retrain_min_new_tracks=self.retrain_min_new_tracks,
            retrain_min_feedback=self.retrain_min_feedback,
            retrain_run_config=self.retrain_run_config,
        )


class DuckDBDatabase(ConfigurableResource):
    """The project's DuckDB file. Writers keep connections short; readers open read-only."""

    path: str

    @contextmanager
    def connect(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        with duckdb_connection(self.path, read_only=read_only) as con:
            yield con


class MlflowTracking(ConfigurableResource):
    """MLflow tracking server/store and experiment (SQLite store under mlruns/ by default)."""

    tracking_uri: str
    experiment: str = DEFAULT_EXPERIMENT


def resources_from_env() -> dict[str, ConfigurableResource]:
    return resources_for(Settings.from_env())


def resources_for(s: Settings) -> dict[str, ConfigurableResource]:
    """The resources for one set of settings (tests build them for a temp data dir)."""
    return {
        "clap_settings": ClapSettings(
            data_dir=str(s.data_dir),
            metadata_dir=str(s.metadata_dir),
            audio_dir=str(s.audio_dir),
            model=s.model,
            max_tracks=s.max_tracks,
            retrain_min_new_tracks=s.retrain_min_new_tracks,
            retrain_min_feedback=s.retrain_min_feedback,
            retrain_run_config=str(s.retrain_run_config) if s.retrain_run_config else None,
        ),
        "duckdb": DuckDBDatabase(path=str(s.duckdb_path)),
        "mlflow": MlflowTracking(
            tracking_uri=s.mlflow_tracking_uri, experiment=s.mlflow_experiment
        ),
    }
