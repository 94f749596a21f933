"""Entry point for `dagster dev` / workspace.yaml: ``defs``."""

from __future__ import annotations

from dagster import (
    ConfigurableResource,
    Definitions,
    load_asset_checks_from_modules,
    load_assets_from_modules,
)

from clap_pipeline.defs import audio, automation, evaluation, metadata, search, training
from clap_pipeline.defs.resources import resources_from_env

_asset_modules = [metadata, audio, training, evaluation, search]


def build_defs(resources: dict[str, ConfigurableResource] | None = None) -> Definitions:
    """All assets, checks, jobs and sensors, with resources from the env vars unless given."""
    return Definitions(
        assets=load_assets_from_modules(_asset_modules),
        asset_checks=load_asset_checks_from_modules(_asset_modules),
        jobs=automation.JOBS,
        sensors=automation.SENSORS,
        schedules=automation.SCHEDULES,
        resources=resources if resources is not None else resources_from_env(),
    )


defs = build_defs()
