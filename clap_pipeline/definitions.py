"""Entry point for `dagster dev` / workspace.yaml: ``defs``."""

from __future__ import annotations

from dagster import Definitions, load_asset_checks_from_modules, load_assets_from_modules

from clap_pipeline.defs import audio, automation, evaluation, metadata, search, training
from clap_pipeline.defs.resources import resources_from_env

_asset_modules = [metadata, audio, training, evaluation, search]

defs = Definitions(
    assets=load_assets_from_modules(_asset_modules),
    asset_checks=load_asset_checks_from_modules(_asset_modules),
    jobs=getattr(automation, "JOBS", []),
    sensors=getattr(automation, "SENSORS", []),
    schedules=getattr(automation, "SCHEDULES", []),
    resources=resources_from_env(),
)
