"""The one Dagster resource: ``ClapSettings`` carries the whole ``Settings``.

``definitions.py`` builds it from the documented env vars (``Settings.from_env``); tests
build it for a temp data dir with ``resources_for``. Assets never read env vars: they ask
``clap_settings.settings()`` for paths, the model, the MLflow store and experiment, and
``clap_settings.connect()`` for the project's DuckDB file.
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
    DEFAULT_REGISTERED_MODEL,
    DEFAULT_RETRAIN_CRON,
    DEFAULT_RETRAIN_MIN_FEEDBACK,
    DEFAULT_RETRAIN_MIN_NEW_TRACKS,
    Settings,
)
from clap_pipeline.storage import duckdb_connection


class ClapSettings(ConfigurableResource):
    """Every setting of ``config.Settings``, as Dagster resource config (shown in the UI)."""

    data_dir: str = "data"
    metadata_dir: str | None = None
    audio_dir: str | None = None
    model: str = DEFAULT_MODEL
    max_tracks: int = DEFAULT_MAX_TRACKS
    mlflow_tracking_uri: str | None = None  # None: the SQLite store under mlruns/
    mlflow_experiment: str = DEFAULT_EXPERIMENT
    registered_model: str = DEFAULT_REGISTERED_MODEL
    system_metrics: bool = True
    retrain_min_new_tracks: int = DEFAULT_RETRAIN_MIN_NEW_TRACKS
    retrain_min_feedback: int = DEFAULT_RETRAIN_MIN_FEEDBACK
    retrain_cron: str = DEFAULT_RETRAIN_CRON
    retrain_run_config: str | None = None

    @classmethod
    def from_settings(cls, s: Settings) -> ClapSettings:
        return cls(
            data_dir=str(s.data_dir),
            metadata_dir=str(s.metadata_dir),
            audio_dir=str(s.audio_dir),
            model=s.model,
            max_tracks=s.max_tracks,
            mlflow_tracking_uri=s.mlflow_tracking_uri,
            mlflow_experiment=s.mlflow_experiment,
            registered_model=s.registered_model,
            system_metrics=s.system_metrics,
            retrain_min_new_tracks=s.retrain_min_new_tracks,
            retrain_min_feedback=s.retrain_min_feedback,
            retrain_cron=s.retrain_cron,
            retrain_run_config=str(s.retrain_run_config) if s.retrain_run_config else None,
        )

    def settings(self) -> Settings:
        return Settings.build(
            data_dir=self.data_dir,
            metadata_dir=self.metadata_dir,
            audio_dir=self.audio_dir,
            model=self.model,
            max_tracks=self.max_tracks,
            mlflow_tracking_uri=self.mlflow_tracking_uri,
            mlflow_experiment=self.mlflow_experiment,
            registered_model=self.registered_model,
            system_metrics=self.system_metrics,
            retrain_min_new_tracks=self.retrain_min_new_tracks,
            retrain_min_feedback=self.retrain_min_feedback,
            retrain_cron=self.retrain_cron,
            retrain_run_config=self.retrain_run_config,
        )

    @contextmanager
    def connect(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """The project's DuckDB file: writers keep connections short, readers open read-only."""
        with duckdb_connection(self.settings().duckdb_path, read_only=read_only) as con:
            yield con


def resources_for(s: Settings) -> dict[str, ConfigurableResource]:
    """The resources for one set of settings (tests build them for a temp data dir)."""
    return {"clap_settings": ClapSettings.from_settings(s)}
