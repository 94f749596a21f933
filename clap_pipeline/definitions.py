"""Entry point for `dagster dev` / workspace.yaml: ``defs``."""

from __future__ import annotations

from dagster import Definitions, load_asset_checks_from_modules, load_assets_from_modules

from clap_pipeline.config import Settings
from clap_pipeline.defs import (
    audio,
    automation,
    comparison,
    evaluation,
    feedback,
    metadata,
    search,
    training,
)
from clap_pipeline.defs.resources import resources_for
from clap_pipeline.defs.run_health import dead_runs

_asset_modules = [metadata, audio, training, evaluation, feedback, search, comparison]


def build_defs(settings: Settings | None = None) -> Definitions:
    """All assets, checks, jobs, sensors and schedules, for ``settings`` (default: the env vars)."""
    settings = settings or Settings.from_env()
    return Definitions(
        assets=load_assets_from_modules(_asset_modules),
        asset_checks=load_asset_checks_from_modules(_asset_modules),
        jobs=automation.JOBS,
        sensors=[*automation.SENSORS, dead_runs],
        schedules=automation.schedules(settings),
        resources=resources_for(settings),
    )


defs = build_defs()
