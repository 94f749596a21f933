"""A one-asset code location in pool `gpu` for the kill -9 tests (see test_run_health.py).

The asset writes its pid to ``$CLAP_TEST_MARKER`` and then sleeps
``$CLAP_TEST_SLEEP_S`` seconds, so a test can kill the run while it holds the slot. With
``$CLAP_TEST_LAUNCH`` set it first starts a sleeper in a session of its own, marked with
the run id the way the torchrun launcher marks torchrun (its pid in ``<marker>.launched``).
"""

import os
import subprocess
import sys
import time
from pathlib import Path

from dagster import AssetExecutionContext, Definitions, asset

from clap_pipeline.config import LAUNCHED_BY_RUN_VARIABLE, Settings
from clap_pipeline.defs.resources import ClapSettings, resources_for


@asset(pool="gpu")
def pooled(context: AssetExecutionContext, clap_settings: ClapSettings) -> None:
    marker = Path(os.environ["CLAP_TEST_MARKER"])
    if os.environ.get("CLAP_TEST_LAUNCH"):
        launched = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(600)"],
            env={**os.environ, LAUNCHED_BY_RUN_VARIABLE: context.run_id},
            start_new_session=True,
        )
        marker.with_suffix(".launched").write_text(str(launched.pid))
    marker.write_text(str(os.getpid()))
    time.sleep(float(os.environ.get("CLAP_TEST_SLEEP_S", "0")))


# The project's resource: set up in the step, it records the run worker (run_health).
defs = Definitions(assets=[pooled], resources=resources_for(Settings.from_env()))
