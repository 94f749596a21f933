"""The one Dagster resource: ``ClapSettings`` carries the whole ``Settings``.

Its fields are derived from the settings schema in ``config.py`` (each setting is
declared once there: name, type, default, env variable, help).

``definitions.py`` builds it from the documented env vars (``Settings.from_env``); tests
build it for a temp data dir with ``resources_for``. Assets never read env vars: they ask
``clap_settings.settings()`` for paths, the model, the MLflow store and experiment, and
``clap_settings.connect()`` for the project's DuckDB file.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
from dagster import ConfigurableResource
from pydantic import Field, create_model

from clap_pipeline.config import Settings, setting_specs
from clap_pipeline.defs.run_health import RunWorkerRecord
from clap_pipeline.storage import duckdb_connection


class _SettingsResource(RunWorkerRecord):
    """The methods of ``ClapSettings``; its fields come from the settings schema below.

    Set up in a step, it records the run's worker (``run_health``: killed runs are found).
    """

    @classmethod
    def from_settings(cls, s: Settings) -> ClapSettings:
        values = {name: getattr(s, name) for name, _, _ in setting_specs(Settings)}
        return cls(**{k: str(v) if isinstance(v, Path) else v for k, v in values.items()})

    def settings(self) -> Settings:
        return Settings.build(
            **{name: getattr(self, name) for name, _, _ in setting_specs(Settings)}
        )

    @contextmanager
    def connect(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """The project's DuckDB file: writers keep connections short, readers open read-only."""
        with duckdb_connection(self.settings().duckdb_path, read_only=read_only) as con:
            yield con


def _resource_field(default: Any, kind: type, help: str, env: str) -> tuple[Any, Any]:
    """A setting as resource config: paths as text, unset (None) allowed where it defaults."""
    value_type = str if kind is Path else kind
    default = str(default) if isinstance(default, Path) else default
    annotation = value_type | None if default is None else value_type
    return annotation, Field(default=default, description=f"{help} (env {env})")


# Every setting of ``config.Settings`` as Dagster resource config (shown in the UI).
ClapSettings = create_model(
    "ClapSettings",
    __base__=_SettingsResource,
    __module__=__name__,
    **{
        name: _resource_field(default, spec.kind, spec.help, spec.env)
        for name, default, spec in setting_specs(Settings)
    },
)


def resources_for(s: Settings) -> dict[str, ConfigurableResource]:
    """The resources for one set of settings (tests build them for a temp data dir)."""
    return {"clap_settings": ClapSettings.from_settings(s)}
