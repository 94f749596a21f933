"""A light code location for the run-queue backfill test (see test_decode_backfill.py).

The project's `waveforms` asset, its checks and the `decode_waveforms` job, with the
project's resources, without the modules that import torch (each run worker and the
code server import the location), and with the in-process executor (one process per
run instead of one per step: the test is about runs, not steps).
"""

from dagster import Definitions, in_process_executor, load_asset_checks_from_modules

from clap_pipeline.config import Settings
from clap_pipeline.defs import audio
from clap_pipeline.defs.automation import decode_job
from clap_pipeline.defs.resources import resources_for

defs = Definitions(
    assets=[audio.waveforms],
    asset_checks=load_asset_checks_from_modules([audio]),
    jobs=[decode_job],
    resources=resources_for(Settings.from_env()),
    executor=in_process_executor,
)
